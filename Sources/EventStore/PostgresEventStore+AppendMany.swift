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
        // Personal data sealed first; an append refused there (a forgotten visitor) is answered alone.
        let sealed = try await vault.seal(requests.map { ($0.events, $0.tenant) })
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
        if !accepted.isEmpty {
            for (place, result) in zip(places, try await appendSealed(accepted)) { results[place] = result }
        }
        return results.map { $0! }
    }

    private func appendSealed(_ requests: [AppendRequest]) async throws -> [Result<AppendResult, EventStoreError>] {
        var tenants: [String] = []
        var streams: [String] = []
        var expected: [Int64] = []
        var counts: [Int32] = []
        var ids: [UUID] = []
        var types: [String] = []
        var data: [JSONB] = []
        var metadata: [JSONB] = []
        for request in requests {
            tenants.append(request.tenant.rawValue)
            streams.append(request.stream.description)
            expected.append(request.expectedVersion.sqlValue)
            counts.append(Int32(request.events.count))
            for event in request.events {
                ids.append(event.eventId)
                types.append(event.type)
                data.append(JSONB(event.data))
                metadata.append(JSONB(try JSONWriter.metadata(event.metadata)))
            }
        }
        guard ids.count <= Self.maxEventsPerCall else {
            throw EventStoreError(code: .invalidArgument, message: "one call appends at most \(Self.maxEventsPerCall) events")
        }
        let start = ContinuousClock.now
        if let results = try await batchAppend(requests, tenants: tenants, streams: streams, expected: expected, ids: ids, types: types, data: data, metadata: metadata) {
            appendDuration.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
            return results
        }
        var attempt = 0
        while true {
            attempt += 1
            let sending = SendMarker()
            do {
                let rows = try await client.queryOpen(
                    """
                    SELECT item, event_id, stream_version, global_position, recorded_at, duplicate, error, actual
                    FROM convo_append_many(\(tenants), \(streams), \(expected), \(counts), \(ids), \(types), \(data), \(metadata))
                    """, logger: logger, sending: sending)
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
                appendDuration.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
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
            } catch let error as PSQLError where Self.invalidInputStates.contains(error.serverInfo?[.sqlState] ?? "") {
                throw EventStoreError(code: .invalidArgument, message: error.serverInfo?[.message] ?? "invalid append", cause: error)
            } catch {
                throw Self.mapWriteError(error, sent: sending.isSent, operation: "append to \(requests.count) streams")
            }
        }
    }

    /// The common group commit, one event per append and every stream once (ingest's batches), as one
    /// prepared INSERT (``BatchAppendStatement``) instead of `convo_append_many`'s loops: `nil` when the
    /// requests do not fit it, or when a racer took a version or an id first (nothing was written then),
    /// and `convo_append_many` settles them.
    private func batchAppend(
        _ requests: [AppendRequest], tenants: [String], streams: [String], expected: [Int64], ids: [UUID], types: [String], data: [JSONB], metadata: [JSONB]
    ) async throws -> [Result<AppendResult, EventStoreError>]? {
        guard ids.count == requests.count else { return nil }
        var seen = Set<StreamKey>()
        for request in requests where !seen.insert(StreamKey(tenant: request.tenant, stream: request.stream)).inserted { return nil }
        let statement = BatchAppendStatement(tenants: tenants, streams: streams, expected: expected, ids: ids, types: types, data: data, metadata: metadata)
        var results = [Result<AppendResult, EventStoreError>?](repeating: nil, count: requests.count)
        var written = 0
        let sending = SendMarker()
        do {
            for (item, id, version, position, at, actual, locked) in try await client.executeOpen(statement, logger: logger, sending: sending) {
                // Another append holds one of the streams: nothing was written; convo_append_many waits its turn.
                guard locked else { return nil }
                let index = Int(item) - 1
                guard results.indices.contains(index) else { continue }
                let request = requests[index]
                if let id, let version, let position, let at {
                    written += 1
                    results[index] = .success(
                        AppendResult(stream: request.stream, events: [.init(eventId: id, streamVersion: version, globalPosition: position, recordedAt: at)], isDuplicate: false))
                } else {
                    conflicts.increment()
                    results[index] = .failure(.wrongExpectedVersion(stream: request.stream, expected: request.expectedVersion, actual: actual))
                }
            }
        } catch let error as PSQLError
            where error.serverInfo?[.sqlState] == "23505"
            && ["events_stream_version_key", "events_event_id_key"].contains(error.serverInfo?[.constraintName])
        {
            // A retry of a stored message (its id), or a racer that took a version first: convo_append_many
            // tells a duplicate from a conflict.
            return nil
        } catch let error as PSQLError where Self.invalidInputStates.contains(error.serverInfo?[.sqlState] ?? "") {
            throw EventStoreError(code: .invalidArgument, message: error.serverInfo?[.message] ?? "invalid append", cause: error)
        } catch {
            throw Self.mapWriteError(error, sent: sending.isSent, operation: "append to \(requests.count) streams")
        }
        if written > 0 {
            appendedEvents.increment(by: written)
            signal.signal()
            notify.yield()
        }
        // Every request has its row: one statement, all of it or none.
        guard results.allSatisfy({ $0 != nil }) else {
            throw EventStoreError(code: .storageFailure, message: "a batch append answered \(results.compactMap { $0 }.count) of \(requests.count) appends")
        }
        return results.map { $0! }
    }
}

/// Appends of one event each, to distinct streams, in one INSERT: each stream's head (one index probe each),
/// the expectations (`$3`: a version, -1 any, -2 the stream exists, 0 no stream), positions from the
/// transaction id as `convo_append_many` gives them, and the hash chain. A row per append, in order: the
/// stored event, or none and the stream's actual version when the expectation was not met; and whether it
/// got every stream's append lock (when not, it wrote nothing).
///
/// It takes the append locks only when they are free, so it neither waits in a cycle nor starves the
/// appends that queue for them. A lock-free exact append racing it for a version makes the later refused by
/// the unique key on the version, and nothing of its statement is written.
struct BatchAppendStatement: PostgresPreparedStatement {
    static let name = "convo_append_batch_v1"
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
        ), heads AS (
            SELECT i.*, coalesce(h.version, 0) AS version, coalesce(h.hash, convo_chain_genesis(i.t, i.s)) AS prev
            FROM input i LEFT JOIN LATERAL (
                SELECT e.stream_version AS version, e.hash FROM events e
                WHERE e.tenant_id = i.t AND e.stream_name = i.s
                ORDER BY e.stream_version DESC LIMIT 1
            ) h ON true
        ), accepted AS (
            SELECT h.*, (pg_current_xact_id()::text::bigint << 16) + row_number() OVER (ORDER BY h.n) AS position, now() AS at
            FROM heads h, locks l
            WHERE l.held AND CASE WHEN h.x >= 0 THEN h.version = h.x WHEN h.x = -2 THEN h.version > 0 ELSE true END
        ), inserted AS (
            INSERT INTO events (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
            SELECT a.position, a.id, a.t, a.s, a.version + 1, a.ty, a.d, a.m, a.at,
                   convo_event_hash(a.prev, a.position, a.version + 1, a.id, a.at, a.ty, a.d, a.m)
            FROM accepted a
            RETURNING event_id, stream_version, global_position, recorded_at
        )
        SELECT h.n::int, i.event_id, i.stream_version, i.global_position, i.recorded_at, h.version, l.held
        FROM heads h CROSS JOIN locks l LEFT JOIN inserted i ON i.event_id = h.id
        ORDER BY h.n
        """
    typealias Row = (Int32, UUID?, Int64?, Int64?, Date?, Int64, Bool)

    var tenants: [String]
    var streams: [String]
    var expected: [Int64]
    var ids: [UUID]
    var types: [String]
    var data: [JSONB]
    var metadata: [JSONB]

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 7)
        bindings.append(tenants)
        bindings.append(streams)
        bindings.append(expected)
        bindings.append(ids)
        bindings.append(types)
        bindings.append(data)
        bindings.append(metadata)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row {
        try row.decode(Row.self)
    }
}
