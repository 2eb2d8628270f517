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

    /// One connection, thousands of commands at once: they are pipelined in rounds, and each caller gets
    /// its own command's reply (a reply handed to the wrong caller would show as a wrong value).
    @Test func pipelinedCommandsEachGetTheirOwnReply() async throws {
        let redis = RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL, connections: 1))
        let prefix = "convo:test:\(UUID().uuidString):"
        let count = 2_000
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<count {
                group.addTask { () async throws -> Void in
                    let key = prefix + "\(index)"
                    #expect(try await redis.send("SET", key, "value-\(index)", "PX", "60000") == .status("OK"))
                    #expect(try await redis.send("GET", key).text == "value-\(index)")
                    _ = try await redis.execute(["INCRBY", prefix + "sum", "\(index)"])
                }
            }
            try await group.waitForAll()
        }
        #expect(try await redis.send("GET", prefix + "sum").text == "\(count * (count - 1) / 2)")
    }

    /// Redis frozen with hundreds of commands written on one pipelined connection and no reply coming:
    /// every caller gets an error within the timeout, none waits for ever or gets another's reply, and the
    /// connection works again once Redis goes on.
    @Test(.timeLimit(.minutes(1))) func aFrozenRedisFailsEveryPipelinedCallerAndTheConnectionRecovers() async throws {
        let server = try await RedisServer()
        let redis = RedisClient(configuration: try RedisConfiguration(url: server.url, connections: 1, timeout: .seconds(1)))
        try await redis.ping()
        server.freeze()
        let clock = ContinuousClock()
        let start = clock.now
        let failures = try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<400 {
                group.addTask { (try? await redis.send("SET", "k\(index)", "\(index)")) == nil }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(failures == 400)
        // Rounds of 128 fail one timeout each, so well within a timeout per round.
        #expect(clock.now - start < .seconds(15))
        server.thaw()
        #expect(try await eventually { (try? await redis.send("SET", "after", "1")) == .status("OK") })
        #expect(try await redis.send("GET", "after").text == "1")
        try await server.stop()
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
