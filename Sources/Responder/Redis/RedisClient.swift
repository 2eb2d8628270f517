import Synchronization

/// A small pool of hiredis connections. Commands are spread round-robin; each connection runs its
/// commands one at a time on its own queue.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    private let connections: [RedisConnection]
    private let nextConnection = Atomic<Int>(0)

    public init(configuration: RedisConfiguration) {
        self.configuration = configuration
        self.connections = (0..<max(1, configuration.connections)).map { RedisConnection(configuration: configuration, index: $0) }
    }

    /// Sends a command and returns Redis' reply; an error reply is returned, not thrown.
    ///
    /// - Throws: ``ResponderError`` with ``ResponderError/Code/redisUnavailable`` when Redis cannot be reached.
    public func send(_ arguments: [[UInt8]]) async throws -> RedisReply {
        let index = nextConnection.wrappingAdd(1, ordering: .relaxed).oldValue
        return try await connections[index % connections.count].send(arguments)
    }

    /// Sends a command whose arguments are all text.
    public func send(_ arguments: String...) async throws -> RedisReply {
        try await send(arguments.map { Array($0.utf8) })
    }

    /// Sends a command and throws when Redis answers with an error.
    ///
    /// - Throws: ``ResponderError`` with ``ResponderError/Code/redisCommandFailed`` for an error reply.
    @discardableResult
    public func execute(_ arguments: [String]) async throws -> RedisReply {
        let reply = try await send(arguments.map { Array($0.utf8) })
        if case .error(let message) = reply {
            throw ResponderError(code: .redisCommandFailed, message: "\(arguments.first ?? "command") failed: \(message)")
        }
        return reply
    }

    /// Whether Redis answers `PING`.
    public func ping() async throws {
        let reply = try await execute(["PING"])
        guard reply.text == "PONG" else { throw ResponderError(code: .redisCommandFailed, message: "PING was not answered with PONG") }
    }
}
