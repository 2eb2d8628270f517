import EventStore
import Responder

/// What `/readyz` reports: whether PostgreSQL and Redis answer and the schema is current.
struct ReadinessCheck: Sendable {
    struct Report: Codable, Sendable {
        var ready: Bool
        /// Per dependency (`postgres`, `migrations`, `redis`): `ok`, or what is wrong.
        var checks: [String: String]
    }

    let migrator: Migrator
    let redis: RedisClient
    /// How long one check may take before it counts as failed.
    var timeout: Duration = .seconds(2)

    func run() async -> Report {
        async let migrations = outcome { () -> String in
            let pending = try await migrator.pending()
            return pending.isEmpty ? "ok" : "\(pending.count) pending: run convo migrate"
        }
        async let redisState = outcome { () -> String in
            try await redis.ping()
            return "ok"
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
        return Report(ready: checks.values.allSatisfy { $0 == "ok" }, checks: checks)
    }

    private struct Failure: Error {
        var reason: String
    }

    private func outcome(_ check: @escaping @Sendable () async throws -> String) async -> Result<String, Failure> {
        let timeout = self.timeout
        return await withTaskGroup(of: Result<String, Failure>.self) { group in
            group.addTask {
                do { return .success(try await check()) } catch { return .failure(Failure(reason: "unavailable: \(GlobalOptions.message(of: error))")) }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return .failure(Failure(reason: "unavailable: no answer within \(timeout)"))
            }
            let first = await group.next()!
            group.cancelAll()
            return first
        }
    }
}
