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
        var tenants: [String] = []
        var streams: [String] = []
        var expected: [Int64] = []
        var counts: [Int32] = []
        var ids: [UUID] = []
        var types: [String] = []
        var data: [JSONB] = []
        var metadata: [JSONB] = []
        for request in requests {
            try validate(request.events, expectedVersion: request.expectedVersion)
            tenants.append(request.tenant.rawValue)
            streams.append(request.stream.description)
            expected.append(request.expectedVersion.sqlValue)
            counts.append(Int32(request.events.count))
            for event in request.events {
                ids.append(event.eventId)
                types.append(event.type)
                data.append(JSONB(event.data))
                metadata.append(JSONB(try JSONCoding.encoder.encodeAsByteBuffer(event.metadata, allocator: ByteBufferAllocator())))
            }
        }
        guard ids.count <= Self.maxEventsPerCall else {
            throw EventStoreError(code: .invalidArgument, message: "one call appends at most \(Self.maxEventsPerCall) events")
        }
        let start = ContinuousClock.now
        var attempt = 0
        while true {
            attempt += 1
            do {
                let rows = try await client.query(
                    """
                    SELECT item, event_id, stream_version, global_position, recorded_at, duplicate, error, actual
                    FROM convo_append_many(\(tenants), \(streams), \(expected), \(counts), \(ids), \(types), \(data), \(metadata))
                    """, logger: logger)
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
            } catch let error as PSQLError where ["CV004", "22023", "23514", "22P02"].contains(error.serverInfo?[.sqlState] ?? "") {
                throw EventStoreError(code: .invalidArgument, message: error.serverInfo?[.message] ?? "invalid append", cause: error)
            } catch {
                throw Self.mapError(error, operation: "append to \(requests.count) streams")
            }
        }
    }
}
