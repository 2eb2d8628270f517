import EventStore
import Foundation
import Logging
import Metrics
import PostgresNIO
import ServiceLifecycle
import SharedTypes

/// Forgets the visitors of each tenant with a retention period (``TenantSettings/visitorRetentionDays``)
/// whose last activity is older: one pass every ``Configuration/interval``, run by one process at a time
/// across instances (a PostgreSQL advisory lock), each visitor forgotten as `DELETE /v1/visitors/{uid}`
/// would, with `system:retention` as who asked.
public struct RetentionService: Service {
    public struct Configuration: Sendable {
        /// How often a pass runs. Default: 1 hour.
        public var interval: Duration
        /// The most visitors one pass forgets per tenant (the next pass goes on). Default: 10,000.
        public var maxPerPass: Int
        /// How long a pass's session (and its lock) outlives a process that stopped without closing it
        /// (frozen, a paused VM) before PostgreSQL ends it and another process may run the pass
        /// (``PostgresConnection/asLease(timeout:logger:_:)``). `nil`: until the socket closes. Default: 20 s.
        public var sessionLease: Duration?

        public init(interval: Duration = .seconds(3600), maxPerPass: Int = 10_000, sessionLease: Duration? = .seconds(20)) {
            self.interval = interval
            self.maxPerPass = maxPerPass
            self.sessionLease = sessionLease
        }
    }

    /// A visitor a pass forgets (or, in a dry run, would forget).
    public struct Candidate: Sendable, Codable, Equatable {
        public var tenant: String
        public var visitorUid: String
        public var lastActivityAt: Date
    }

    /// What one pass did.
    public struct PassReport: Sendable, Codable {
        /// `false` when another process was running a pass: this one did nothing.
        public var ran: Bool
        public var dryRun: Bool
        public var candidates: [Candidate]
        public var forgotten: Int
    }

    /// The advisory lock that makes one pass run at a time: 'RETN'.
    static let lockKey: Int64 = 0x5245_544E

    let store: PostgresEventStore
    let configuration: Configuration
    let logger: Logger
    let forgottenCounter = Counter(label: "convo.retention.forgotten")
    let candidatesGauge = Gauge(label: "convo.retention.candidates")
    let passesCounter = Counter(label: "convo.retention.passes")

    public init(store: PostgresEventStore, configuration: Configuration = .init(), logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                _ = try await pass()
            } catch {
                if Task.isCancelled || Task.isShuttingDownGracefully { return }
                logger.warning("retention pass failed; the next one goes on", metadata: ["convo.error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: configuration.interval) }
        }
    }

    /// One pass over the tenants with a retention period, or only `tenant`'s.
    ///
    /// - Parameter dryRun: list who would be forgotten, forget nobody.
    /// - Parameter progress: called after each visitor forgotten, with how many so far and in all.
    /// - Throws: the store's errors.
    public func pass(tenant only: TenantID? = nil, dryRun: Bool = false, progress: @escaping @Sendable (Int, Int) -> Void = { _, _ in }) async throws -> PassReport {
        let store = self.store
        let logger = self.logger
        let lockKey = Self.lockKey
        // The lock is a session's: one connection holds it for the pass, and PostgreSQL lets it go if the
        // process dies, or once the lease ends when it stopped without dying.
        let lease = configuration.sessionLease
        return try await store.client.withOpenConnection { connection in
            try await connection.asLease(timeout: lease, role: "retention", logger: logger) {
                var locked = false
                for try await held in try await connection.query("SELECT pg_try_advisory_lock(\(lockKey))", logger: logger).decode(Bool.self) { locked = held }
                guard locked else { return PassReport(ran: false, dryRun: dryRun, candidates: [], forgotten: 0) }
                do {
                    let report = try await self.locked(only: only, dryRun: dryRun, progress: progress)
                    _ = try await connection.query("SELECT pg_advisory_unlock(\(lockKey))", logger: logger)
                    return report
                } catch {
                    _ = try? await connection.query("SELECT pg_advisory_unlock(\(lockKey))", logger: logger)
                    throw error
                }
            }
        }
    }

    private func locked(only: TenantID?, dryRun: Bool, progress: @Sendable (Int, Int) -> Void) async throws -> PassReport {
        var candidates: [Candidate] = []
        var periods: [String: Double] = [:]
        do {
            let tenants = try await store.client.queryOpen(
                """
                SELECT id, (settings ->> 'visitorRetentionDays')::float8 FROM tenants
                WHERE (settings ->> 'visitorRetentionDays')::float8 > 0 AND (\(only?.rawValue)::text IS NULL OR id = \(only?.rawValue))
                """, logger: logger)
            for try await (tenant, days) in tenants.decode((String, Double).self) { periods[tenant] = days }
            for (tenant, days) in periods.sorted(by: { $0.key < $1.key }) {
                for (visitor, at) in try await store.inactiveSubjects(tenant: tenant, quietFor: days * 86_400, limit: configuration.maxPerPass) {
                    candidates.append(Candidate(tenant: tenant, visitorUid: visitor, lastActivityAt: at))
                }
            }
        } catch {
            throw PostgresEventStore.mapError(error, operation: "find visitors past retention")
        }
        candidatesGauge.record(candidates.count)
        guard !dryRun else { return PassReport(ran: true, dryRun: true, candidates: candidates, forgotten: 0) }
        let privacy = VisitorPrivacy(store: store, logger: logger)
        var forgotten = 0
        for candidate in candidates {
            guard let tenant = TenantID(rawValue: candidate.tenant), let visitor = VisitorUID(rawValue: candidate.visitorUid) else { continue }
            let days = periods[candidate.tenant] ?? 0
            _ = try await privacy.forget(
                visitor, tenant: tenant, reason: "retention: no activity for \(Self.format(days)) days", requestedBy: "system:retention")
            forgotten += 1
            forgottenCounter.increment()
            progress(forgotten, candidates.count)
        }
        passesCounter.increment()
        if forgotten > 0 { logger.info("retention pass", metadata: ["convo.retention.forgotten": "\(forgotten)"]) }
        return PassReport(ran: true, dryRun: false, candidates: candidates, forgotten: forgotten)
    }

    static func format(_ days: Double) -> String {
        days == days.rounded() ? String(Int(days)) : String(format: "%.6g", days)
    }
}
