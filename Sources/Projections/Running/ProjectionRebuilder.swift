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
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            return seconds > 0 ? Double(events) / seconds : 0
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
        /// Events per transaction into the new tables. Default: 2,000.
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

        public init(batchSize: Int = 2000, swapThreshold: Int = 1000, waitForOtherRebuild: Bool = false, installUpToFailure: Bool = false) {
            self.batchSize = batchSize
            self.swapThreshold = swapThreshold
            self.waitForOtherRebuild = waitForOtherRebuild
            self.installUpToFailure = installUpToFailure
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
        _ projections: [any Projection], reason: String, progress: @Sendable (Progress) -> Void = { _ in }
    ) async throws -> [Summary] {
        guard !projections.isEmpty else { return [] }
        let projections = projections.sorted { $0.name < $1.name }
        let client = store.client
        do {
            return try await client.withConnection { connection in
                try await withRebuildLocks(projections, on: connection) {
                    try await rebuildLocked(projections, reason: reason, on: connection, progress: progress)
                }
            }
        } catch let error as ProjectionError {
            throw error
        } catch {
            throw ProjectionError(code: .storageFailure, message: "rebuild failed: \(PostgresEventStore.mapError(error, operation: "rebuild"))", cause: error)
        }
    }

    private func withRebuildLocks<T>(_ projections: [any Projection], on connection: PostgresConnection, _ body: () async throws -> T) async throws -> T {
        var held: [String] = []
        do {
            for projection in projections {
                while !(try await ProjectionCatalogue.tryLock(.rebuild, projection.name, on: connection, logger: logger)) {
                    guard configuration.waitForOtherRebuild else {
                        throw ProjectionError(code: .busy, message: "another process is rebuilding \(projection.name)")
                    }
                    try await Task.sleep(for: .milliseconds(500))
                }
                held.append(projection.name)
            }
            let result = try await body()
            for name in held { await ProjectionCatalogue.release(.rebuild, name, on: connection, logger: logger) }
            return result
        } catch {
            for name in held { await ProjectionCatalogue.release(.rebuild, name, on: connection, logger: logger) }
            throw error
        }
    }

    private func rebuildLocked(
        _ projections: [any Projection], reason: String, on connection: PostgresConnection, progress: @Sendable (Progress) -> Void
    ) async throws -> [Summary] {
        let clock = ContinuousClock()
        let started = clock.now
        var ids: [String: Int64] = [:]
        var writers: [any AnyProjectionWriter] = []
        for projection in projections {
            try await dropLeftovers(of: projection.name, on: connection)
            let rows = try await connection.query(
                "INSERT INTO projection_rebuilds (name, version, reason) VALUES (\(projection.name), \(projection.version), \(reason)) RETURNING id",
                logger: logger)
            for try await id in rows.decode(Int64.self) { ids[projection.name] = id }
            let id = ids[projection.name] ?? 0
            let writer = try projection.makeWriter(table: "\(projection.name)_r\(id)")
            try await writer.createTable(suffix: "r\(id)", on: connection, logger: logger)
            writers.append(writer)
        }
        logger.info("projection rebuild started", metadata: ["convo.projections": "\(projections.map(\.name))", "convo.reason": "\(reason)"])
        do {
            var checkpoint: Int64 = 0
            var done: Int64 = 0
            var total = try await store.countEvents()
            func report(_ done: Int64, _ total: Int64) {
                progress(Progress(projections: projections.map(\.name), events: done, total: max(total, done), elapsed: clock.now - started))
            }
            report(0, total)
            // Catch up in passes until a pass finds only a few events; the swap applies the rest.
            var failure: FoldError?
            let partial = configuration.installUpToFailure && writers.count == 1
            scanning: while true {
                let before = done
                do {
                    try await store.scanAll(after: checkpoint, batchSize: configuration.batchSize) { batch in
                        var batch = batch
                        if let (applied, error) = try await apply(batch, to: writers, on: connection, partial: partial) {
                            failure = error
                            batch = Array(batch.prefix(applied))
                        }
                        if let last = batch.last {
                            try await connection.withTransaction(logger: logger) { transaction in
                                for writer in writers { try await writer.flush(on: transaction, logger: logger) }
                                for id in ids.values {
                                    try await transaction.query(
                                        "UPDATE projection_rebuilds SET events = \(done + Int64(batch.count)), checkpoint = \(last.globalPosition) WHERE id = \(id)",
                                        logger: logger)
                                }
                            }
                            for writer in writers { writer.committed() }
                            done += Int64(batch.count)
                            checkpoint = last.globalPosition
                            total = max(total, done)
                            report(done, total)
                        }
                        if failure != nil { throw StopScan() }
                    }
                } catch is StopScan {
                    break scanning
                }
                if done - before < configuration.swapThreshold { break }
                total = done + (try await store.countEvents(after: checkpoint))
            }
            let final = try await swap(projections, writers: writers, ids: ids, after: checkpoint, done: done, failure: failure, on: connection)
            done = final.done
            report(done, done)
            let seconds = (clock.now - started).seconds
            var summaries: [Summary] = []
            for projection in projections {
                let rows = try await connection.query("SELECT count(*) FROM \(unescaped: projection.name)", logger: logger)
                var count: Int64 = 0
                for try await value in rows.decode(Int64.self) { count = value }
                summaries.append(
                    Summary(projection: projection.name, version: projection.version, events: done, checkpoint: final.checkpoint, rows: count, seconds: seconds))
            }
            logger.info("projection rebuild swapped in", metadata: ["convo.projections": "\(projections.map(\.name))", "convo.events": "\(done)"])
            return summaries
        } catch {
            let message = (error as? ProjectionError)?.message ?? "\(error)"
            let outcome = error is CancellationError || Task.isCancelled ? "interrupted" : "failed"
            for (name, id) in ids {
                _ = try? await connection.query(
                    "UPDATE projection_rebuilds SET outcome = \(outcome), error = \(message), finished_at = now() WHERE id = \(id)", logger: logger)
                _ = try? await connection.query("DROP TABLE IF EXISTS \(unescaped: name)_r\(unescaped: String(id))", logger: logger)
            }
            throw error
        }
    }

    /// Applies a batch to every writer, or fails the rebuild at the first event a fold cannot apply.
    ///
    /// - Returns: with `partial`, how many events were applied and the fold error that stopped the batch;
    ///   `nil` when every event was applied.
    private func apply(
        _ batch: [RecordedEvent], to writers: [any AnyProjectionWriter], on connection: PostgresConnection, partial: Bool = false
    ) async throws -> (Int, FoldError)? {
        for writer in writers {
            let (applied, failure) = try await writer.apply(batch, loadingOn: connection, logger: logger)
            if let failure {
                if partial { return (applied, failure) }
                throw ProjectionError(code: .fold, message: "\(writer.name): \(failure)", fold: failure)
            }
        }
        return nil
    }

    private struct StopScan: Error {}

    /// Applies what is left under the catalogue rows' locks, then renames the new tables over the live ones.
    private func swap(
        _ projections: [any Projection], writers: [any AnyProjectionWriter], ids: [String: Int64], after checkpoint: Int64, done: Int64,
        failure: FoldError?, on connection: PostgresConnection
    ) async throws -> (checkpoint: Int64, done: Int64) {
        try await connection.withTransaction(logger: logger) { transaction in
            for projection in projections {
                _ = try await ProjectionCatalogue.entry(projection.name, forUpdate: true, on: transaction, logger: logger)
            }
            var checkpoint = checkpoint
            var done = done
            while failure == nil {
                let batch = try await PostgresEventStore.readAll(on: transaction, after: checkpoint, maxCount: configuration.batchSize, logger: logger)
                guard let last = batch.last else { break }
                try await apply(batch, to: writers, on: transaction)
                checkpoint = last.globalPosition
                done += Int64(batch.count)
            }
            for writer in writers { try await writer.flush(on: transaction, logger: logger) }
            for projection in projections {
                let id = ids[projection.name] ?? 0
                try await transaction.query("DROP TABLE IF EXISTS \(unescaped: projection.name)", logger: logger)
                try await transaction.query("ALTER TABLE \(unescaped: projection.name)_r\(unescaped: String(id)) RENAME TO \(unescaped: projection.name)", logger: logger)
                try await ProjectionCatalogue.install(projection.name, version: projection.version, checkpoint: checkpoint, on: transaction, logger: logger)
                if let failure { try await ProjectionCatalogue.recordFailure(projection.name, failure, on: transaction, logger: logger) }
                try await transaction.query(
                    """
                    UPDATE projection_rebuilds SET outcome = 'swapped', finished_at = now(), events = \(done), checkpoint = \(checkpoint)
                    WHERE id = \(id)
                    """, logger: logger)
            }
            return (checkpoint, done)
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
        for table in tables where ProjectionTable<WorkflowStateRow>.isValidName(table) {
            try await connection.query("DROP TABLE IF EXISTS \(unescaped: table)", logger: logger)
        }
        try await connection.query(
            "UPDATE projection_rebuilds SET outcome = 'interrupted', finished_at = now() WHERE name = \(name) AND outcome = 'running'", logger: logger)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
