import EventStore
import Logging
import PostgresNIO

/// Applies batches of events to one projection's table: loads the rows a batch touches (one query), folds
/// the events into them in memory, and writes the changed rows back (one statement) inside the caller's
/// transaction. Rows stay cached between batches up to `capacity`, then the cache starts over, so memory
/// is bounded by the rows, never by the events.
///
/// `@unchecked Sendable` because one task owns a writer: it only crosses into PostgresNIO's transaction
/// closures, which run inside that task, never beside it. Nothing shares a writer between tasks.
final class ProjectionWriter<P: Projection>: @unchecked Sendable {
    typealias Key = P.Row.Key

    let projection: P
    let table: ProjectionTable<P.Row>
    private let capacity: Int
    /// Rows as the fold left them; `nil` for a key known to have no row.
    private var cache: [Key: P.Row?] = [:]
    private var dirty: Set<Key> = []

    init(_ projection: P, table: String, capacity: Int = 50_000) throws {
        self.projection = projection
        self.table = try ProjectionTable(table)
        self.capacity = capacity
    }

    /// Folds `events` into the cached rows, loading the rows it lacks on `connection`.
    ///
    /// - Returns: how many events, from the first, were applied, and the fold error that stopped the batch
    ///   if one did: the events before it are applied, the rest are not.
    func apply(_ events: [RecordedEvent], loadingOn connection: PostgresConnection, logger: Logger) async throws -> (applied: Int, error: FoldError?) {
        var keysByEvent: [[Key]] = []
        keysByEvent.reserveCapacity(events.count)
        var stop: FoldError?
        var missing: Set<Key> = []
        for event in events {
            do {
                let keys = try projection.keys(of: event)
                for key in keys where cache[key] == nil { missing.insert(key) }
                keysByEvent.append(keys)
            } catch let error as FoldError {
                stop = error
                break
            }
        }
        if !missing.isEmpty {
            for key in missing { cache[key] = .some(nil) }
            for row in try await table.load(missing, on: connection, logger: logger) { cache[row.key] = row }
        }
        for (index, keys) in keysByEvent.enumerated() {
            do {
                // An event changes all its rows or none.
                let rows = try keys.map { key in try projection.apply(events[index], to: cache[key] ?? nil, key: key) }
                for (key, row) in zip(keys, rows) {
                    cache[key] = row
                    dirty.insert(key)
                }
            } catch let error as FoldError {
                return (index, error)
            }
        }
        return (keysByEvent.count, stop)
    }

    /// Writes the rows changed since the last flush on `connection`, inside the caller's transaction.
    func flush(on connection: PostgresConnection, logger: Logger) async throws {
        let rows = dirty.compactMap { cache[$0] ?? nil }
        try await table.upsert(rows, on: connection, logger: logger)
    }

    /// Call after the transaction holding ``flush(on:logger:)`` committed.
    func committed() {
        dirty.removeAll(keepingCapacity: true)
        if cache.count > capacity { cache.removeAll() }
    }

    /// Forgets everything cached: after a failed transaction, or when the table changed under the writer.
    func reset() {
        cache.removeAll()
        dirty.removeAll()
    }

    /// Whether the writer keeps more rows than it may: flush, then ``committed()`` starts the cache over.
    var isFull: Bool { cache.count > capacity }
}
