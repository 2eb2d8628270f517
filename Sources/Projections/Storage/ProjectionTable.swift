import EventStore
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// The SQL for one projection table. Rows travel as one JSON array per statement (`jsonb_to_recordset`
/// one way, `to_jsonb` the other), so a batch of any size is one round trip and one bound parameter, and
/// every projection shares this code.
///
/// Table and column names come from the projections' definitions, never from input; they are checked
/// against ``isValidTableName(_:)`` before they reach SQL.
/// Whether `name` is safe to put in SQL as a table name: a lowercase letter, then letters, digits and `_`.
func isValidTableName(_ name: String) -> Bool {
    let utf8 = name.utf8
    return (1...60).contains(utf8.count) && utf8.first.map { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) } == true
        && utf8.allSatisfy { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "_") }
}

struct ProjectionTable<Row: ProjectionRow>: Sendable {
    let name: String

    init(_ name: String) throws {
        guard isValidTableName(name) else { throw ProjectionError(code: .invalidArgument, message: "invalid projection table name '\(name)'") }
        self.name = name
    }

    private var keyColumns: [ProjectionColumn] { Array(Row.columns.prefix(Row.keyColumnCount)) }
    private var keyList: String { keyColumns.map(\.name).joined(separator: ", ") }
    private var columnList: String { Row.columns.map(\.name).joined(separator: ", ") }

    /// `CREATE TABLE` with the primary key and indexes; names carry `suffix` so a rebuild's table never
    /// collides with the live one's constraints.
    func create(suffix: String, on connection: PostgresConnection, logger: Logger) async throws {
        let columns = Row.columns.map { "\($0.name) \($0.type)\($0.nullable ? "" : " NOT NULL")" }.joined(separator: ",\n    ")
        try await connection.query(
            "CREATE TABLE \(unescaped: name) (\n    \(unescaped: columns),\n    CONSTRAINT \(unescaped: name)_\(unescaped: suffix)_pkey PRIMARY KEY (\(unescaped: keyList)))",
            logger: logger)
        for (number, index) in Row.indexes.enumerated() {
            try await connection.query(
                "CREATE INDEX \(unescaped: name)_\(unescaped: suffix)_\(unescaped: String(number + 1))_idx ON \(unescaped: name) (\(unescaped: index.joined(separator: ", ")))",
                logger: logger)
        }
    }

    /// The stored rows with these keys.
    func load(_ keys: some Collection<Row.Key>, on connection: PostgresConnection, logger: Logger) async throws -> [Row] {
        guard !keys.isEmpty else { return [] }
        let keyTypes = keyColumns.map { "\($0.name) \($0.type)" }.joined(separator: ", ")
        let rows = try await connection.collect(
            """
            SELECT to_jsonb(t) FROM \(unescaped: name) t
            JOIN jsonb_to_recordset(\(try Self.json(Array(keys)))) AS k(\(unescaped: keyTypes)) USING (\(unescaped: keyList))
            """, logger: logger)
        return try await Self.decode(rows)
    }

    /// Inserts `rows`, replacing the stored rows with the same keys.
    func upsert(_ rows: [Row], on connection: PostgresConnection, logger: Logger) async throws {
        guard !rows.isEmpty else { return }
        let types = Row.columns.map { "\($0.name) \($0.type)" }.joined(separator: ", ")
        let updates = Row.columns.dropFirst(Row.keyColumnCount).map { "\($0.name) = excluded.\($0.name)" }.joined(separator: ", ")
        try await connection.query(
            """
            INSERT INTO \(unescaped: name) (\(unescaped: columnList))
            SELECT \(unescaped: columnList) FROM jsonb_to_recordset(\(try Self.json(rows))) AS x(\(unescaped: types))
            ON CONFLICT (\(unescaped: keyList)) DO UPDATE SET \(unescaped: updates)
            """, logger: logger)
    }

    /// Every stored row, in key order, or only those with `keys`.
    func all(keys: [Row.Key]? = nil, on connection: PostgresConnection, logger: Logger) async throws -> [Row] {
        if let keys { return try await load(keys, on: connection, logger: logger) }
        return try await Self.decode(try await connection.collect("SELECT to_jsonb(t) FROM \(unescaped: name) t ORDER BY \(unescaped: keyList)", logger: logger))
    }

    private static func json(_ value: some Encodable) throws -> JSONB {
        JSONB(try RowCoding.streaming.encode(value, capacity: 1024))
    }

    /// Rows gathered in full (``PostgresConnection/collect(_:logger:file:line:)``): a table can be large, and
    /// a large result streamed while PostgreSQL closes the connection stops the process (PostgresNIO 1.33).
    static func decode(_ rows: CollectedRows) async throws -> [Row] {
        var decoded: [Row] = []
        for try await json in rows.decode(JSONB.self) {
            do {
                decoded.append(try RowCoding.decoder.decode(Row.self, from: json.text))
            } catch {
                throw ProjectionError(code: .storageFailure, message: "a stored \(Row.self) does not decode: \(error)")
            }
        }
        return decoded
    }
}
