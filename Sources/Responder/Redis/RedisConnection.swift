import CHiredis
import Dispatch
import Foundation
import Synchronization

/// One hiredis connection. hiredis blocks and a `redisContext` is not thread-safe, so every call runs on
/// this connection's own serial dispatch queue, never on Swift's cooperative pool, and callers await it.
///
/// `@unchecked Sendable`: `context` is read and written only on `queue`, which runs one block at a time.
final class RedisConnection: @unchecked Sendable {
    private let configuration: RedisConfiguration
    private let queue: DispatchQueue
    private var context: UnsafeMutablePointer<redisContext>?
    /// Where to connect, asked at each (re)connect: fixed, or Sentinel's current primary.
    private let endpoint: @Sendable () throws -> RedisEndpoint

    init(configuration: RedisConfiguration, index: Int, endpoint: (@Sendable () throws -> RedisEndpoint)? = nil) {
        self.configuration = configuration
        self.queue = DispatchQueue(label: "convo.redis.connection.\(index)")
        let fixed = configuration.endpoint
        self.endpoint = endpoint ?? { fixed }
    }

    /// Connects to `endpoint` (a node of a cluster).
    convenience init(configuration: RedisConfiguration, node: RedisEndpoint, index: Int) {
        self.init(configuration: configuration, index: index) { node }
    }

    /// Drops the connection after the commands already queued; the next command connects again (to
    /// wherever `endpoint` then says).
    func reset() {
        queue.async { self.disconnect() }
    }

    /// Sends commands back to back on this connection, in one write (`ASKING` and the command it enables),
    /// returning each reply.
    func sendMany(_ commands: [[[UInt8]]]) async throws -> [RedisReply] {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                continuation.resume(with: Result { try self.pipelineOnQueue(commands).map { try $0.get() } })
            }
        }
    }

    deinit {
        if let context { redisFree(context) }
    }

    /// Sends one command (binary-safe arguments) and returns its reply. A Redis error reply is returned as
    /// ``RedisReply/error(_:)``, not thrown.
    ///
    /// Commands sent while the connection is busy are pipelined: the next round writes all that queued up
    /// meanwhile in one go and then reads their replies in order, so a burst costs one write and a few
    /// reads instead of a round trip each (on both sides: Redis, too, reads them in one go).
    ///
    /// - Throws: ``ResponderError`` with ``ResponderError/Code/redisUnavailable`` when Redis cannot be reached or the
    ///   connection breaks (then every command of the round fails so: one written before the break may have
    ///   run); the next call reconnects.
    func send(_ arguments: [[UInt8]]) async throws -> RedisReply {
        try await withCheckedThrowingContinuation { continuation in
            let startRound = pending.withLock { state -> Bool in
                state.commands.append((arguments, continuation))
                if state.draining { return false }
                state.draining = true
                return true
            }
            if startRound { queue.async { self.drain() } }
        }
    }

    private struct Pending: ~Copyable {
        var commands: [(arguments: [[UInt8]], continuation: CheckedContinuation<RedisReply, any Error>)] = []
        /// Whether a round is scheduled or running on `queue` (it takes what is queued until none is left).
        var draining = false
    }

    private let pending = Mutex(Pending())

    /// At most this many commands are written in one round.
    static let maximumRound = 128

    /// On `queue`: rounds of pipelined commands until none is waiting.
    private func drain() {
        while true {
            let round = pending.withLock { state -> [(arguments: [[UInt8]], continuation: CheckedContinuation<RedisReply, any Error>)] in
                let count = min(state.commands.count, Self.maximumRound)
                if count == 0 {
                    state.draining = false
                    return []
                }
                let round = Array(state.commands.prefix(count))
                state.commands.removeFirst(count)
                return round
            }
            if round.isEmpty { return }
            let replies = pipelineOnQueue(round.map(\.arguments))
            for (command, reply) in zip(round, replies) { command.continuation.resume(with: reply) }
        }
    }

    /// Writes every command, then reads the reply of each in order. A broken connection fails the rest.
    private func pipelineOnQueue(_ commands: [[[UInt8]]]) -> [Result<RedisReply, any Error>] {
        let context: UnsafeMutablePointer<redisContext>
        do { context = try connectedContext() } catch { return commands.map { _ in .failure(error) } }
        var appended = 0
        for arguments in commands {
            guard Self.append(context, arguments) else { break }
            appended += 1
        }
        var results: [Result<RedisReply, any Error>] = []
        results.reserveCapacity(commands.count)
        var broken: ResponderError?
        for _ in 0..<appended {
            var raw: UnsafeMutableRawPointer?
            guard broken == nil, redisGetReply(context, &raw) == REDIS_OK, let raw else {
                if broken == nil {
                    broken = ResponderError(code: .redisUnavailable, message: "the Redis connection broke: \(Self.errorString(context))")
                }
                results.append(.failure(broken!))
                continue
            }
            defer { freeReplyObject(raw) }
            results.append(.success(Self.copyReply(raw.assumingMemoryBound(to: redisReply.self))))
        }
        if appended < commands.count || broken != nil {
            let failure = broken ?? ResponderError(code: .redisUnavailable, message: "the Redis connection broke: \(Self.errorString(context))")
            results += Array(repeating: .failure(failure), count: commands.count - appended)
            disconnect()
        }
        return results
    }

    private func connectedContext() throws -> UnsafeMutablePointer<redisContext> {
        if let context { return context }
        let timeout = Self.timeval(configuration.timeout)
        let target = try endpoint()
        guard let context = redisConnectWithTimeout(target.host, Int32(target.port), timeout) else {
            throw ResponderError(code: .redisUnavailable, message: "could not allocate a Redis connection")
        }
        guard context.pointee.err == 0 else {
            let reason = Self.errorString(context)
            redisFree(context)
            throw ResponderError(code: .redisUnavailable, message: "cannot connect to Redis at \(target): \(reason)")
        }
        _ = redisSetTimeout(context, timeout)
        _ = redisEnableKeepAlive(context)
        self.context = context
        do {
            if let password = configuration.password {
                try expectOK(Self.command(context, [Array("AUTH".utf8), Array(password.utf8)]), what: "AUTH")
            }
            if configuration.database != 0 {
                try expectOK(Self.command(context, [Array("SELECT".utf8), Array(String(configuration.database).utf8)]), what: "SELECT")
            }
        } catch {
            disconnect()
            throw error
        }
        return context
    }

    private func expectOK(_ reply: RedisReply?, what: String) throws {
        switch reply {
        case .status?: return
        case .error(let message)?: throw ResponderError(code: .redisCommandFailed, message: "\(what) failed: \(message)")
        default: throw ResponderError(code: .redisUnavailable, message: "\(what) got no answer")
        }
    }

    private func disconnect() {
        if let context { redisFree(context) }
        context = nil
    }

    /// Queues one command in hiredis' output buffer (written by the next read of a reply).
    static func append(_ context: UnsafeMutablePointer<redisContext>, _ arguments: [[UInt8]]) -> Bool {
        withArgv(arguments) { count, argv, lengths in redisAppendCommandArgv(context, count, argv, lengths) == REDIS_OK }
    }

    /// Calls `body` with C views of `arguments` (argc, argv, lengths), alive until it returns.
    static func withArgv<T>(_ arguments: [[UInt8]], _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, [Int]) -> T) -> T {
        let buffers = arguments.map { bytes -> UnsafeMutablePointer<CChar> in
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(bytes.count, 1))
            bytes.withUnsafeBufferPointer { source in
                source.withMemoryRebound(to: CChar.self) { chars in
                    if let base = chars.baseAddress { buffer.initialize(from: base, count: bytes.count) }
                }
            }
            return buffer
        }
        defer { buffers.forEach { $0.deallocate() } }
        var argv: [UnsafePointer<CChar>?] = buffers.map { UnsafePointer($0) }
        return argv.withUnsafeMutableBufferPointer { body(Int32(arguments.count), $0.baseAddress!, arguments.map { $0.count }) }
    }

    /// One command and its reply (what a connection sends before it is handed out: AUTH, SELECT).
    static func command(_ context: UnsafeMutablePointer<redisContext>, _ arguments: [[UInt8]]) -> RedisReply? {
        guard let raw = withArgv(arguments, { count, argv, lengths in redisCommandArgv(context, count, argv, lengths) }) else { return nil }
        defer { freeReplyObject(raw) }
        return copyReply(raw.assumingMemoryBound(to: redisReply.self))
    }

    static func copyReply(_ reply: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let value = reply.pointee
        switch value.type {
        case REDIS_REPLY_STRING:
            return .string(bytes(value.str, value.len))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(value.integer))
        case REDIS_REPLY_ARRAY:
            return .array((0..<Int(value.elements)).compactMap { index in value.element[index].map(copyReply) })
        default:
            return .null
        }
    }

    private static func bytes(_ pointer: UnsafeMutablePointer<CChar>?, _ count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return pointer.withMemoryRebound(to: UInt8.self, capacity: count) { Array(UnsafeBufferPointer(start: $0, count: count)) }
    }

    static func errorString(_ context: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: context.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    static func timeval(_ duration: Duration) -> Glibc.timeval {
        let (seconds, attoseconds) = duration.components
        return Glibc.timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}
