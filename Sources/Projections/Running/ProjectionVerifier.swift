import EventStore
import Foundation
import Logging
import PostgresNIO
import SharedTypes

/// Replays the events into memory and compares the result with a projection's stored rows, as of the
/// stored checkpoint (read in one repeatable-read snapshot, so a runner writing meanwhile does not count as
/// a difference). This is how a row changed or deleted behind convo's back is found.
public struct ProjectionVerifier: Sendable {
    /// One row that differs.
    public struct RowDifference: Sendable, Codable, Equatable {
        public enum Kind: String, Sendable, Codable {
            /// The fold has the row; the table does not.
            case missing
            /// The table has a row the fold does not.
            case unexpected
            /// Both have it, with different values.
            case changed
        }

        public struct Field: Sendable, Codable, Equatable {
            public var column: String
            public var stored: JSONValue
            public var expected: JSONValue
        }

        public var key: String
        public var kind: Kind
        public var fields: [Field]
    }

    public struct Report: Sendable, Codable {
        public var projection: String
        public var checkpoint: Int64
        public var rowsCompared: Int
        public var differences: [RowDifference]
        /// Set when the stored rows were built by another version of the projection (nothing compared).
        public var stale: String?
        /// The head readers could see when the report was made, the events after the verified checkpoint,
        /// and how long the oldest of them has waited (seconds): a projection verified clean at a frozen
        /// checkpoint is still behind. Filled by ``measureLag(_:store:logger:)``.
        public var head: Int64?
        public var behind: Int64?
        public var waitingSeconds: Double?
        /// Committed events after the checkpoint that no reader may take yet, and the open transaction they
        /// wait for (``PostgresEventStore/heldBack(after:atLeast:)``), once the oldest has waited a second.
        public var heldBack: PostgresEventStore.HeldBack?
        public var isClean: Bool { differences.isEmpty && stale == nil }

        /// Whether the oldest event after the checkpoint has waited longer than `limit`.
        public func isBehind(longerThan limit: Duration) -> Bool {
            (waitingSeconds ?? 0) > limit.inSeconds
        }
    }

    /// Fills each report's ``Report/head``, ``Report/behind`` and ``Report/waitingSeconds``, measured now.
    ///
    /// - Throws: ``ProjectionError`` when PostgreSQL cannot be read.
    public static func measureLag(_ reports: [Report], store: PostgresEventStore, logger: Logger) async throws -> [Report] {
        do {
            let head = try await store.headPosition(.allTenants)
            var measured = reports
            let lags = try await ProjectionStatus.Lag.measure(after: reports.map(\.checkpoint), countingUpTo: ProjectionStatus.lagCountLimit, store: store)
            for index in measured.indices {
                guard let lag = lags[measured[index].checkpoint] else { continue }
                measured[index].head = head
                measured[index].behind = lag.events
                measured[index].waitingSeconds = lag.waitingSeconds
                measured[index].heldBack = lag.heldBack
            }
            return measured
        } catch {
            throw ProjectionError(code: .storageFailure, message: "\(PostgresEventStore.mapError(error, operation: "measure the projections' lag"))", cause: error)
        }
    }

    let store: PostgresEventStore
    let logger: Logger

    public init(store: PostgresEventStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// Verifies `projection`, or only its rows that `conversation` touches.
    ///
    /// - Throws: ``ProjectionError`` with ``ProjectionError/Code/notBuilt`` when the projection was never built, ``ProjectionError/Code/fold`` when a fold fails.
    public func verify(_ projection: any Projection, conversation: (TenantID, ConversationID)? = nil) async throws -> Report {
        do {
            return try await store.client.withOpenConnection { connection in
                try await connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: logger)
                do {
                    let report = try await verify(projection, conversation: conversation, on: connection)
                    try await connection.query("COMMIT", logger: logger)
                    return report
                } catch {
                    _ = try? await connection.query("ROLLBACK", logger: logger)
                    throw error
                }
            }
        } catch let error as ProjectionError {
            throw error
        } catch {
            throw ProjectionError(code: .storageFailure, message: "\(PostgresEventStore.mapError(error, operation: "verify \(projection.name)"))", cause: error)
        }
    }

    private func verify<P: Projection>(_ projection: P, conversation: (TenantID, ConversationID)?, on connection: PostgresConnection) async throws -> Report {
        guard let entry = try await ProjectionCatalogue.entry(projection.name, on: connection, logger: logger),
            try await ProjectionCatalogue.tableExists(projection.name, on: connection, logger: logger)
        else {
            throw ProjectionError(
                code: .notBuilt, message: "\(projection.name) has not been built yet: run `convo projections rebuild \(projection.name)`")
        }
        guard entry.version == projection.version else {
            return Report(
                projection: projection.name, checkpoint: entry.checkpoint, rowsCompared: 0, differences: [],
                stale: "stored rows are version \(entry.version), the code's is \(projection.version): rebuild")
        }
        let limit = entry.checkpoint
        // With a conversation: only the rows its own events touch, folded from every event that touches them
        // (a visitor's row gathers all the visitor's conversations).
        var targets: Set<P.Row.Key>?
        if let (tenant, conversation) = conversation {
            var keys = Set<P.Row.Key>()
            try await store.scan(
                on: connection, through: limit, tenant: tenant, streams: [conversation.messagesStream, conversation.workflowStream]
            ) { recorded in
                let event = ProjectedEvent(recorded)
                keys.formUnion(try fold { try projection.keys(of: event) })
            }
            targets = keys
        }
        var expected: [P.Row.Key: P.Row] = [:]
        // One conversation reads its own streams (or, for rows that gather conversations, its tenant's
        // events), never the whole store.
        let scope = conversation
        let streams = scope.flatMap { projection.rowsAreConversationLocal ? [$0.1.messagesStream, $0.1.workflowStream] : nil }
        try await store.scan(on: connection, through: limit, tenant: scope?.0, streams: streams) { recorded in
            let event = ProjectedEvent(recorded)
            for key in try fold({ try projection.keys(of: event) }) where targets?.contains(key) ?? true {
                expected[key] = try fold { try projection.apply(event, to: expected[key], key: key) }
            }
        }
        let table = try ProjectionTable<P.Row>(projection.name)
        let stored = try await table.all(keys: targets.map(Array.init), on: connection, logger: logger)
        var differences: [RowDifference] = []
        var seen = Set<P.Row.Key>()
        for row in stored {
            seen.insert(row.key)
            guard let want = expected[row.key] else {
                differences.append(RowDifference(key: "\(row.key)", kind: .unexpected, fields: try Self.fields(stored: row, expected: nil)))
                continue
            }
            if want != row {
                let fields = try Self.fields(stored: row, expected: want)
                if !fields.isEmpty { differences.append(RowDifference(key: "\(row.key)", kind: .changed, fields: fields)) }
            }
        }
        for (key, row) in expected where !seen.contains(key) {
            differences.append(RowDifference(key: "\(key)", kind: .missing, fields: try Self.fields(stored: nil, expected: row)))
        }
        differences.sort { $0.key < $1.key }
        return Report(projection: projection.name, checkpoint: limit, rowsCompared: max(stored.count, expected.count), differences: differences)
    }

    private func fold<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as FoldError {
            throw ProjectionError(code: .fold, message: "verify cannot fold: \(error)", fold: error)
        }
    }

    /// The columns whose values differ, as JSON.
    static func fields<Row: ProjectionRow>(stored: Row?, expected: Row?) throws -> [RowDifference.Field] {
        func columns(_ row: Row?) throws -> [String: JSONValue] {
            guard let row else { return [:] }
            let value = try JSONDecoder().decode(JSONValue.self, from: RowCoding.encoder.encode(row))
            guard case .object(let columns) = value else { return [:] }
            return columns
        }
        let have = try columns(stored)
        let want = try columns(expected)
        return Row.columns.compactMap { column in
            let stored = have[column.name] ?? .null
            let expected = want[column.name] ?? .null
            return stored == expected ? nil : RowDifference.Field(column: column.name, stored: stored, expected: expected)
        }
    }
}
