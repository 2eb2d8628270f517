import EventStore
import Foundation
import Logging
import PostgresNIO

/// Where each projection stands, across every process: read from the catalogue and the advisory locks.
public struct ProjectionStatus: Sendable, Codable {
    public struct Rebuild: Sendable, Codable {
        public var version: Int
        public var reason: String
        public var startedAt: Date
        public var finishedAt: Date?
        /// `running`, `swapped`, `failed` or `interrupted`.
        public var outcome: String
        public var events: Int64
        public var error: String?
    }

    public var name: String
    /// The version this binary folds with.
    public var version: Int
    /// The version the stored rows were folded with; `nil` before the first build.
    public var storedVersion: Int?
    public var checkpoint: Int64
    public var head: Int64
    /// Events after the checkpoint that readers can already see, counted up to ``lagCountedUpTo``.
    public var lag: Int64
    /// Where the count of ``lag`` (and of ``heldBack``'s events) stopped: a `lag` equal to it means at
    /// least that many. ``lagCountLimit`` for `convo projections status`, ``routineLagCountLimit`` for what is
    /// read often (`/readyz`, `/metrics`, `GET /v1/projections`).
    public var lagCountedUpTo: Int64
    /// How long the oldest event after the checkpoint has waited to be applied, in seconds: 0 when there
    /// is none. Measured from the event's commit time, so a runner that stopped shows here while events
    /// arrive, whatever it believes about itself; committed events readers may not take yet count too.
    public var waitingSeconds: Double
    /// Committed events after the checkpoint that no reader may take yet because a transaction is still
    /// open somewhere in the PostgreSQL server (any database), and which one, once the oldest of them has
    /// waited a second: every projection, the responder and the webhooks wait for it. For the service's
    /// operators; `nil` on `GET /v1/projections`, where it is not the tenants' to see.
    public var heldBack: PostgresEventStore.HeldBack?
    /// Sessions holding the projection's runner lock right now (`pg_locks`), in any process: 1 when one
    /// runner is active, 0 when none is.
    public var activeRunners: Int
    /// Where the active runner is: the `PID@HOST` of each session holding the runner lock, read from its
    /// `application_name` (`convo projection NAME PID@HOST`, set while the runner's lease lasts), or
    /// `unnamed` for a session without one (a runner given no lease). For the service's operators (`convo
    /// projections status`); `nil` where it is not theirs to see (`GET /v1/projections`, read by tenants'
    /// keys, leaves the service's hosts out).
    public var runningIn: [String]?
    /// `running`, `stopped` (no runner in any process), `rebuilding`, `stale` (built by another version),
    /// `failed`, or `not_built`.
    public var state: String
    /// Runners standing by to take over.
    public var standby: Int
    public var failedPosition: Int64?
    public var error: String?
    public var lastRebuild: Rebuild?

    /// The most events counted for ``lag`` by default (an operator's status): a projection far behind is
    /// reported as at least this far.
    public static let lagCountLimit: Int64 = 1_000_000

    /// The most events counted for ``lag`` where the status is read often and by anyone: readiness probes,
    /// metrics scrapes, tenants' `GET /v1/projections`. A count walks the rows one by one (a million took
    /// PostgreSQL about 150 ms here in a table of just the two columns it reads, 10,000 took 2 ms), once per
    /// distinct checkpoint and once more for the held-back events, and the reads come most often when a
    /// projection is far behind and PostgreSQL is busy; whether a projection is stale is told by how long
    /// its oldest event has waited, not by the count.
    public static let routineLagCountLimit: Int64 = 10_000

    /// ``lag`` in words: `N`, or `at least N` when the count stopped there.
    public var lagText: String { lag >= lagCountedUpTo ? "at least \(lag)" : "\(lag)" }

    /// What is wrong with the projection, measured, or `nil` when it is keeping up: failed, being rebuilt,
    /// never built, no runner active in any process, or events waiting longer than `staleAfter`.
    public func problem(staleAfter: Duration) -> String? {
        switch state {
        case "failed": return "failed at position \(failedPosition ?? 0): \(error ?? "")"
        case "rebuilding": return "rebuilding"
        case "not_built": return "not built"
        default: break
        }
        if activeRunners == 0 && state != "stale" { return "no active runner in any process; \(lagText) events behind" }
        if waitingSeconds > staleAfter.inSeconds {
            if let heldBack, heldBack.waitingSeconds > staleAfter.inSeconds {
                // Which session it is stays out of this text (readiness is not authenticated): the status says.
                return "stale: \(heldBack.summary): a transaction left open in PostgreSQL holds every reader back (`convo projections status` names it)"
            }
            return "stale: \(lagText) events behind, the oldest waiting \(Int(waitingSeconds)) s"
        }
        return nil
    }

    /// How far behind a checkpoint is: the readable events after it (counted up to a limit), how long the
    /// oldest committed one has waited, and, once that is a second, what holds it back.
    struct Lag {
        var events: Int64
        var waitingSeconds: Double
        var heldBack: PostgresEventStore.HeldBack?

        /// Each distinct checkpoint measured once: runners held back by one open transaction all stop at the
        /// same position, and a status read (every `/readyz`) would otherwise count the same backlog, up to
        /// a million events, once per projection, while PostgreSQL is already in trouble.
        static func measure(after checkpoints: [Int64], countingUpTo limit: Int64, store: PostgresEventStore) async throws -> [Int64: Lag] {
            var measured: [Int64: Lag] = [:]
            for checkpoint in checkpoints where measured[checkpoint] == nil {
                let events = try await store.countEvents(after: checkpoint, limit: limit)
                let waiting = try await store.waitingSeconds(after: checkpoint)
                let heldBack = waiting >= 1 ? try await store.heldBack(after: checkpoint, countingUpTo: limit) : nil
                measured[checkpoint] = Lag(events: events, waitingSeconds: waiting, heldBack: heldBack)
            }
            return measured
        }
    }

    /// The status of `projections`, their lag counted up to `limit` events.
    ///
    /// - Throws: ``ProjectionError`` when PostgreSQL cannot be read.
    public static func read(
        _ projections: [any Projection], store: PostgresEventStore, countingUpTo limit: Int64 = lagCountLimit, logger: Logger
    ) async throws -> [ProjectionStatus] {
        do {
            let head = try await store.headPosition(.allTenants)
            var statuses = try await store.client.withOpenConnection { connection in
                var statuses: [ProjectionStatus] = []
                for projection in projections { statuses.append(try await read(projection, head: head, countingUpTo: limit, on: connection, logger: logger)) }
                return statuses
            }
            let built = statuses.indices.filter { statuses[$0].storedVersion != nil }
            let measures = try await Lag.measure(after: built.map { statuses[$0].checkpoint }, countingUpTo: limit, store: store)
            for index in built {
                guard let measure = measures[statuses[index].checkpoint] else { continue }
                statuses[index].lag = measure.events
                statuses[index].waitingSeconds = measure.waitingSeconds
                statuses[index].heldBack = measure.heldBack
            }
            return statuses
        } catch let error as ProjectionError {
            throw error
        } catch {
            throw ProjectionError(code: .storageFailure, message: "\(PostgresEventStore.mapError(error, operation: "read the projections' status"))", cause: error)
        }
    }

    private static func read(
        _ projection: any Projection, head: Int64, countingUpTo limit: Int64, on connection: PostgresConnection, logger: Logger
    ) async throws -> ProjectionStatus {
        let name = projection.name
        let entry = try await ProjectionCatalogue.entry(name, on: connection, logger: logger)
        let holders = try await ProjectionCatalogue.holders(name, on: connection, logger: logger)
        let runnerSessions = holders[.runner] ?? []
        let runners = runnerSessions.count
        let running = runners > 0
        let rebuilding = !(holders[.rebuild] ?? []).isEmpty
        let standby = holders[.standby]?.count ?? 0
        var lastRebuild: Rebuild?
        let rows = try await connection.query(
            """
            SELECT version, reason, started_at, finished_at, outcome, events, error FROM projection_rebuilds
            WHERE name = \(name) ORDER BY id DESC LIMIT 1
            """, logger: logger)
        for try await (version, reason, started, finished, outcome, events, error) in rows.decode((Int, String, Date, Date?, String, Int64, String?).self) {
            // A rebuild recorded as running that holds no lock died without saying so.
            let outcome = outcome == "running" && !rebuilding ? "interrupted" : outcome
            lastRebuild = Rebuild(version: version, reason: reason, startedAt: started, finishedAt: finished, outcome: outcome, events: events, error: error)
        }
        let state: String
        if rebuilding {
            state = "rebuilding"
        } else if entry == nil {
            state = "not_built"
        } else if entry?.failedPosition != nil {
            state = "failed"
        } else if entry?.version != projection.version {
            state = "stale"
        } else {
            state = running ? "running" : "stopped"
        }
        return ProjectionStatus(
            name: name, version: projection.version, storedVersion: entry?.version, checkpoint: entry?.checkpoint ?? 0, head: head, lag: 0, lagCountedUpTo: limit, waitingSeconds: 0,
            activeRunners: runners, runningIn: runnerSessions.map { ProcessInstance.instance(inSessionName: $0) ?? "unnamed" }, state: state,
            standby: standby, failedPosition: entry?.failedPosition,
            error: entry?.failedPosition != nil ? "\(entry?.failedEvent ?? "?"): \(entry?.error ?? "")" : nil, lastRebuild: lastRebuild)
    }
}
