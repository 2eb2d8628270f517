import Metrics
import Prometheus
import Synchronization

/// The process's metrics, emitted as Prometheus text at `GET /metrics`.
enum ConvoMetrics {
    /// Bootstraps swift-metrics with a Prometheus registry, once per process (later calls return the same one).
    static func bootstrap() -> PrometheusCollectorRegistry {
        shared
    }

    private static let shared: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // swift-metrics labels use dots (`convo.lock.busy`, `http.route`); Prometheus names use underscores.
        factory.nameAndLabelSanitizer = { name, labels in
            (sanitize(name), labels.map { (sanitize($0.0), $0.1) })
        }
        MetricsSystem.bootstrap(factory)
        return registry
    }()

    static func sanitize(_ name: String) -> String {
        String(name.map { $0.isLetter || $0.isNumber || $0 == "_" ? $0 : "_" })
    }
}
