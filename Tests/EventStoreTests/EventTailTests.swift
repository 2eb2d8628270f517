import ConvoTestSupport
import Foundation
import SharedTypes
import Synchronization
import Testing

@testable import EventStore

/// The subscriptions to all tenants' events share one read of the latest events (``EventTail``).
@Suite struct EventTailTests {
    /// Followers of all tenants' events, most from the head and one from behind it, while writers append:
    /// each sees every event once, in position order, and the reads are shared. A small tail and pages, so
    /// that it fills, drops its oldest events and leaves the late follower to read on its own for a while.
    @Test(.timeLimit(.minutes(2))) func followersShareTheTailAndEachSeesEveryEventOnceInOrder() async throws {
        let configuration = PostgresEventStore.Configuration(subscriptionPageSize: 20, sharedTailCapacity: 60)
        // A database of its own: the followers read every tenant's events, and the shared one's are every test's.
        try await TestDatabase.withFreshDatabase { url in try await TestDatabase.withStore(url: url, configuration: configuration) { store in
            let tenant = TestDatabase.uniqueTenant()
            let start = try await store.headPosition()
            let (writers, appendsPerWriter) = (8, 30)
            let total = writers * appendsPerWriter
            final class Count: Sendable { let value = Atomic<Int>(0) }
            let stored = Count()
            async let appended: Set<UUID> = withThrowingTaskGroup(of: [UUID].self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        var ids: [UUID] = []
                        for index in 0..<appendsPerWriter {
                            let event = note("\(writer).\(index)")
                            ids.append(event.eventId)
                            try await store.append([event], to: TestDatabase.uniqueStream("tail"), tenant: tenant, expectedVersion: .noStream)
                            stored.value.add(1, ordering: .relaxed)
                        }
                        return ids
                    }
                }
                return try await group.reduce(into: Set<UUID>()) { $0.formUnion($1) }
            }
            let seen = try await withThrowingTaskGroup(of: (ids: [UUID], ordered: Bool).self) { group in
                for follower in 0..<4 {
                    group.addTask {
                        // The last one starts once half the events are stored, from the same position.
                        if follower == 3 { _ = try await eventually(timeout: .seconds(60)) { stored.value.load(ordering: .relaxed) >= total / 2 } }
                        var ids: [UUID] = []
                        var last = start
                        var ordered = true
                        var events = store.subscribe(.allTenants, after: start).makeAsyncIterator()
                        let deadline = ContinuousClock.now + .seconds(60)
                        while ids.count < total, ContinuousClock.now < deadline, let batch = try await events.nextBatch() {
                            for event in batch {
                                ordered = ordered && event.globalPosition > last
                                last = event.globalPosition
                                if event.tenant == tenant { ids.append(event.eventId) }
                            }
                        }
                        return (ids, ordered)
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let expected = try await appended
            for (ids, ordered) in seen {
                #expect(ids.count == total && Set(ids) == expected && ordered, "\(ids.count) of \(total), ordered: \(ordered)")
            }
            let counts = try #require(store.tailCounts)
            #expect(counts.reads > 0 && counts.served + counts.joined > 0, "\(counts)")
        } }
    }

    /// Followers at the tail's end share one read, and one that is cancelled while it waits stops waiting at
    /// once; the read goes on for the other, and its page is kept for the next follower, who reads nothing.
    @Test(.timeLimit(.minutes(1))) func followersAtTheEndShareOneReadAndACancelledOneStopsWaiting() async throws {
        final class Reads: Sendable {
            let count = Atomic<Int>(0)
            let gate = FirstOutcome<Void>()
        }
        let reads = Reads()
        let page = [1, 2, 3].map(Self.event)
        let tail = EventTail(capacity: 10, pageSize: 5) { after, _ in
            reads.count.add(1, ordering: .relaxed)
            _ = await reads.gate.value()
            return page.filter { $0.globalPosition > after }
        }
        let first = Task { try await tail.events(after: 0, maxCount: 5) }
        #expect(try await eventually(timeout: .seconds(10)) { reads.count.load(ordering: .relaxed) == 1 })
        let second = Task { try await tail.events(after: 0, maxCount: 5) }
        #expect(try await eventually(timeout: .seconds(10)) { tail.counts.joined == 1 })
        let cancelled = Task { try await tail.events(after: 0, maxCount: 5) }
        #expect(try await eventually(timeout: .seconds(10)) { tail.counts.joined == 2 })
        cancelled.cancel()
        // It ends while the read is still held.
        await #expect(throws: CancellationError.self) { _ = try await cancelled.value }
        #expect(reads.count.load(ordering: .relaxed) == 1)
        reads.gate.offer(.success(()))
        #expect(try await first.value.map(\.globalPosition) == [1, 2, 3])
        #expect(try await second.value.map(\.globalPosition) == [1, 2, 3])
        // Kept: a follower behind the end is served from memory.
        #expect(try await tail.events(after: 1, maxCount: 5).map(\.globalPosition) == [2, 3])
        #expect(reads.count.load(ordering: .relaxed) == 1 && tail.counts.served == 1)
    }

    static func event(_ position: Int) -> RecordedEvent {
        RecordedEvent(
            globalPosition: Int64(position), eventId: UUID(), tenant: TenantID(rawValue: "t1")!, stream: StreamName(unchecked: "s-1"), streamVersion: 1,
            type: "NoteTaken", data: .init(string: "{}"), metadataJSON: .init(string: "{}"), recordedAt: Date())
    }

    /// A page of the tail: the events after a position, at most a count, whatever the position.
    @Test func aSliceStartsAfterThePositionAndHoldsAtMostTheCount() throws {
        let events = [3, 5, 8, 13].map(Self.event)
        func positions(after position: Int64, _ count: Int) -> [Int64] { EventTail.slice(events, after: position, maxCount: count).map(\.globalPosition) }
        #expect(positions(after: 0, 10) == [3, 5, 8, 13])
        #expect(positions(after: 3, 10) == [5, 8, 13])
        #expect(positions(after: 4, 2) == [5, 8])
        #expect(positions(after: 8, 10) == [13])
        #expect(positions(after: 13, 10) == [])
    }
}
