import ConvoTestSupport
import Foundation
import Responder
import Testing

@Suite struct RedisClientTests {
    @Test func commandsRoundTripBinarySafeValues() async throws {
        let redis = RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL))
        try await redis.ping()
        let key = "convo:test:\(UUID().uuidString)"
        let value: [UInt8] = [0, 1, 2, 0xFF, 0x0A, 0x0D, 0x00, 0x7F]
        #expect(try await redis.send([Array("SET".utf8), Array(key.utf8), value, Array("PX".utf8), Array("10000".utf8)]) == .status("OK"))
        #expect(try await redis.send("GET", key) == .string(value))
        #expect(try await redis.send("GET", key + ":missing") == .null)
        #expect(try await redis.send("DEL", key) == .integer(1))
        #expect(try await redis.send("RPUSH", key, "a", "b") == .integer(2))
        #expect(try await redis.send("LRANGE", key, "0", "-1") == .array([.string(Array("a".utf8)), .string(Array("b".utf8))]))
        _ = try await redis.send("DEL", key)
    }

    @Test func anErrorReplyIsReturnedOrThrownOnRequest() async throws {
        let redis = RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL))
        guard case .error(let message) = try await redis.send("NO-SUCH-COMMAND") else {
            Issue.record("expected an error reply")
            return
        }
        #expect(message.contains("unknown command"))
        let error = try await #require(throws: ResponderError.self) { try await redis.execute(["NO-SUCH-COMMAND"]) }
        #expect(error.code == .redisCommandFailed)
    }

    @Test func manyConcurrentCommandsShareThePool() async throws {
        let redis = RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL, connections: 3))
        let key = "convo:test:\(UUID().uuidString)"
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<500 {
                group.addTask { _ = try await redis.execute(["INCR", key]) }
            }
            try await group.waitForAll()
        }
        #expect(try await redis.send("GET", key).text == "500")
        _ = try await redis.send("DEL", key)
    }

    @Test func anUnreachableRedisFailsClearlyAndQuickly() async throws {
        let redis = RedisClient(configuration: RedisConfiguration(host: "127.0.0.1", port: 1, timeout: .milliseconds(500)))
        let clock = ContinuousClock()
        let start = clock.now
        let error = try await #require(throws: ResponderError.self) { try await redis.ping() }
        #expect(error.code == .redisUnavailable)
        #expect(error.message.contains("127.0.0.1:1"))
        #expect(clock.now - start < .seconds(5))
    }

    @Test func badURLsAreRefused() throws {
        for url in ["http://localhost", "redis://", "redis://host/notanumber", "localhost:6379"] {
            #expect(throws: ResponderError.self, "\(url)") { try RedisConfiguration(url: url) }
        }
        let parsed = try RedisConfiguration(url: "redis://:secret@cache.internal:6380/2")
        #expect(parsed.host == "cache.internal" && parsed.port == 6380 && parsed.database == 2 && parsed.password == "secret")
    }
}
