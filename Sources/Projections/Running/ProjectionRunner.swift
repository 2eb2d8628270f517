import EventStore
import Foundation
import Logging
import Metrics
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// Keeps one projection's table up to date: a ServiceLifecycle service of `convo serve`.
///
/// Across every process exactly one runner per projection is active, the one holding the projection's
/// runner advisory lock; the others stand by (holding a shared "standby" lock, so `status` can count
/// them) and take over when the active one's session ends. The active runner follows the events from the
/// checkpoint and, per batch, writes the changed rows **and** the new checkpoint in one transaction, after
/// checking under the catalogue row's lock that the checkpoint is still the one it started from: a crash
/// between batches never applies an event twice or skips one, and a rebuild that swapped new tables in is
/// noticed and followed.
///
/// A projection whose stored version is not the code's (or that was never built) is rebuilt first. An
/// event the fold cannot apply stops the projection at that event, recorded in `projections` for `convo
/// projections status` and `/readyz`; nothing is skipped.
public final class ProjectionRunner: Service, Sendable {
    public struct Configuration: Sendable {
        /// How often a standby runner tries to take over. Default: 2 seconds.
        public var standbyPoll: Duration
        /// How long to wait after a database error before starting again. Default: 1 second.
        public var retryDelay: Duration
        /// How often a failed projection looks whether a rebuild has repaired it. Default: 5 seconds.
        public var failureRecheck: Duration
        /// How long the runner's session (and its lock) outlives a process that stopped without closing it
        /// (frozen, a paused VM) before PostgreSQL ends it and a standby takes over; see
        /// ``PostgresConnection/asLease(timeout:logger:_:)``. The start-up rebuild's session is held the
        /// same way. `nil`: until the socket closes. Default: 20 seconds.
        public var sessionLease: Duration?

        public init(
            standbyPoll: Duration = .seconds(2), retryDelay: Duration = .seconds(1), failureRecheck: Duration = .seconds(5),
            sessionLease: Duration? = .seconds(20)
        ) {
            self.standbyPoll = standbyPoll
            self.retryDelay = retryDelay
            self.failureRecheck = failureRecheck
            self.sessionLease = sessionLease
        }
    }

    /// What this process's runner is doing.
    public enum State: Sendable, Equatable, CustomStringConvertible {
        case starting
        /// Another process's runner is active; this one takes over when it goes.
        case standby
        case rebuilding
        case running
        /// Stopped at an event the fold cannot apply.
        case failed(position: Int64, error: String)
        /// The stored rows were built by a newer version (a newer convo runs beside this one): this runner
        /// leaves them to the newer one's runner and does not write.
        case superseded(storedVersion: Int)
        /// Lost its session (PostgreSQL restarted or unreachable); starting again.
        case interrupted(error: String)

        public var description: String {
            switch self {
            case .starting: "starting"
            case .standby: "standby"
            case .rebuilding: "rebuilding"
            case .running: "running"
            case .failed(let position, let error): "failed at position \(position): \(error)"
            case .superseded(let version): "superseded by version \(version)"
            case .interrupted(let error): "interrupted: \(error)"
            }
        }
    }

    public let projection: any Projection
    let store: PostgresEventStore
    let configuration: Configuration
    let logger: Logger
    private let currentState = Mutex(State.starting)
    private let checkpointValue = Atomic<Int64>(0)
    private let applied: Counter

    public init(projection: any Projection, store: PostgresEventStore, configuration: Configuration = .init(), logger: Logger) {
        self.projection = projection
        self.store = store
        self.configuration = configuration
        self.logger = logger
        self.applied = Counter(label: "convo.projection.events", dimensions: [("projection", projection.name)])
    }

    public var state: State { currentState.withLock { $0 } }
    /// The position this process's runner has stored up to (0 until it runs).
    public var checkpoint: Int64 { checkpointValue.load(ordering: .relaxed) }

    private func set(_ state: State) {
        let changed = currentState.withLock { current in
            defer { current = state }
            return current != state
        }
        if changed { logger.info("projection runner state", metadata: ["convo.projection": "\(projection.name)", "convo.state": "\(state)"]) }
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    // The runner keeps one session for as long as it holds the runner lock. When that session
                    // ends (PostgreSQL restarted, the connection cut), whileOpen gives up on it at once instead of
                    // waiting on a query that can never complete; the next round takes a new session, takes the
                    // lock again (or stands by) and resumes from the stored checkpoint.
                    try await self.store.client.withOpenConnection { connection in try await self.runOnce(on: connection) }
                } catch {
                    if Task.isCancelled { return }
                    self.set(.interrupted(error: "\(error)"))
                    self.logger.warning(
                        "projection runner interrupted; starting again",
                        metadata: ["convo.projection": "\(self.projection.name)", "convo.error": "\(String(reflecting: error))"])
                    try? await Task.sleep(for: self.configuration.retryDelay)
                }
            }
        }
    }

    /// Stands by until this session holds the runner lock, then keeps the projection; the lock goes with the
    /// session back to the pool released. The session is a lease: a frozen process loses it, and the lock.
    private func runOnce(on connection: PostgresConnection) async throws {
        let name = projection.name
        try await connection.asLease(timeout: configuration.sessionLease, role: "projection \(name)", logger: logger) {
            try await acquireRunnerLock(on: connection)
            try await ProjectionCatalogue.releasing([(.runner, name)], on: connection, logger: logger) {
                if let entry = try await ProjectionCatalogue.entry(name, on: connection, logger: logger), entry.version > projection.version {
                    // A newer convo built these rows: leave them to its runner, never rebuild them back to an older fold.
                    set(.superseded(storedVersion: entry.version))
                    return
                }
                try await ensureCurrent(on: connection)
                try await follow(on: connection)
            }
        }
        if case .superseded = state { try await Task.sleep(for: configuration.standbyPoll) }
    }

    /// Returns once this session holds the runner lock; meanwhile stands by, counted through a shared lock.
    private func acquireRunnerLock(on connection: PostgresConnection) async throws {
        let name = projection.name
        if try await ProjectionCatalogue.tryLock(.runner, name, on: connection, logger: logger) { return }
        let counted = try await ProjectionCatalogue.tryLock(.standby, name, shared: true, on: connection, logger: logger)
        try await ProjectionCatalogue.releasing(counted ? [(.standby, name)] : [], shared: true, on: connection, logger: logger) {
            set(.standby)
            repeat {
                try await Task.sleep(for: configuration.standbyPoll)
            } while !(try await ProjectionCatalogue.tryLock(.runner, name, on: connection, logger: logger))
        }
    }

    /// Rebuilds the projection when its table was never built or was built by another version.
    private func ensureCurrent(on connection: PostgresConnection) async throws {
        let entry = try await ProjectionCatalogue.entry(projection.name, on: connection, logger: logger)
        let exists = try await ProjectionCatalogue.tableExists(projection.name, on: connection, logger: logger)
        if let entry, entry.version == projection.version, exists { return }
        set(.rebuilding)
        let reason = entry.map { "version \($0.version) → \(projection.version)" } ?? "first start"
        let rebuilder = ProjectionRebuilder(store: store, configuration: .init(waitForOtherRebuild: true, installUpToFailure: true, sessionLease: configuration.sessionLease), logger: logger)
        _ = try await rebuilder.rebuild([projection], reason: reason)
    }

    /// Applies events from the checkpoint until cancelled, the checkpoint moves under it, or a fold fails.
    private func follow(on connection: PostgresConnection) async throws {
        let name = projection.name
        let writer = try projection.makeWriter()
        guard let entry = try await ProjectionCatalogue.entry(name, on: connection, logger: logger) else { return }
        guard entry.version == projection.version else { return }
        if let position = entry.failedPosition {
            set(.failed(position: position, error: "\(entry.failedEvent ?? "?"): \(entry.error ?? "")"))
            try await waitForRepair(from: entry, on: connection)
            return
        }
        var checkpoint = entry.checkpoint
        checkpointValue.store(checkpoint, ordering: .relaxed)
        set(.running)
        // Only the personal members the fold reads are decrypted.
        var events = store.subscribe(.allTenants, after: checkpoint, opening: projection.personalDataRead).makeAsyncIterator()
        while let batch = try await events.nextBatch() {
            let (count, failure) = try await writer.apply(ProjectedEvent.decode(batch), loadingOn: connection, logger: logger)
            if count > 0 {
                let next = batch[count - 1].globalPosition
                let stored = try await store(writer, from: checkpoint, to: next, on: connection)
                guard stored else {
                    logger.info("projection checkpoint moved (rebuilt); following the new table", metadata: ["convo.projection": "\(name)"])
                    return
                }
                checkpoint = next
                checkpointValue.store(checkpoint, ordering: .relaxed)
                applied.increment(by: count)
            }
            if let failure {
                // The rows were loaded after the checkpoint was read: a rebuild that swapped new rows in between
                // makes the fold see events those rows already hold. Only a failure at the checkpoint this runner
                // still owns is the projection's; otherwise follow the new rows.
                guard try await ProjectionCatalogue.recordFailure(name, failure, ifAt: checkpoint, version: projection.version, on: connection, logger: logger)
                else {
                    writer.reset()
                    logger.info("projection rows replaced by a rebuild under the runner; following the new table", metadata: ["convo.projection": "\(name)"])
                    return
                }
                logger.error("projection stopped: an event cannot be applied", metadata: ["convo.projection": "\(name)", "convo.error": "\(failure)"])
                set(.failed(position: failure.position, error: "\(failure.eventType): \(failure.reason)"))
                if let entry = try await ProjectionCatalogue.entry(name, on: connection, logger: logger) {
                    try await waitForRepair(from: entry, on: connection)
                }
                return
            }
        }
    }

    /// Writes the writer's rows and the new checkpoint in one transaction.
    ///
    /// - Returns: `false` when the checkpoint was no longer `from` (nothing written).
    private func store(_ writer: any AnyProjectionWriter, from: Int64, to: Int64, on connection: PostgresConnection) async throws -> Bool {
        let name = projection.name
        let version = projection.version
        do {
            let stored = try await connection.withTransaction(logger: logger) { transaction -> Bool in
                guard let entry = try await ProjectionCatalogue.entry(name, forUpdate: true, on: transaction, logger: logger),
                    entry.version == version, entry.checkpoint == from
                else { return false }
                try await writer.flush(on: transaction, logger: logger)
                try await ProjectionCatalogue.advance(name, to: to, on: transaction, logger: logger)
                return true
            }
            if stored { writer.committed() } else { writer.reset() }
            return stored
        } catch {
            writer.reset()
            throw error
        }
    }

    /// A failed projection waits, holding its lock, until a rebuild has replaced its rows.
    private func waitForRepair(from failed: ProjectionCatalogue.Entry, on connection: PostgresConnection) async throws {
        while true {
            try await Task.sleep(for: configuration.failureRecheck)
            let entry = try await ProjectionCatalogue.entry(projection.name, on: connection, logger: logger)
            if entry != failed { return }
        }
    }
}
