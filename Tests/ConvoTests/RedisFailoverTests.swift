import ConvoTestSupport
import Foundation
import Testing

/// Redis failing over under load, with real `convo serve` processes, a primary, a replica and three
/// Sentinels of the test's own: once asked of Sentinel (`SENTINEL FAILOVER`), once by killing the
/// primary.
extension ProcessHeavyTests {
@Suite(.serialized, .timeLimit(.minutes(5))) struct RedisFailoverTests {
    @Test func sentinelFailoversUnderLoadLoseNothingAnswerNothingTwiceAndProcessingGoesOn() async throws {
        let redis = try await RedisSentinelSet()
        let fleet = try await FaultFleet(environment: ["CONVO_REDIS_URL": redis.url])
        let options = ["--request-timeout", "5", "--sweep-seconds", "3"]
        let servers = [try await fleet.serve(options), try await fleet.serve(options)]
        for server in servers { #expect(try await eventually(timeout: .seconds(60)) { await fleet.get(server, "/readyz").status == 200 }) }
        let load = MessageLoad(conversations: 20, prefix: "sf")
        let running = Task { await load.run(fleet: fleet, servers: servers, workers: 6, limit: .seconds(150), pause: .milliseconds(50)) }
        #expect(try await eventually(timeout: .seconds(30)) { load.recorded.count >= 40 })

        /// A message posted now to a conversation of its own is processed within `seconds`.
        func processedSoon(_ conversation: String, within seconds: Int) async throws -> Bool {
            let posted = await fleet.post(servers[0], conversation: conversation, visitor: "v-\(conversation)", messageId: "probe")
            guard posted.status == 202 else { return false }
            return try await eventually(timeout: .seconds(Int64(seconds))) { try await fleet.allProcessed([conversation]).done }
        }

        // 1. A failover asked of Sentinel: the old primary is made a replica.
        _ = try await redis.sentinels[0].cli(["sentinel", "failover", redis.name])
        #expect(try await eventually(timeout: .seconds(30)) { try await redis.currentPrimaryPort() == redis.replica.port })
        #expect(try await processedSoon("sf-probe-1", within: 20), "\(servers[0].failureSummary)")

        // 2. The primary (the former replica) is killed: Sentinel promotes the other.
        #expect(try await eventually(timeout: .seconds(30)) { (try? await redis.primary.cli(["info", "replication"]))?.contains("master_link_status:up") == true })
        try await redis.replica.crash()
        #expect(try await eventually(timeout: .seconds(30)) { try await redis.currentPrimaryPort() == redis.primary.port })
        #expect(try await processedSoon("sf-probe-2", within: 30), "\(servers[0].failureSummary)")

        load.stop()
        await running.value
        let answers = load.recorded
        let conversations = load.conversations + ["sf-probe-1", "sf-probe-2"]
        // Ingest never needed Redis: every message was accepted and stored once.
        #expect(answers.allSatisfy { $0.status == 202 }, "\(answers.filter { $0.status != 202 }.prefix(3).map { "\($0.status) \($0.body)" })")
        let stored = try await fleet.storedMessageIds(load.conversations)
        for answer in answers {
            #expect(stored[answer.conversation]?.filter { $0 == answer.messageId }.count == 1, "\(answer.conversation) \(answer.messageId)")
        }
        // Every message processed, none answered twice (a lock granted twice meets the version check).
        var result = (done: false, answeredTwice: [String]())
        #expect(try await eventually(timeout: .seconds(60)) {
            result = try await fleet.allProcessed(conversations)
            return result.done
        }, "\(servers.map(\.failureSummary))")
        #expect(result.answeredTwice.isEmpty, "\(result.answeredTwice)")
        for server in servers { #expect(try await server.stop(timeout: .seconds(40)) == 0, "\(server.failureSummary)") }
        try await redis.stop()
    }
}
}
