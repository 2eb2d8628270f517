import ConvoTestSupport
import EventStore
import Foundation
import SharedTypes
import Testing

@testable import convo

@Suite struct ConversationFeedTests {
    private struct Said: DomainEvent {
        static let eventType = "VisitorMessageReceived"
        var text: String
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
                    [try NewEvent(type: Said.eventType, encoding: Said(text: text))], to: conversation.messagesStream, tenant: tenant,
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
                    let listener = feed.listen(tenant: tenant, conversation: conversation)
                    var expected: [Int64] = []
                    for index in 0..<3 { expected.append(try await say("heard \(round).\(index)")) }
                    var received: [Int64] = []
                    let deadline = ContinuousClock.now + .seconds(10)
                    var items = listener.items.makeAsyncIterator()
                    while received.filter({ expected.contains($0) }).count < expected.count, ContinuousClock.now < deadline {
                        guard let item = await items.next() else { break }
                        if case .event(let event) = item { received.append(event.globalPosition) }
                    }
                    feed.remove(listener)
                    #expect(expected.allSatisfy(received.contains), "round \(round), rest \(rest) ms: got \(received), expected \(expected)")
                    #expect(received == received.sorted())
                }
            }
        }
    }
}
