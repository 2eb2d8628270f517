import Logging
import PostgresNIO
import Synchronization

/// The ways convo talks to PostgreSQL through the pool: each gives up at once when its connection closes,
/// instead of waiting for ever on a query written to a connection the server had already closed
/// (PostgresNIO 1.33 drops such a query without completing it; see ``PostgresConnection/whileOpen(_:)``).
/// After a PostgreSQL restart, a request, a projection runner or a shutdown then fails fast and tries again
/// instead of hanging. Every use of the pool in convo goes through these.
extension PostgresClient {
    /// `withConnection`, giving up when the connection closes or the task is cancelled.
    public func withOpenConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await withConnection { connection in try await connection.whileOpen(body) }
    }

    /// `withTransaction`, giving up when the connection closes or the task is cancelled (the transaction
    /// then ends with its session, never committed).
    public func withOpenTransaction<T: Sendable>(logger: Logger, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await withOpenConnection { connection in try await connection.withTransaction(logger: logger) { try await body($0) } }
    }

    /// `query`, its rows read in full before the connection goes back to the pool. `sending` is marked just
    /// before the query is written (a write whose call fails after that may have committed).
    public func queryOpen(
        _ query: PostgresQuery, logger: Logger, sending: SendMarker? = nil, file: String = #fileID, line: Int = #line
    ) async throws -> CollectedRows {
        try await withOpenConnection { connection in
            sending?.mark()
            return try await connection.collect(query, logger: logger, file: file, line: line)
        }
    }

    /// `execute` of a prepared statement, its rows read in full before the connection goes back to the pool.
    /// `sending` is marked just before the statement is written.
    public func executeOpen<Statement: PostgresPreparedStatement>(
        _ statement: Statement, logger: Logger, sending: SendMarker? = nil
    ) async throws -> [Statement.Row] where Statement.Row: Sendable {
        try await withOpenConnection { connection in
            sending?.mark()
            var rows: [Statement.Row] = []
            for try await row in try await connection.execute(statement, logger: logger) { rows.append(row) }
            return rows
        }
    }
}

extension PostgresConnection {
    /// Every row of `query`, gathered on the connection's event loop as they arrive (PostgresNIO's future
    /// `query`, which asks for the next rows as soon as it has taken the last ones).
    ///
    /// Not the async row sequence, however it is consumed: between handing out rows and the consumer's next
    /// demand, that stream waits for demand, and PostgresNIO 1.33 stops the process with a precondition
    /// failure (`RowStreamStateMachine.channelReadComplete`) when PostgreSQL closes the connection (a
    /// restart, a failover) while a result of more than one read is in flight in that state.
    public func collect(_ query: PostgresQuery, logger: Logger, file: String = #fileID, line: Int = #line) async throws -> CollectedRows {
        CollectedRows(rows: try await self.query(query, logger: logger, file: file, line: line).get().rows)
    }
}

/// Rows read in full: an `AsyncSequence` of `PostgresRow`, so PostgresNIO's `decode` applies as to a live one.
public struct CollectedRows: AsyncSequence, Sendable {
    public typealias Element = PostgresRow
    public let rows: [PostgresRow]

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: IndexingIterator<[PostgresRow]>
        public mutating func next() async throws -> PostgresRow? { base.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: rows.makeIterator()) }
}

/// Whether a write was handed to a connection: after that, a failure without PostgreSQL's answer leaves its
/// outcome unknown (``EventStoreError/Code/outcomeUnknown``); before it, nothing was written.
public final class SendMarker: Sendable {
    private let sent = Atomic<Bool>(false)
    public init() {}
    public func mark() { sent.store(true, ordering: .releasing) }
    public var isSent: Bool { sent.load(ordering: .acquiring) }
}
