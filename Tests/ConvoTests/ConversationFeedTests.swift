import ConvoTestSupport
import EventStore
import Foundation
import Synchronization
import SharedTypes
import Testing

@testable import convo

@Suite struct ConversationFeedTests {
    private struct Said: DomainEvent {
        static let eventType = "VisitorMessageReceived"
        var text: String
    }

    /// A stream's place counts from when its request is admitted, before its body registers the listener: a
    /// request right behind it at the limit is refused (it was answered 200 when the count waited for the body).
    /// A place dropped unused is given back; one used is given back once, when its listener is removed.
    @Test func aPlaceCountsFromAdmissionAndIsGivenBackOnce() async throws {
        try await TestDatabase.withStore { store in
            let feed = ConversationFeed(store: store, limits: .init(total: 3, perTenant: 2), logger: TestDatabase.logger)
            let (tenant, other) = (TestDatabase.uniqueTenant(), TestDatabase.uniqueTenant())
            var first: ConversationFeed.Place? = try #require(feed.place(for: tenant))
            let second = try #require(feed.place(for: tenant))
            #expect(feed.place(for: tenant) == nil)
            #expect(feed.listenerCount == 2)
            // A response dropped unwritten: its place goes with it.
            first = nil
            #expect(first == nil && feed.listenerCount == 1)
            let third = try #require(feed.place(for: tenant))
            // Used: registered once, given back once, when removed.
            let listener = try #require(feed.listen(in: second, conversation: nil))
            #expect(feed.listen(in: second, conversation: nil) == nil)
            #expect(feed.listenerCount == 2)
            // The total counts every tenant's places.
            let elsewhere = try #require(feed.place(for: other))
            #expect(feed.place(for: other) == nil)
            feed.remove(listener)
            #expect(feed.listenerCount == 2)
            withExtendedLifetime((second, third, elsewhere)) {}
        }
    }

    /// The feed rests while nobody listens (moving its position to the head) and follows again when someone
    /// does: each listener gets every event of its conversation committed after it registered, whether it
    /// came during a rest, right after one, or while the position was being moved.
    @Test func anIdleFeedWakesForAListenerAndMissesNothingCommittedAfterItRegistered() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let conversation = ConversationID(rawValue: "feed-\(UUID().uuidString.prefix(8).lowercased())")!
            let feed = ConversationFeed(store: store, logger: TestDatabase.logger)
            var version: Int64 = 0
            func say(_ text: String) async throws -> Int64 {
                let appended = try await store.append(
                    [try NewEvent(type: Said.eventType, encoding: Said(text: text), subject: PersonalDataSubject(visitor: VisitorUID(rawValue: "feed-visitor")!, mayCreateKey: true))], to: conversation.messagesStream, tenant: tenant,
                    expectedVersion: .exact(version))
                version = appended.streamVersion
                return appended.lastPosition
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await feed.run() }
                defer { group.cancelAll() }
                // Rests of several lengths: shorter than a check, about one move of the position, several.
                for (round, rest) in [0, 30, 700, 1_100, 1_500, 2_600].enumerated() {
                    // Events nobody listens to, while the feed rests.
                    _ = try await say("unheard \(round)a")
                    try await Task.sleep(for: .milliseconds(rest))
                    _ = try await say("unheard \(round)b")
                    let listener = try #require(feed.place(for: tenant).flatMap { feed.listen(in: $0, conversation: conversation) })
                    var positions: [Int64] = []
                    for index in 0..<3 { positions.append(try await say("heard \(round).\(index)")) }
                    let expected = positions
                    // Readers withhold events behind any open transaction of the cluster (other tests' too),
                    // so the wait is long; a miss says whether the events had become visible.
                    let received = Mutex<[Int64]>([])
                    let reader = Task {
                        for await item in listener.items {
                            if case .event(let event) = item { received.withLock { $0.append(event.globalPosition) } }
                        }
                    }
                    let heard = try await eventually(timeout: .seconds(60)) {
                        received.withLock { got in expected.allSatisfy(got.contains) }
                    }
                    feed.remove(listener)
                    await reader.value
                    let got = received.withLock { $0 }
                    if !heard {
                        let visible = try await store.headPosition()
                        Issue.record("round \(round), rest \(rest) ms: got \(got), expected \(expected); visible head \(visible)")
                    }
                    #expect(got == got.sorted())
                }
            }
        }
    }
}
