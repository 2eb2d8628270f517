import AsyncAlgorithms
import EventStore

extension PostgresEventStore {
    /// ``PostgresEventStore/scanAll(after:batchSize:_:)`` with the payloads decoded, three batches deep: a
    /// child task reads the next batch from PostgreSQL while the one before it is decoded (on child tasks,
    /// in slices) and the one before that is handed to `body`. Reading, decoding and folding each take a
    /// good share of a rebuild, and one after the other they would leave all but one core idle.
    ///
    /// Batches reach `body` in position order, one at a time, as `scanAll` hands them out.
    /// - Throws: what the scan or `body` throws; the scan stops when `body` throws.
    /// - Parameter opening: the sealed personal members to open (what the folds read).
    func scanProjected(
        after position: Int64, batchSize: Int, opening: PersonalDataOpening = .all, _ body: ([ProjectedEvent]) async throws -> Void
    ) async throws {
        let batches = AsyncThrowingChannel<[RecordedEvent], any Error>()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await self.scanAll(after: position, batchSize: batchSize, opening: opening) { batch in
                        await batches.send(batch)
                        // A consumer that stopped cancels this task; `send` then returns without waiting.
                        try Task.checkCancellation()
                    }
                    batches.finish()
                } catch {
                    batches.fail(error)
                }
            }
            var decoded: [ProjectedEvent] = []
            for try await batch in batches {
                async let next = ProjectedEvent.decode(batch, parts: 2)
                if !decoded.isEmpty { try await body(decoded) }
                decoded = await next
            }
            if !decoded.isEmpty { try await body(decoded) }
        }
    }
}
