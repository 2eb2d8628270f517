import ConvoTestSupport
import EventStore
import Foundation
import SharedTypes
import Synchronization
import Testing

@testable import Projections

@Suite struct ScanProjectedTests {
    private struct Stop: Error {}

    @Test func thePipelinedScanHandsOutEveryEventOnceInOrderAndStopsWhenTheBodyThrows() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                try await Traffic(store: store).run(turns: 60, conversations: 7)
                // Readers withhold events behind any open transaction of the cluster (other tests' too):
                // both scans below must see the same events.
                #expect(try await settled(store))
                let scanned = Mutex<[RecordedEvent]>([])
                try await store.scanAll(after: 0, batchSize: 1000) { batch in scanned.withLock { $0 += batch } }
                let expected = scanned.withLock { $0 }
                #expect(expected.count > 300)

                // Batches of 7: many more batches than the pipeline is deep.
                var seen: [ProjectedEvent] = []
                var sizes: [Int] = []
                try await store.scanProjected(after: 0, batchSize: 7) { batch in
                    sizes.append(batch.count)
                    seen += batch
                }
                #expect(seen.map(\.recorded) == expected)
                #expect(seen.map(\.payload) == ProjectedEvent.decode(expected).map(\.payload))
                #expect(sizes.dropLast().allSatisfy { $0 == 7 } && (1...7).contains(sizes.last ?? 0))

                // From a position on.
                let middle = expected[expected.count / 2].globalPosition
                var after: [Int64] = []
                try await store.scanProjected(after: middle, batchSize: 5) { after += $0.map(\.globalPosition) }
                #expect(after == expected.map(\.globalPosition).filter { $0 > middle })

                // A body that throws ends the scan with its error, and is not called again.
                let calls = Atomic<Int>(0)
                await #expect(throws: Stop.self) {
                    try await store.scanProjected(after: 0, batchSize: 3) { _ in
                        if calls.add(1, ordering: .relaxed).newValue == 2 { throw Stop() }
                    }
                }
                #expect(calls.load(ordering: .relaxed) == 2)
            }
        }
    }
}
