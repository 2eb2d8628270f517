import EventStore
import Hummingbird
import Logging
import PostgresNIO
import Responder
import ServiceLifecycle

/// Everything the HTTP routes use, built once per process.
struct ServerContext: Sendable {
    let client: PostgresClient
    let store: PostgresEventStore
    let redis: RedisClient
    let migrator: Migrator
}

/// The routes of `convo serve`.
func buildRouter(_ context: ServerContext) -> Router<BasicRequestContext> {
    let router = Router()
    router.add(middleware: LogRequestsMiddleware(.debug))
    router.get("healthz") { _, _ in
        HealthResponse(status: "ok")
    }
    router.get("readyz") { _, _ in
        let report = await ReadinessCheck(migrator: context.migrator, redis: context.redis).run()
        let failed = report.checks.filter { $0.value != "ok" }.sorted { $0.key < $1.key }
        let body = ReadinessResponse(
            status: report.ready ? "ready" : "unavailable", checks: report.checks,
            error: report.ready
                ? nil
                : .init(code: "not_ready", message: failed.map { "\($0.key): \($0.value)" }.joined(separator: "; ")))
        return EditedResponse(status: report.ready ? .ok : .serviceUnavailable, response: body)
    }
    return router
}

/// The `convo serve` application: the HTTP server with the PostgreSQL client and the event store as services
/// of one ServiceGroup (started in that order, shut down in reverse).
func buildApplication(_ context: ServerContext, host: String, port: Int, logger: Logger) -> some ApplicationProtocol {
    Application(
        router: buildRouter(context),
        configuration: .init(address: .hostname(host, port: port), serverName: "convo"),
        services: [context.client, context.store],
        logger: logger
    )
}

struct HealthResponse: ResponseCodable {
    var status: String
}

struct ReadinessResponse: ResponseCodable {
    var status: String
    var checks: [String: String]
    var error: ErrorBody?
}

/// The body of every error convo returns: `{"error": {"code": "…", "message": "…"}}`.
struct ErrorBody: Codable, Sendable {
    var code: String
    var message: String
}
