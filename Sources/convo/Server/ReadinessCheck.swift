import EventStore
import Logging
import Projections
import Responder

/// What `/readyz` reports: whether PostgreSQL and Redis answer and the schema is current.
struct ReadinessCheck: Sendable {
    struct Report: Codable, Sendable {
        var ready: Bool
        /// Per dependency (`postgres`, `migrations`, `redis`, `projection.NAME`): `ok`, or what is wrong.
        var checks: [String: String]
    }

    let migrator: Migrator
    let redis: RedisClient
    let store: PostgresEventStore
    let logger: Logger
    /// The projections whose health is measured (every process reports them, wherever their runners are):
    /// not ready when one failed, is being rebuilt, has no active runner in any process, or has kept an
    /// event waiting longer than `staleAfter`.
    var projections: [any Projection] = []
    var staleAfter: Duration = .seconds(10)
    /// How long one check may take before it counts as failed.
    var timeout: Duration = .seconds(3)

    func run() async -> Report {
        async let migrations = outcome { () -> String in
            let pending = try await migrator.pending()
            return pending.isEmpty ? "ok" : "\(pending.count) pending: run convo migrate"
        }
        async let redisState = outcome { () -> String in
            try await redis.ping()
            return "ok"
        }
        // Measured beside the other checks, so the answer takes one check's time at most.
        async let projectionChecks = outcome { () -> [ProjectionStatus] in
            projections.isEmpty ? [] : try await ProjectionStatus.read(projections, store: store, countingUpTo: ProjectionStatus.routineLagCountLimit, logger: logger)
        }
        var checks: [String: String] = [:]
        let (schema, cache) = await (migrations, redisState)
        switch schema {
        case .success(let state):
            checks["postgres"] = "ok"
            checks["migrations"] = state
        case .failure(let failure):
            checks["postgres"] = failure.reason
            checks["migrations"] = "unknown"
        }
        switch cache {
        case .success(let state): checks["redis"] = state
        case .failure(let failure): checks["redis"] = failure.reason
        }
        switch await projectionChecks {
        case .success(let statuses):
            for status in statuses { checks["projection.\(status.name)"] = status.problem(staleAfter: staleAfter) ?? "ok" }
        case .failure(let failure):
            for projection in projections { checks["projection.\(projection.name)"] = failure.reason }
        }
        return Report(ready: checks.values.allSatisfy { $0 == "ok" }, checks: checks)
    }

    /// What failed, in words that name no host, port, user or database.
    static func publicReason(_ error: any Error) -> String {
        switch error {
        case let error as ResponderError where error.code == .redisUnavailable: "Redis does not answer"
        case let error as ResponderError: "Redis answered with an error (\(error.code))"
        case let error as EventStoreError where error.code == .unavailable: "PostgreSQL does not answer"
        case let error as EventStoreError: "PostgreSQL answered with an error (\(error.code))"
        case let error as ProjectionError: "the projection could not be read (\(error.code))"
        default: "the check failed (see the server's log)"
        }
    }

    private struct Failure: Error {
        var reason: String
    }

    /// The check's result, or a failure once `timeout` passes. A check that ignores cancellation (a
    /// connection attempt) is left to finish in the background: the answer never waits for it.
    private func outcome<T: Sendable>(_ check: @escaping @Sendable () async throws -> T) async -> Result<T, Failure> {
        let timeout = self.timeout
        let first = FirstOutcome<T>()
        let checking = Task {
            do {
                first.offer(.success(try await check()))
            } catch {
                // Anyone may ask /readyz: it says what failed, never where (hosts and ports go to the log).
                logger.warning("a readiness check failed", metadata: ["convo.error": "\(GlobalOptions.message(of: error))"])
                first.offer(.failure(Failure(reason: "unavailable: \(Self.publicReason(error))")))
            }
        }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            first.offer(.failure(Failure(reason: "unavailable: no answer within \(timeout)")))
        }
        let result = await first.value()
        checking.cancel()
        timer.cancel()
        return result.mapError { $0 as? Failure ?? Failure(reason: "\($0)") }
    }
}

