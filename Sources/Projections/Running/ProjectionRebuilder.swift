import EventStore
import Foundation
import Logging
import PostgresNIO

/// Rebuilds projections blue/green: folds every event from position 0 into new tables while the live
/// tables keep serving and their runner keeps running, then, once the new tables have caught up with the
/// head, swaps them in and drops the old ones in one transaction. Stopping or crashing before the swap
/// leaves the live tables untouched (the next rebuild drops the half-built ones).
///
/// Several projections rebuilt together share one pass over the events.
public struct ProjectionRebuilder: Sendable {
    /// How a rebuild is going, for progress bars and logs.
    public struct Progress: Sendable {
        public var projections: [String]
        public var events: Int64
        /// The events readable when the rebuild started, plus those counted since: an estimate.
        public var total: Int64
        public var elapsed: Duration
        public var eventsPerSecond: Double {
            elapsed.seconds > 0 ? Double(events) / elapsed.seconds : 0
        }
        /// Seconds left at the current rate; `nil` until there is a rate.
        public var secondsLeft: Double? {
            let rate = eventsPerSecond
            return rate > 0 ? Double(max(0, total - events)) / rate : nil
        }
    }

    /// The end of one projection's rebuild.
    public struct Summary: Sendable, Codable {
        public var projection: String
        public var version: Int
        public var events: Int64
        public var checkpoint: Int64
        public var rows: Int64
        public var seconds: Double
    }

    public struct Configuration: Sendable {
        /// Events per read and fold step. Default: 2,000.
        public var batchSize: Int
        /// A catch-up pass that finds fewer events than this is the last before the swap. Default: 1,000.
        public var swapThreshold: Int
        /// When another process holds the rebuild lock: wait for it (start-up) or fail (CLI). Default: fail.
        public var waitForOtherRebuild: Bool
        /// What an event the fold cannot apply does. `false` (the CLI): the rebuild fails and the live rows stay.
        /// `true` (a runner's start-up build of one projection, whose live rows are missing or of another
        /// version and so cannot be followed anyway): the rows up to that event are swapped in and the
        /// projection is recorded as failed there, for `status` and `/readyz`. Default: `false`.
        public var installUpToFailure: Bool
        /// Holds the rebuild's session (and its lock) as a lease, ended by PostgreSQL once the process has
        /// stopped without closing it for this long (``PostgresConnection/asLease(timeout:logger:_:)``): a
        /// server's start-up rebuild. `nil` (the CLI): until the socket closes.
        public var sessionLease: Duration?

        public init(
            batchSize: Int = 2000, swapThreshold: Int = 1000, waitForOtherRebuild: Bool = false, installUpToFailure: Bool = false,
            sessionLease: Duration? = nil
        ) {
            self.batchSize = batchSize
            self.swapThreshold = swapThreshold
            self.waitForOtherRebuild = waitForOtherRebuild
            self.installUpToFailure = installUpToFailure
            self.sessionLease = sessionLease
        }
    }

    let store: PostgresEventStore
    let configuration: Configuration
    let logger: Logger

    public init(store: PostgresEventStore, configuration: Configuration = .init(), logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    /// Rebuilds `projections`.
    ///
    /// - Parameters:
    ///   - reason: why, recorded in `projection_rebuilds` (e.g. `cli`, `version 1 → 2`).
    ///   - progress: called after every batch.
    /// - Throws: ``ProjectionError`` with ``ProjectionError/Code/fold`` when an event cannot be applied (the live
    ///   tables stay as they were), ``ProjectionError/Code/busy`` when another rebuild holds a projection.
    public func rebuild(
        _ projections: [any Projection], reason: String, progress: @escaping @Sendable (Progress) -> Void = { _ in }
    ) async throws -> [Summary] {
        guard !projections.isEmpty else { return [] }
        let projections = projections.sorted { $0.name < $1.name }
        let client = store.client
        do {
            return try await client.withOpenConnection { connection in
                try await connection.asLease(
                    timeout: configuration.sessionLease, role: "rebuild \(projections.map(\.name).joined(separator: ","))", logger: logger
                ) {
                    try await withRebuildLocks(projections, on: connection) {
                        try await rebuildLocked(projections, reason: reason, on: connection, progress: progress)
                    }
                }
            }
        } catch let error as ProjectionError {
            throw error
        } catch {
            throw ProjectionError(code: .storageFailure, message: "rebuild failed: \(PostgresEventStore.mapError(error, operation: "rebuild"))", cause: error)
        }
    }

    private func withRebuildLocks<T>(_ projections: [any Projection], on connection: PostgresConnection, _ body: () async throws -> T) async throws -> T {
        var held: [(role: ProjectionCatalogue.Role, projection: String)] = []
        do {
            for projection in projections {
                while !(try await ProjectionCatalogue.tryLock(.rebuild, projection.name, on: connection, logger: logger)) {
                    guard configuration.waitForOtherRebuild else {
                        throw ProjectionError(code: .busy, message: "another process is rebuilding \(projection.name)")
                    }
                    try await Task.sleep(for: .milliseconds(500))
                }
                held.append((.rebuild, projection.name))
            }
        } catch {
            // The locks taken before the one that failed.
            _ = try? await ProjectionCatalogue.releasing(held, on: connection, logger: logger) {}
            throw error
        }
        return try await ProjectionCatalogue.releasing(held, on: connection, logger: logger, body)
    }

    /// One projection being rebuilt into a table of its own, `NAME_rID` (ID: its `projection_rebuilds` row).
    private struct Build {
        let projection: any Projection
        let id: Int64
        let writer: any AnyProjectionWriter
        var table: String { Self.table(projection.name, id) }
        static func table(_ name: String, _ id: Int64) -> String { "\(name)_r\(id)" }
    }

    private func rebuildLocked(
        _ projections: [any Projection], reason: String, on connection: PostgresConnection, progress: @Sendable (Progress) -> Void
    ) async throws -> [Summary] {
        let clock = ContinuousClock()
        let started = clock.now
        var builds: [Build] = []
        for projection in projections {
            try await dropLeftovers(of: projection.name, on: connection)
            let rows = try await connection.query(
                "INSERT INTO projection_rebuilds (name, version, reason) VALUES (\(projection.name), \(projection.version), \(reason)) RETURNING id",
                logger: logger)
            var id: Int64 = 0
            for try await value in rows.decode(Int64.self) { id = value }
            let build = Build(projection: projection, id: id, writer: try projection.makeWriter(table: Build.table(projection.name, id)))
            try await build.writer.createTable(suffix: "r\(id)", on: connection, logger: logger)
            builds.append(build)
        }
        let ids = builds.map(\.id)
        logger.info("projection rebuild started", metadata: ["convo.projections": "\(projections.map(\.name))", "convo.reason": "\(reason)"])
        do {
            var pass = Pass(checkpoint: 0, done: 0, total: try await store.countEvents())
            func report(_ pass: Pass) {
                progress(Progress(projections: projections.map(\.name), events: pass.done, total: max(pass.total, pass.done), elapsed: clock.now - started))
            }
            report(pass)
            var lastRecorded = clock.now
            // Catch up in passes until a pass finds only a few events; the swap applies the rest.
            let partial = configuration.installUpToFailure && builds.count == 1
            // Only the personal members the folds read are decrypted.
            let opening = PersonalDataOpening.read(by: projections)
            while pass.failure == nil {
                let before = pass.done
                func fold(_ events: [ProjectedEvent]) async throws {
                    try await consume(events, into: builds, pass: &pass, partial: partial, on: connection)
                    report(pass)
                    if clock.now - lastRecorded > .seconds(2) {
                        lastRecorded = clock.now
                        try await connection.query(
                            "UPDATE projection_rebuilds SET events = \(pass.done), checkpoint = \(pass.checkpoint) WHERE id = ANY(\(ids))", logger: logger)
                    }
                    if pass.failure != nil { throw StopScan() }
                }
                do {
                    try await store.scanProjected(after: pass.checkpoint, batchSize: configuration.batchSize, opening: opening, fold)
                } catch is StopScan {}
                if pass.done - before < configuration.swapThreshold { break }
                pass.total = pass.done + (try await store.countEvents(after: pass.checkpoint))
            }
            // Write what the passes folded before taking the live projections' locks: the swap then holds
            // them only for the last few events.
            try await flushConcurrently(builds)
            try await swap(builds, pass: &pass, on: connection)
            report(pass)
            let seconds = (clock.now - started).seconds
            var summaries: [Summary] = []
            for build in builds {
                let rows = try await connection.query("SELECT count(*) FROM \(unescaped: build.projection.name)", logger: logger)
                var count: Int64 = 0
                for try await value in rows.decode(Int64.self) { count = value }
                summaries.append(
                    Summary(
                        projection: build.projection.name, version: build.projection.version, events: pass.done, checkpoint: pass.checkpoint, rows: count,
                        seconds: seconds))
            }
            logger.info("projection rebuild swapped in", metadata: ["convo.projections": "\(projections.map(\.name))", "convo.events": "\(pass.done)"])
            return summaries
        } catch {
            let message = (error as? ProjectionError)?.message ?? "\(error)"
            let outcome = error is CancellationError || Task.isCancelled ? "interrupted" : "failed"
            _ = try? await connection.query(
                "UPDATE projection_rebuilds SET outcome = \(outcome), error = \(message), finished_at = now() WHERE id = ANY(\(ids))", logger: logger)
            for build in builds {
                _ = try? await connection.query("DROP TABLE IF EXISTS \(unescaped: build.table)", logger: logger)
            }
            throw error
        }
    }

    /// How far a rebuild has come.
    private struct Pass {
        var checkpoint: Int64
        var done: Int64
        var total: Int64
        /// The event a start-up build stopped at (``Configuration/installUpToFailure``).
        var failure: FoldError?
    }

    private struct StopScan: Error {}

    /// Folds a batch into the builds' rows in memory. Rows go to the new tables only when a writer holds more
    /// than it may keep (and at the swap): a rebuild that fails starts over anyway, so it needs no
    /// checkpoint of its own, and each row is written about once instead of once per batch.
    private func consume(
        _ batch: [ProjectedEvent], into builds: [Build], pass: inout Pass, partial: Bool, inSwap: Bool = false, on connection: PostgresConnection
    ) async throws {
        // Ctrl-C or shutdown: stop here; the live tables were never touched.
        try Task.checkCancellation()
        var applied = batch.count
        for build in builds {
            let (count, failure) = try await build.writer.apply(batch, loadingOn: connection, logger: logger)
            guard let failure else { continue }
            guard partial else { throw ProjectionError(code: .fold, message: "\(build.projection.name): \(failure)", fold: failure) }
            applied = count
            pass.failure = failure
        }
        if applied > 0 {
            pass.done += Int64(applied)
            pass.checkpoint = batch[applied - 1].globalPosition
            pass.total = max(pass.total, pass.done)
        }
        guard builds.contains(where: \.writer.isFull) else { return }
        if inSwap {
            // Inside the swap's transaction: write there, so the swap stays one transaction.
            for build in builds { try await build.writer.flush(on: connection, logger: logger) }
        } else {
            try await flushConcurrently(builds)
        }
    }

    /// Writes what every build folded, each table in a transaction of its own on its own connection, all at
    /// once: encoding the rows and inserting them take a core each. Nobody reads a rebuild's tables before
    /// the swap, and a failed rebuild drops them all, so the writes need not share a transaction.
    private func flushConcurrently(_ builds: [Build]) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for build in builds {
                group.addTask {
                    try await store.client.withOpenTransaction(logger: logger) { transaction in
                        try await build.writer.flush(on: transaction, logger: logger)
                    }
                }
            }
            try await group.waitForAll()
        }
        // Once every write committed; a failed one fails the rebuild, which drops the tables.
        for build in builds { build.writer.committed() }
    }

    /// Applies what is left under the catalogue rows' locks, then renames the new tables over the live ones.
    private func swap(_ builds: [Build], pass: inout Pass, on connection: PostgresConnection) async throws {
        pass = try await connection.withTransaction(logger: logger) { transaction in
            var pass = pass
            for build in builds {
                _ = try await ProjectionCatalogue.entry(build.projection.name, forUpdate: true, on: transaction, logger: logger)
            }
            let opening = PersonalDataOpening.read(by: builds.map(\.projection))
            while pass.failure == nil {
                let batch = try await store.readAll(on: transaction, after: pass.checkpoint, maxCount: configuration.batchSize, opening: opening)
                guard !batch.isEmpty else { break }
                try await consume(
                    ProjectedEvent.decode(batch), into: builds, pass: &pass, partial: builds.count == 1 && configuration.installUpToFailure, inSwap: true,
                    on: transaction)
            }
            for build in builds {
                let name = build.projection.name
                try await build.writer.flush(on: transaction, logger: logger)
                try await transaction.query("DROP TABLE IF EXISTS \(unescaped: name)", logger: logger)
                try await transaction.query("ALTER TABLE \(unescaped: build.table) RENAME TO \(unescaped: name)", logger: logger)
                try await ProjectionCatalogue.install(name, version: build.projection.version, checkpoint: pass.checkpoint, on: transaction, logger: logger)
                if let failure = pass.failure { try await ProjectionCatalogue.recordFailure(name, failure, on: transaction, logger: logger) }
            }
            try await transaction.query(
                """
                UPDATE projection_rebuilds SET outcome = 'swapped', finished_at = now(), events = \(pass.done), checkpoint = \(pass.checkpoint)
                WHERE id = ANY(\(builds.map(\.id)))
                """, logger: logger)
            return pass
        }
    }

    /// Drops tables a crashed rebuild left behind. Safe: the caller holds the projection's rebuild lock.
    private func dropLeftovers(of name: String, on connection: PostgresConnection) async throws {
        let rows = try await connection.query(
            """
            SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename ~ ('^' || \(name) || '_r[0-9]+$')
            """, logger: logger)
        var tables: [String] = []
        for try await table in rows.decode(String.self) { tables.append(table) }
        for table in tables where isValidTableName(table) {
            try await connection.query("DROP TABLE IF EXISTS \(unescaped: table)", logger: logger)
        }
        try await connection.query(
            "UPDATE projection_rebuilds SET outcome = 'interrupted', finished_at = now() WHERE name = \(name) AND outcome = 'running'", logger: logger)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
