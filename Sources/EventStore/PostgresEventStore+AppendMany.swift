import Foundation
import NIOCore
import PostgresNIO
import SharedTypes

/// One append of an ``PostgresEventStore/appendMany(_:)`` call.
public struct AppendRequest: Sendable {
    public var events: [NewEvent]
    public var stream: StreamName
    public var tenant: TenantID
    public var expectedVersion: ExpectedVersion

    public init(_ events: [NewEvent], to stream: StreamName, tenant: TenantID, expectedVersion: ExpectedVersion) {
        self.events = events
        self.stream = stream
        self.tenant = tenant
        self.expectedVersion = expectedVersion
    }
}

extension PostgresEventStore {
    /// The most events one ``appendMany(_:)`` call takes (positions leave 16 bits for an event's place).
    public static let maxEventsPerCall = 65_535

    /// Several appends in one transaction and one round trip: group commit for callers that gather the
    /// appends of concurrent requests. Each append keeps its own expected version, idempotency and error;
    /// one refused append does not undo the others. Appends to the same stream apply in the order given.
    ///
    /// - Returns: one result per request, in order: the append's ``AppendResult``, or its
    ///   ``EventStoreError`` (``EventStoreError/Code/wrongExpectedVersion``, ``EventStoreError/Code/duplicateEventID``).
    /// - Throws: ``EventStoreError`` for what fails the whole call: invalid requests, PostgreSQL unavailable.
    public func appendMany(_ requests: [AppendRequest]) async throws -> [Result<AppendResult, EventStoreError>] {
        guard !requests.isEmpty else { return [] }
        for request in requests { try validate(request.events, expectedVersion: request.expectedVersion) }
        guard requests.contains(where: { $0.events.contains { !$0.personalFields.isEmpty } }) else { return try await appendSealed(requests) }
        // A new visitor's key is stored by the statement that stores the events it seals: one commit.
        if let results = try await appendStoringNewKeys(requests) { return results }
        // Personal data sealed first, new keys stored first; an append refused there (a forgotten visitor)
        // is answered alone.
        let sealed = try await vault.seal(requests.map { ($0.events, $0.tenant) })
        return try await appendSealed(requests, sealed: sealed.results)
    }

    /// The appends sealed, each with the key its visitor has or a new one, and stored with their new keys by
    /// one statement (the batch statement, or `convo_append_many_keyed`): `nil` when it wrote nothing (a key
    /// another writer stored first, a deadlock; for the batch statement also a stream held by another append,
    /// a version or an id taken), for the caller to seal again, storing keys first, and append.
    private func appendStoringNewKeys(_ requests: [AppendRequest]) async throws -> [Result<AppendResult, EventStoreError>]? {
        let sealed = try await vault.seal(requests.map { ($0.events, $0.tenant) }, leavingNewKeys: true)
        guard !sealed.newKeys.isEmpty else { return try await appendSealed(requests, sealed: sealed.results) }
        let (accepted, places, refused) = Self.accepted(requests, sealed: sealed.results)
        var results = refused
        guard !accepted.isEmpty else { return results.map { $0! } }
        let arguments = try Self.batchArguments(accepted)
        let start = ContinuousClock.now
        let written: [Result<AppendResult, EventStoreError>]
        if Self.fitsBatch(accepted) {
            guard let batch = try await batchAppend(accepted, arguments, newKeys: sealed.newKeys) else { return nil }
            written = batch
        } else {
            do { written = try await appendByFunction(accepted, arguments, newKeys: sealed.newKeys) } catch is NewKeysLost { return nil }
        }
        appendDuration.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
        vault.kept(sealed.newKeys, epoch: sealed.epoch)
        for (place, result) in zip(places, written) { results[place] = result }
        return results.map { $0! }
    }

    /// The appends whose events were sealed, where they were in the call, and the refusals in their places.
    private static func accepted(
        _ requests: [AppendRequest], sealed: [Result<[NewEvent], EventStoreError>]
    ) -> (accepted: [AppendRequest], places: [Int], results: [Result<AppendResult, EventStoreError>?]) {
        var results = [Result<AppendResult, EventStoreError>?](repeating: nil, count: requests.count)
        var accepted: [AppendRequest] = []
        var places: [Int] = []
        for (index, outcome) in sealed.enumerated() {
            switch outcome {
            case .success(let events):
                var request = requests[index]
                request.events = events
                accepted.append(request)
                places.append(index)
            case .failure(let error):
                results[index] = .failure(error)
            }
        }
        return (accepted, places, results)
    }

    private func appendSealed(_ requests: [AppendRequest], sealed: [Result<[NewEvent], EventStoreError>]) async throws -> [Result<AppendResult, EventStoreError>] {
        let (accepted, places, refused) = Self.accepted(requests, sealed: sealed)
        var results = refused
        if !accepted.isEmpty {
            for (place, result) in zip(places, try await appendSealed(accepted)) { results[place] = result }
        }
        return results.map { $0! }
    }

    /// Whether the appends fit one batch statement (``BatchAppendStatement``): each stream once.
    static func fitsBatch(_ requests: [AppendRequest]) -> Bool {
        var seen = Set<StreamKey>()
        for request in requests where !seen.insert(StreamKey(tenant: request.tenant, stream: request.stream)).inserted {
            return false
        }
        return true
    }

    /// The appends' columns, as the append statements take them.
    struct BatchArguments {
        var tenants: [String] = []
        var streams: [String] = []
        var expected: [Int64] = []
        var counts: [Int32] = []
        var ids: [UUID] = []
        var types: [String] = []
        var data: [JSONB] = []
        var metadata: [JSONB] = []
    }

    static func batchArguments(_ requests: [AppendRequest]) throws -> BatchArguments {
        var arguments = BatchArguments()
        for request in requests {
            arguments.tenants.append(request.tenant.rawValue)
            arguments.streams.append(request.stream.description)
            arguments.expected.append(request.expectedVersion.sqlValue)
            arguments.counts.append(Int32(request.events.count))
            for event in request.events {
                arguments.ids.append(event.eventId)
                arguments.types.append(event.type)
                arguments.data.append(JSONB(event.data))
                arguments.metadata.append(JSONB(try JSONWriter.metadata(event.metadata)))
            }
        }
        guard arguments.ids.count <= maxEventsPerCall else {
            throw EventStoreError(code: .invalidArgument, message: "one call appends at most \(maxEventsPerCall) events")
        }
        return arguments
    }

    private func appendSealed(_ requests: [AppendRequest]) async throws -> [Result<AppendResult, EventStoreError>] {
        let arguments = try Self.batchArguments(requests)
        let start = ContinuousClock.now
        if Self.fitsBatch(requests), let results = try await batchAppend(requests, arguments) {
            appendDuration.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
            return results
        }
        let results = try await appendByFunction(requests, arguments)
        appendDuration.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
        return results
    }

    /// A key stored by another writer first, or a deadlock, undid a call that was to store new keys: nothing
    /// of it was written.
    private struct NewKeysLost: Error {}

    /// The appends through `convo_append_many`, which takes every shape of append and waits for the streams'
    /// append locks; with `newKeys`, through `convo_append_many_keyed`, which stores them in the same
    /// transaction.
    ///
    /// - Throws: ``NewKeysLost`` when `newKeys` could not all be stored, or a deadlock undid the call.
    private func appendByFunction(
        _ requests: [AppendRequest], _ arguments: BatchArguments, newKeys: [PersonalDataVault.NewKey] = []
    ) async throws -> [Result<AppendResult, EventStoreError>] {
        let (tenants, streams, expected, counts) = (arguments.tenants, arguments.streams, arguments.expected, arguments.counts)
        let (ids, types, data, metadata) = (arguments.ids, arguments.types, arguments.data, arguments.metadata)
        let query: PostgresQuery
        if newKeys.isEmpty {
            query = """
                SELECT item, event_id, stream_version, global_position, recorded_at, duplicate, error, actual
                FROM convo_append_many(\(tenants), \(streams), \(expected), \(counts), \(ids), \(types), \(data), \(metadata))
                """
        } else {
            let (keyTenants, keySubjects, keyGenerations) = (newKeys.map(\.id.tenant), newKeys.map(\.id.subject), newKeys.map { Int64($0.generation) })
            let (keyMasters, keysWrapped) = (newKeys.map(\.masterKeyId), newKeys.map(\.wrapped))
            query = """
                SELECT item, event_id, stream_version, global_position, recorded_at, duplicate, error, actual
                FROM convo_append_many_keyed(\(keyTenants), \(keySubjects), \(keyGenerations), \(keyMasters), \(keysWrapped),
                    \(tenants), \(streams), \(expected), \(counts), \(ids), \(types), \(data), \(metadata))
                """
        }
        var attempt = 0
        while true {
            attempt += 1
            let sending = SendMarker()
            do {
                let rows = try await client.queryOpen(query, logger: logger, sending: sending)
                var recorded = Array(repeating: [AppendResult.Recorded](), count: requests.count)
                var duplicate = Array(repeating: false, count: requests.count)
                var failures: [Int: EventStoreError] = [:]
                for try await (item, id, version, position, at, isDuplicate, error, actual) in rows.decode(
                    (Int32, UUID?, Int64?, Int64?, Date?, Bool, String?, Int64?).self)
                {
                    let index = Int(item) - 1
                    let request = requests[index]
                    switch error {
                    case "wrong_expected_version":
                        conflicts.increment()
                        failures[index] = .wrongExpectedVersion(stream: request.stream, expected: request.expectedVersion, actual: actual ?? -1)
                    case "duplicate_id":
                        failures[index] = EventStoreError(
                            code: .duplicateEventID, message: "an event id of this append is already stored at another place than \(request.stream)",
                            stream: request.stream)
                    default:
                        guard let id, let version, let position, let at else { continue }
                        recorded[index].append(.init(eventId: id, streamVersion: version, globalPosition: position, recordedAt: at))
                        duplicate[index] = isDuplicate
                    }
                }
                var written = 0
                let results = requests.indices.map { index -> Result<AppendResult, EventStoreError> in
                    if let failure = failures[index] { return .failure(failure) }
                    if !duplicate[index] { written += recorded[index].count }
                    return .success(AppendResult(stream: requests[index].stream, events: recorded[index], isDuplicate: duplicate[index]))
                }
                if written > 0 {
                    appendedEvents.increment(by: written)
                    signal.signal()
                    notify.yield()
                }
                return results
            } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" && attempt < 5 {
                // A single append won a version or an id this call read as free; nothing of the call was written.
                continue
            } catch let error as PSQLError where !newKeys.isEmpty && ["CV007", "40P01"].contains(error.serverInfo?[.sqlState]) {
                logger.debug("an append's new data keys were not stored", metadata: ["convo.error": "\(String(reflecting: error))"])
                throw NewKeysLost()
            } catch let error as PSQLError where Self.invalidInputStates.contains(error.serverInfo?[.sqlState] ?? "") {
                throw EventStoreError(code: .invalidArgument, message: error.serverInfo?[.message] ?? "invalid append", cause: error)
            } catch {
                throw Self.mapWriteError(error, sent: sending.isSent, operation: "append to \(requests.count) streams")
            }
        }
    }

    /// The common group commit, every stream once (ingest's batches, a new conversation's pair of events
    /// among single messages, which ``fitsBatch(_:)`` tells), as one prepared INSERT
    /// (``BatchAppendStatement``) instead of `convo_append_many`'s loops, storing `newKeys` (the keys made
    /// for the appends' new visitors) in the same transaction. `nil` when it wrote nothing: a racer took a
    /// stream, a version or an id first, or stored one of the keys first (the appends' events are then
    /// sealed with a key that is not stored), or PostgreSQL broke a deadlock; `convo_append_many` settles the
    /// appends, sealed again where a key lost.
    private func batchAppend(
        _ requests: [AppendRequest], _ arguments: BatchArguments, newKeys: [PersonalDataVault.NewKey] = []
    ) async throws -> [Result<AppendResult, EventStoreError>]? {
        let columns = BatchAppendColumns(arguments: arguments, newKeys: newKeys)
        var recorded = [[AppendResult.Recorded]](repeating: [], count: requests.count)
        var refused = [Int64?](repeating: nil, count: requests.count)
        var retried = Set<Int>()
        var written = 0
        let sending = SendMarker()
        do {
            // One event per append: the statement without the per-event numbering and the recursive step.
            let rows =
                arguments.ids.count == requests.count
                ? try await client.executeOpen(SingleEventBatchStatement(columns: columns), logger: logger, sending: sending)
                : try await client.executeOpen(BatchAppendStatement(columns: columns), logger: logger, sending: sending)
            for (item, id, version, position, at, actual, locked, keyed, storedBefore) in rows {
                // Another append holds one of the streams: nothing was written; convo_append_many waits its turn.
                guard locked else { return nil }
                // Another writer stored a key for one of the visitors first: no event was written.
                guard keyed else { return nil }
                let index = Int(item) - 1
                guard requests.indices.contains(index) else { continue }
                if let id, let version, let position, let at {
                    written += 1
                    recorded[index].append(.init(eventId: id, streamVersion: version, globalPosition: position, recordedAt: at))
                } else if storedBefore {
                    // A retry of a stored append (an id of it is stored), whose expectation its original met:
                    // answered below as convo_append_many answers one, with the stored events.
                    retried.insert(index)
                } else {
                    refused[index] = actual
                }
            }
        } catch let error as PSQLError
            where error.serverInfo?[.sqlState] == "23505"
            && ["events_stream_version_key", "events_event_id_key"].contains(error.serverInfo?[.constraintName])
        {
            // A retry of a stored message (its id), or a racer that took a version first: convo_append_many
            // tells a duplicate from a conflict.
            return nil
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "40P01" {
            // Waiting for another writer's key or event that waited for one of this statement's: PostgreSQL
            // rolled this one back; convo_append_many takes its turn.
            logger.debug("a batch append met a deadlock", metadata: ["convo.error": "\(String(reflecting: error))"])
            return nil
        } catch let error as PSQLError where Self.invalidInputStates.contains(error.serverInfo?[.sqlState] ?? "") {
            throw EventStoreError(code: .invalidArgument, message: error.serverInfo?[.message] ?? "invalid append", cause: error)
        } catch {
            throw Self.mapWriteError(error, sent: sending.isSent, operation: "append to \(requests.count) streams")
        }
        if written > 0 {
            batchStatementEvents.add(written, ordering: .relaxed)
            appendedEvents.increment(by: written)
            signal.signal()
            notify.yield()
        }
        var results = [Result<AppendResult, EventStoreError>?](repeating: nil, count: requests.count)
        for (index, request) in requests.enumerated() where !retried.contains(index) {
            if recorded[index].count == request.events.count {
                results[index] = .success(AppendResult(stream: request.stream, events: recorded[index], isDuplicate: false))
            } else if recorded[index].isEmpty, let actual = refused[index] {
                conflicts.increment()
                results[index] = .failure(.wrongExpectedVersion(stream: request.stream, expected: request.expectedVersion, actual: actual))
            }
        }
        if !retried.isEmpty {
            let places = retried.sorted()
            let again = places.map { requests[$0] }
            for (index, result) in zip(places, try await appendByFunction(again, try Self.batchArguments(again))) { results[index] = result }
        }
        // Every request has its answer, whole: one statement, all of it or none.
        guard results.allSatisfy({ $0 != nil }) else {
            throw EventStoreError(code: .storageFailure, message: "a batch append answered \(results.compactMap { $0 }.count) of \(requests.count) appends")
        }
        return results.map { $0! }
    }
}

/// ``BatchAppendStatement`` for appends of one event each (a batch of returning visitors' messages, the
/// most common): a row per append, no recursive step and no event numbering, about a quarter cheaper for
/// PostgreSQL per event than the general statement.
struct SingleEventBatchStatement: PostgresPreparedStatement {
    static let name = "convo_append_batch_v2"
    static let sql = """
        WITH input AS (
            SELECT u.n, u.t, u.s, u.x, u.id, u.ty, u.d, u.m
            FROM unnest($1::text[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::jsonb[], $7::jsonb[])
                 WITH ORDINALITY AS u (t, s, x, id, ty, d, m, n)
        ), locks AS (
            -- The streams' append locks, as convo_append and convo_append_many take them, but never waited
            -- for: a stream another append holds sends the whole call to convo_append_many, which queues.
            SELECT count(*) FILTER (WHERE pg_try_advisory_xact_lock(1668183670, hashtext(i.t || '/' || i.s))) = count(*) AS held
            FROM input i
        ), keys AS (
            INSERT INTO personal_data_keys (tenant_id, subject, generation, master_key_id, wrapped)
            SELECT k.t, k.s, k.g, k.m, k.w
            FROM unnest($8::text[], $9::text[], $10::bigint[], $11::text[], $12::bytea[]) WITH ORDINALITY AS k (t, s, g, m, w, n), locks l
            WHERE l.held
            ORDER BY k.n
            ON CONFLICT DO NOTHING
            RETURNING 1
        ), keyed AS (
            SELECT count(*) = cardinality($8::text[]) AS stored FROM keys
        ), heads AS (
            SELECT i.*, coalesce(h.version, 0) AS version, coalesce(h.hash, convo_chain_genesis(i.t, i.s)) AS prev
            FROM input i LEFT JOIN LATERAL (
                SELECT e.stream_version AS version, e.hash FROM events e
                WHERE e.tenant_id = i.t AND e.stream_name = i.s
                ORDER BY e.stream_version DESC LIMIT 1
            ) h ON true
        ), accepted AS (
            SELECT h.*, (pg_current_xact_id()::text::bigint << 16) + row_number() OVER (ORDER BY h.n) AS position, now() AS at
            FROM heads h, locks l, keyed k
            WHERE l.held AND k.stored AND CASE WHEN h.x >= 0 THEN h.version = h.x WHEN h.x = -2 THEN h.version > 0 ELSE true END
        ), inserted AS (
            INSERT INTO events (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
            SELECT a.position, a.id, a.t, a.s, a.version + 1, a.ty, a.d, a.m, a.at,
                   convo_event_hash(a.prev, a.position, a.version + 1, a.id, a.at, a.ty, a.d, a.m)
            FROM accepted a
            RETURNING event_id, stream_version, global_position, recorded_at
        )
        SELECT h.n::int, i.event_id, i.stream_version, i.global_position, i.recorded_at, h.version, l.held, k.stored,
               -- Whether an append not written is a retry of a stored one (this statement's own rows are not
               -- seen here): asked only of those.
               CASE WHEN i.event_id IS NULL THEN EXISTS (SELECT 1 FROM events e WHERE e.event_id = h.id) ELSE false END
        FROM heads h CROSS JOIN locks l CROSS JOIN keyed k LEFT JOIN inserted i ON i.event_id = h.id
        ORDER BY h.n
        """
    typealias Row = BatchAppendStatement.Row

    var columns: BatchAppendColumns

    func makeBindings() throws -> PostgresBindings { columns.bindings(numbered: false) }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// Appends to distinct streams, of any number of events each, in one INSERT: each stream's head (one index
/// probe each), the expectations (`$3`: a version, -1 any, -2 the stream exists, 0 no stream), positions
/// from the transaction id as `convo_append_many` gives them, and the hash chain, each event's hash over the
/// one before it in its stream (a recursive step per event of the longest append: two for a new
/// conversation's pair). A row per event (`$4` says which append each belongs to), in order: the stored
/// event, or none and the stream's actual version when the append's expectation was not met; and whether it
/// got every stream's append lock (when not, it wrote nothing).
///
/// It takes the append locks only when they are free, so it neither waits in a cycle nor starves the
/// appends that queue for them. A lock-free exact append racing it for a version makes the later refused by
/// the unique key on the version, and nothing of its statement is written. An event not written whose id is
/// stored (its append a retry of one that was written) is said so in the last column.
///
/// It also stores the data keys made for the appends' new visitors (`$9`–`$13`, sorted by tenant and
/// visitor, as every writer inserts keys), and writes events only when every one of them was stored: when
/// another writer stored a key for the same visitor first, the events (sealed with a key that lost) are not
/// written, and the eighth column says so.
struct BatchAppendStatement: PostgresPreparedStatement {
    static let name = "convo_append_batch_v3"
    static let sql = """
        WITH RECURSIVE appends AS (
            SELECT a.n, a.t, a.s, a.x
            FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS a (t, s, x, n)
        ), input AS (
            SELECT e.item AS n, row_number() OVER (PARTITION BY e.item ORDER BY e.o) AS k, e.id, e.ty, e.d, e.m
            FROM unnest($4::int[], $5::uuid[], $6::text[], $7::jsonb[], $8::jsonb[]) WITH ORDINALITY AS e (item, id, ty, d, m, o)
        ), locks AS (
            -- The streams' append locks, as convo_append and convo_append_many take them, but never waited
            -- for: a stream another append holds sends the whole call to convo_append_many, which queues.
            SELECT count(*) FILTER (WHERE pg_try_advisory_xact_lock(1668183670, hashtext(a.t || '/' || a.s))) = count(*) AS held
            FROM appends a
        ), keys AS (
            INSERT INTO personal_data_keys (tenant_id, subject, generation, master_key_id, wrapped)
            SELECT k.t, k.s, k.g, k.m, k.w
            FROM unnest($9::text[], $10::text[], $11::bigint[], $12::text[], $13::bytea[]) WITH ORDINALITY AS k (t, s, g, m, w, n), locks l
            WHERE l.held
            ORDER BY k.n
            ON CONFLICT DO NOTHING
            RETURNING 1
        ), keyed AS (
            SELECT count(*) = cardinality($9::text[]) AS stored FROM keys
        ), heads AS (
            SELECT a.*, coalesce(h.version, 0) AS version, coalesce(h.hash, convo_chain_genesis(a.t, a.s)) AS prev
            FROM appends a LEFT JOIN LATERAL (
                SELECT e.stream_version AS version, e.hash FROM events e
                WHERE e.tenant_id = a.t AND e.stream_name = a.s
                ORDER BY e.stream_version DESC LIMIT 1
            ) h ON true
        ), accepted AS (
            SELECT h.* FROM heads h, locks l, keyed k
            WHERE l.held AND k.stored AND CASE WHEN h.x >= 0 THEN h.version = h.x WHEN h.x = -2 THEN h.version > 0 ELSE true END
        ), numbered AS (
            SELECT i.n, i.k, i.id, i.ty, i.d, i.m, a.t, a.s, a.version + i.k AS version, a.prev,
                   (pg_current_xact_id()::text::bigint << 16) + row_number() OVER (ORDER BY i.n, i.k) AS position, now() AS at
            FROM input i JOIN accepted a ON a.n = i.n
        ), chain (n, k, hash) AS (
            SELECT b.n, b.k, convo_event_hash(b.prev, b.position, b.version, b.id, b.at, b.ty, b.d, b.m)
            FROM numbered b WHERE b.k = 1
            UNION ALL
            SELECT b.n, b.k, convo_event_hash(c.hash, b.position, b.version, b.id, b.at, b.ty, b.d, b.m)
            FROM chain c JOIN numbered b ON b.n = c.n AND b.k = c.k + 1
        ), inserted AS (
            INSERT INTO events (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
            SELECT b.position, b.id, b.t, b.s, b.version, b.ty, b.d, b.m, b.at, c.hash
            FROM numbered b JOIN chain c ON c.n = b.n AND c.k = b.k
            RETURNING event_id, stream_version, global_position, recorded_at
        )
        SELECT i.n::int, w.event_id, w.stream_version, w.global_position, w.recorded_at, h.version, l.held, k.stored,
               -- Whether an event not written is stored already (its append a retry; this statement's own rows
               -- are not seen here): asked only of those.
               CASE WHEN w.event_id IS NULL THEN EXISTS (SELECT 1 FROM events e WHERE e.event_id = i.id) ELSE false END
        FROM input i JOIN heads h ON h.n = i.n CROSS JOIN locks l CROSS JOIN keyed k LEFT JOIN inserted w ON w.event_id = i.id
        ORDER BY i.n, i.k
        """
    typealias Row = (Int32, UUID?, Int64?, Int64?, Date?, Int64, Bool, Bool, Bool)

    var columns: BatchAppendColumns

    func makeBindings() throws -> PostgresBindings { columns.bindings(numbered: true) }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// What the batch statements are given: the appends' columns, their events', and the new keys'.
struct BatchAppendColumns: Sendable {
    var arguments: PostgresEventStore.BatchArguments
    var newKeys: [PersonalDataVault.NewKey]

    /// In the statements' order; `numbered` adds, after the appends' columns, each event's append (from 1),
    /// which ``BatchAppendStatement`` takes and ``SingleEventBatchStatement`` does not.
    func bindings(numbered: Bool) -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 13)
        bindings.append(arguments.tenants)
        bindings.append(arguments.streams)
        bindings.append(arguments.expected)
        if numbered {
            var items: [Int32] = []
            items.reserveCapacity(arguments.ids.count)
            for (index, count) in arguments.counts.enumerated() { items.append(contentsOf: repeatElement(Int32(index + 1), count: Int(count))) }
            bindings.append(items)
        }
        bindings.append(arguments.ids)
        bindings.append(arguments.types)
        bindings.append(arguments.data)
        bindings.append(arguments.metadata)
        bindings.append(newKeys.map(\.id.tenant))
        bindings.append(newKeys.map(\.id.subject))
        bindings.append(newKeys.map { Int64($0.generation) })
        bindings.append(newKeys.map(\.masterKeyId))
        bindings.append(newKeys.map(\.wrapped))
        return bindings
    }
}
