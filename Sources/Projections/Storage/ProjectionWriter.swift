import EventStore
import Logging
import PostgresNIO

/// Applies batches of events to one projection's table: loads the rows a batch touches (one query), folds
/// the events into them in memory, and writes the changed rows back (one statement) inside the caller's
/// transaction. Rows stay cached between batches up to `capacity`, then the cache starts over, so memory
/// is bounded by the rows, never by the events.
///
/// `@unchecked Sendable` because one task at a time uses a writer: the task that folds into it, or, while
/// that task waits for them, the child task a rebuild writes its rows on. It only crosses into PostgresNIO's
/// transaction closures, which run inside the task that calls them. Nothing uses a writer from two tasks at once.
final class ProjectionWriter<P: Projection>: @unchecked Sendable {
    typealias Key = P.Row.Key

    let projection: P
    let table: ProjectionTable<P.Row>
    private let capacity: Int
    /// A cached row as the fold left it (`nil` for a key known to have no row), and whether it changed
    /// since the last flush.
    private struct Entry {
        var row: P.Row?
        var dirty: Bool
    }

    private var cache: [Key: Entry] = [:]
    /// The keys of the dirty entries, each once: a flush touches only them, however large the cache.
    private var dirtyKeys: [Key] = []
    /// Whether every stored row is in `cache`, so a key it lacks has no row and nothing need be loaded: a
    /// table this writer created, until the cache is first emptied.
    private var complete = false

    init(_ projection: P, table: String, capacity: Int = 50_000) throws {
        self.projection = projection
        self.table = try ProjectionTable(table)
        self.capacity = capacity
    }

    /// Folds `events` into the cached rows, loading the rows it lacks on `connection`.
    ///
    /// - Returns: how many events, from the first, were applied, and the fold error that stopped the batch
    ///   if one did: the events before it are applied, the rest are not.
    @_specialize(where P == WorkflowStateProjection)
    @_specialize(where P == ConversationsProjection)
    @_specialize(where P == VisitorsProjection)
    func apply(_ events: [ProjectedEvent], loadingOn connection: PostgresConnection, logger: Logger) async throws -> (applied: Int, error: FoldError?) {
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
            for key in missing { cache[key] = Entry(row: nil, dirty: false) }
            if !complete {
                for row in try await table.load(missing, on: connection, logger: logger) { cache[row.key]?.row = row }
            }
        }
        for (index, keys) in keysByEvent.enumerated() {
            do {
                if keys.count == 1, let slot = cache.index(forKey: keys[0]) {
                    // The common case, one row: found once, replaced in place.
                    let row = try projection.apply(events[index], to: cache.values[slot].row, key: keys[0])
                    if !cache.values[slot].dirty { dirtyKeys.append(keys[0]) }
                    cache.values[slot] = Entry(row: row, dirty: true)
                } else {
                    // An event changes all its rows or none.
                    let rows = try keys.map { key in try projection.apply(events[index], to: cache[key]?.row ?? nil, key: key) }
                    for (key, row) in zip(keys, rows) {
                        if cache[key]?.dirty != true { dirtyKeys.append(key) }
                        cache[key] = Entry(row: row, dirty: true)
                    }
                }
            } catch let error as FoldError {
                return (index, error)
            }
        }
        return (keysByEvent.count, stop)
    }

    /// Writes the rows changed since the last flush on `connection`, inside the caller's transaction.
    @_specialize(where P == WorkflowStateProjection)
    @_specialize(where P == ConversationsProjection)
    @_specialize(where P == VisitorsProjection)
    func flush(on connection: PostgresConnection, logger: Logger) async throws {
        let rows = dirtyKeys.compactMap { cache[$0]?.row }
        try await table.upsert(rows, on: connection, logger: logger)
    }

    /// Call after the transaction holding ``flush(on:logger:)`` committed.
    func committed() {
        if cache.count > capacity {
            cache.removeAll()
            complete = false
        } else {
            for key in dirtyKeys { cache[key]?.dirty = false }
        }
        dirtyKeys.removeAll(keepingCapacity: true)
    }

    /// Forgets everything cached: after a failed transaction, or when the table changed under the writer.
    func reset() {
        cache.removeAll()
        dirtyKeys.removeAll()
        complete = false
    }

    /// Creates the writer's table, empty: until the cache is first emptied, no row need be loaded from it.
    func createTable(suffix: String, on connection: PostgresConnection, logger: Logger) async throws {
        try await table.create(suffix: suffix, on: connection, logger: logger)
        reset()
        complete = true
    }

    /// Whether the writer keeps more rows than it may: flush, then ``committed()`` starts the cache over.
    var isFull: Bool { cache.count > capacity }
}
