import SharedTypes

/// An append-only store of events, grouped in streams, each owned by a tenant.
///
/// Every append names the version it expects the stream to be at; a stale expectation fails with
/// ``EventStoreError/Code/wrongExpectedVersion`` and writes nothing. Events are never changed or removed.
public protocol EventStore: Sendable {
    /// Appends `events` to `stream`, all or none.
    ///
    /// Appending again events whose ids are already stored at the same place, in the same order, writes
    /// nothing and returns the original result with ``AppendResult/isDuplicate`` set.
    /// - Throws: ``EventStoreError`` with ``EventStoreError/Code/wrongExpectedVersion`` when the stream is not at
    ///   `expectedVersion`, ``EventStoreError/Code/duplicateEventID`` when an id is stored elsewhere.
    @discardableResult
    func append(_ events: [NewEvent], to stream: StreamName, tenant: TenantID, expectedVersion: ExpectedVersion) async throws -> AppendResult

    /// Reads up to `maxCount` events of a stream, from `fromVersion` (inclusive) forward.
    func readStream(_ stream: StreamName, tenant: TenantID, fromVersion: Int64, maxCount: Int) async throws -> [RecordedEvent]

    /// Every event of each of several streams of one tenant from its own version to its end, in stream
    /// order, one array per stream in the order asked; the streams are distinct.
    func readStreamsToEnd(_ reads: [(stream: StreamName, fromVersion: Int64)], tenant: TenantID) async throws -> [[RecordedEvent]]

    /// Reads up to `maxCount` events of every stream of a category, after a global position.
    func readCategory(_ category: String, tenant: TenantID, after position: Int64, maxCount: Int) async throws -> [RecordedEvent]

    /// Reads up to `maxCount` events after a global position, in position order, never skipping an event that
    /// commits late with a lower position.
    func readAll(_ scope: TenantScope, after position: Int64, maxCount: Int) async throws -> [RecordedEvent]

    /// The version of a stream's last event; `0` when the stream has none.
    func streamVersion(_ stream: StreamName, tenant: TenantID) async throws -> Int64

    /// The highest global position ``readAll(_:after:maxCount:)`` can hand out now.
    func headPosition(_ scope: TenantScope) async throws -> Int64

    /// Events after `position`, as they commit: a sequence that ends only when its task is cancelled.
    func subscribe(_ scope: TenantScope, after position: Int64) -> EventSubscription
}

extension EventStore {
    /// Every event of a stream from `fromVersion` to its end, read in pages of `pageSize`.
    public func readStreamToEnd(_ stream: StreamName, tenant: TenantID, fromVersion: Int64 = 1, pageSize: Int = 1000) async throws -> [RecordedEvent] {
        var events: [RecordedEvent] = []
        var next = fromVersion
        while true {
            let page = try await readStream(stream, tenant: tenant, fromVersion: next, maxCount: pageSize)
            events += page
            guard page.count == pageSize, let last = page.last else { return events }
            next = last.streamVersion + 1
        }
    }
}
