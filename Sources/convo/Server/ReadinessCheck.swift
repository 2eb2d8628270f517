import Synchronization
import EventStore
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
    /// This process's projection runners: ready when running or standing by; not while rebuilding or failed.
    var runners: [ProjectionRunner] = []
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
        for runner in runners {
            switch runner.state {
            case .running, .standby, .superseded: checks["projection.\(runner.projection.name)"] = "ok"
            case let state: checks["projection.\(runner.projection.name)"] = "\(state)"
            }
        }
        return Report(ready: checks.values.allSatisfy { $0 == "ok" }, checks: checks)
    }

    private struct Failure: Error {
        var reason: String
    }

    /// The check's result, or a failure once `timeout` passes. A check that ignores cancellation (a
    /// connection attempt) is left to finish in the background: the answer never waits for it.
    private func outcome(_ check: @escaping @Sendable () async throws -> String) async -> Result<String, Failure> {
        let timeout = self.timeout
        let first = FirstResult<Result<String, Failure>>()
        let checking = Task {
            do { first.offer(.success(try await check())) } catch { first.offer(.failure(Failure(reason: "unavailable: \(GlobalOptions.message(of: error))"))) }
        }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            first.offer(.failure(Failure(reason: "unavailable: no answer within \(timeout)")))
        }
        let result = await first.value()
        checking.cancel()
        timer.cancel()
        return result
    }
}

/// The first of several values offered concurrently; later offers are ignored.
final class FirstResult<Value: Sendable>: Sendable {
    private enum State {
        case empty
        case waiting(CheckedContinuation<Value, Never>)
        case done(Value)
    }

    private let state = Mutex(State.empty)

    func offer(_ value: Value) {
        let waiter = state.withLock { state -> CheckedContinuation<Value, Never>? in
            switch state {
            case .empty:
                state = .done(value)
                return nil
            case .waiting(let continuation):
                state = .done(value)
                return continuation
            case .done:
                return nil
            }
        }
        waiter?.resume(returning: value)
    }

    func value() async -> Value {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> Value? in
                if case .done(let value) = state { return value }
                state = .waiting(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
