import ConvoTestSupport
import Foundation
import Testing

/// Redis stopped under load with real `convo serve` processes and a Redis of the test's own.
@Suite(.serialized, .timeLimit(.minutes(5))) struct RedisFaultTests {
    @Test func redisDownTenSecondsLosesNothingAndProcessesEverythingWithNothingArrivingAfterItsReturn() async throws {
        let fleet = try await FaultFleet(ownRedis: true)
        let redis = try #require(fleet.redis)
        let server = try await fleet.serve(["--request-timeout", "5"])
        #expect(try await eventually(timeout: .seconds(60)) { await fleet.get(server, "/readyz").status == 200 })
        let conversations = (0..<10).map { "rd-\($0)" }
        var sent: [(String, String, Int)] = []
        for (index, conversation) in conversations.enumerated() {
            let answer = await fleet.post(server, conversation: conversation, visitor: "v-\(conversation)", messageId: "before-\(index)")
            sent.append((conversation, "before-\(index)", answer.status))
        }
        try await redis.stop()
        let stopped = ContinuousClock.now
        // Ingest goes on without Redis: messages are stored; their processing waits.
        for (index, conversation) in conversations.enumerated() {
            let answer = await fleet.post(server, conversation: conversation, visitor: "v-\(conversation)", messageId: "during-\(index)")
            sent.append((conversation, "during-\(index)", answer.status))
        }
        let readyz = await fleet.get(server, "/readyz")
        #expect(readyz.status == 503 && readyz.body.contains("redis"), "\(readyz.body)")
        let remaining = .seconds(10) - (ContinuousClock.now - stopped)
        if remaining > .zero { try await Task.sleep(for: remaining) }
        try await redis.start()
        // Nothing arrives after Redis is back: the responder's own retries must finish the work.
        var result = (done: false, answeredTwice: [String]())
        let done = try await eventually(timeout: .seconds(90)) {
            result = try await fleet.allProcessed(conversations)
            return result.done
        }
        #expect(done, "\(server.failureSummary)")
        #expect(result.answeredTwice.isEmpty, "\(result.answeredTwice)")
        #expect(sent.allSatisfy { $0.2 == 202 }, "\(sent.filter { $0.2 != 202 })")
        let stored = try await fleet.storedMessageIds(conversations)
        for (conversation, messageId, _) in sent {
            #expect(stored[conversation]?.filter { $0 == messageId }.count == 1, "\(conversation) \(messageId)")
        }
        #expect(try await eventually(timeout: .seconds(20)) { await fleet.get(server, "/readyz").status == 200 })
        #expect(try await server.stop(timeout: .seconds(40)) == 0, "\(server.failureSummary)")
        try await redis.stop()
    }
}
