import CHiredis
import Synchronization

/// Redis for convo: a small pool of hiredis connections to one server, to Sentinel's current primary, or to
/// the nodes of a Redis Cluster (see ``RedisTopology``). Commands are spread round-robin; each connection
/// runs its commands one at a time on its own queue.
///
/// There is no Swift Redis client on this machine's package mirror, so Sentinel discovery and Cluster
/// routing (slots, `MOVED`, `ASK`) are written here, over Debian's hiredis.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    private let backend: Backend
    private let nextConnection = Atomic<Int>(0)

    private enum Backend: Sendable {
        case pool([RedisConnection], SentinelResolver?)
        case cluster(ClusterRouter)
    }

    public init(configuration: RedisConfiguration) {
        self.configuration = configuration
        let count = max(1, configuration.connections)
        switch configuration.topology {
        case .standalone:
            backend = .pool((0..<count).map { RedisConnection(configuration: configuration, index: $0) }, nil)
        case .sentinel(let sentinels, let name):
            let resolver = SentinelResolver(sentinels: sentinels, primaryName: name, timeout: configuration.timeout)
            backend = .pool((0..<count).map { RedisConnection(configuration: configuration, index: $0, endpoint: { try resolver.primary() }) }, resolver)
        case .cluster(let seeds):
            backend = .cluster(ClusterRouter(configuration: configuration, seeds: seeds))
        }
    }

    /// Sends a command and returns Redis' reply; an error reply is returned, not thrown.
    ///
    /// With Sentinel, a write refused by a primary that has become a replica (`READONLY`: nothing was
    /// written) is sent once more, to the primary Sentinel names now; a broken connection makes the next
    /// command ask Sentinel again. In a cluster, the command goes to the node serving its key's slot.
    ///
    /// - Throws: ``ResponderError`` with ``ResponderError/Code/redisUnavailable`` when Redis cannot be reached.
    public func send(_ arguments: [[UInt8]]) async throws -> RedisReply {
        switch backend {
        case .cluster(let router):
            return try await router.send(arguments)
        case .pool(let connections, let resolver):
            let index = nextConnection.wrappingAdd(1, ordering: .relaxed).oldValue
            let connection = connections[index % connections.count]
            do {
                let reply = try await connection.send(arguments)
                guard let resolver, case .error(let message) = reply, message.hasPrefix("READONLY") else { return reply }
                resolver.failedOver()
                for other in connections { other.reset() }
                return try await connection.send(arguments)
            } catch {
                resolver?.failedOver()
                throw error
            }
        }
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

    /// Whether Redis answers `PING` (in a cluster, a node that serves slots; with Sentinel, the primary).
    public func ping() async throws {
        let reply = try await execute(["PING"])
        guard reply.text == "PONG" else { throw ResponderError(code: .redisCommandFailed, message: "PING was not answered with PONG") }
    }

    /// The endpoint Sentinel names as primary (Sentinel only; `nil` otherwise or before the first command).
    public var currentPrimary: RedisEndpoint? {
        if case .pool(_, let resolver?) = backend { return resolver.known }
        return nil
    }
}

/// Finds a Sentinel-managed primary: asks each Sentinel in turn for `get-master-addr-by-name`, and keeps
/// the answer until a connection to it breaks or it refuses a write as a replica.
final class SentinelResolver: Sendable {
    let sentinels: [RedisEndpoint]
    let primaryName: String
    let timeout: Duration
    private let current = Mutex<RedisEndpoint?>(nil)

    init(sentinels: [RedisEndpoint], primaryName: String, timeout: Duration) {
        self.sentinels = sentinels
        self.primaryName = primaryName
        self.timeout = timeout
    }

    var known: RedisEndpoint? { current.withLock { $0 } }

    /// Forgets the primary: the next connection asks Sentinel.
    func failedOver() { current.withLock { $0 = nil } }

    /// The primary; asks Sentinel when it is not known. Blocks: called on a connection's queue.
    func primary() throws -> RedisEndpoint {
        if let known { return known }
        var reasons: [String] = []
        for sentinel in sentinels {
            do {
                let found = try ask(sentinel)
                current.withLock { $0 = found }
                return found
            } catch {
                reasons.append("\(sentinel): \(error)")
            }
        }
        throw ResponderError(code: .redisUnavailable, message: "no Sentinel named the primary '\(primaryName)' (\(reasons.joined(separator: "; ")))")
    }

    private func ask(_ sentinel: RedisEndpoint) throws -> RedisEndpoint {
        let time = RedisConnection.timeval(timeout)
        guard let context = redisConnectWithTimeout(sentinel.host, Int32(sentinel.port), time) else {
            throw ResponderError(code: .redisUnavailable, message: "could not allocate a connection")
        }
        defer { redisFree(context) }
        guard context.pointee.err == 0 else { throw ResponderError(code: .redisUnavailable, message: RedisConnection.errorString(context)) }
        _ = redisSetTimeout(context, time)
        let reply = RedisConnection.command(context, ["SENTINEL", "get-master-addr-by-name", primaryName].map { Array($0.utf8) })
        guard case .array(let parts)? = reply, parts.count == 2, let host = parts[0].text, let port = parts[1].text.flatMap({ Int($0) }) else {
            throw ResponderError(code: .redisUnavailable, message: "does not know '\(primaryName)'")
        }
        return RedisEndpoint(host: host, port: port)
    }
}

/// Routes commands to the nodes of a Redis Cluster by their key's slot (CRC16 of the key, or of its
/// `{hash tag}`, modulo 16384), learning the slot map from `CLUSTER SLOTS`, following `MOVED` (the slot
/// moved: the map is read again) and `ASK` (the slot is being migrated: `ASKING` then the command, on the
/// node named), and reading the map again after a node fails.
final class ClusterRouter: Sendable {
    static let slotCount = 16384
    static let maxRedirections = 5
    static let maxWaits = 6

    let configuration: RedisConfiguration
    let seeds: [RedisEndpoint]

    private struct State {
        /// Each slot's node, as an index into `nodes` (-1: not known).
        var slots = [Int16](repeating: -1, count: ClusterRouter.slotCount)
        var nodes: [RedisEndpoint] = []
        var pools: [[RedisConnection]] = []
        var next = 0
        var stale = true
        var nextIndex = 0

        mutating func node(_ endpoint: RedisEndpoint, configuration: RedisConfiguration) -> Int {
            if let index = nodes.firstIndex(of: endpoint) { return index }
            nodes.append(endpoint)
            pools.append(
                (0..<max(1, configuration.connections)).map { _ in
                    nextIndex += 1
                    return RedisConnection(configuration: configuration, node: endpoint, index: nextIndex)
                })
            return nodes.count - 1
        }

        mutating func connection(_ node: Int) -> RedisConnection {
            next &+= 1
            return pools[node][next % pools[node].count]
        }
    }

    private let state = Mutex(State())

    init(configuration: RedisConfiguration, seeds: [RedisEndpoint]) {
        self.configuration = configuration
        self.seeds = seeds
    }

    func send(_ arguments: [[UInt8]]) async throws -> RedisReply {
        let slot = Self.key(of: arguments).map(Self.slot)
        // One lock: the slot's node and one of its connections, unless the map must be read first.
        let route = state.withLock { state -> (RedisConnection, RedisEndpoint)? in
            guard !state.stale, let known = Self.node(of: slot, in: state) else { return nil }
            return (state.connection(known), state.nodes[known])
        }
        var target: RedisEndpoint
        var preferred: RedisConnection?
        if let route {
            (preferred, target) = route
        } else {
            try? await refresh()
            target = state.withLock { state in Self.node(of: slot, in: state).map { state.nodes[$0] } } ?? seeds[0]
        }
        var asking = false
        var replies: [String] = []
        var redirections = 0
        var waits = 0
        while redirections < Self.maxRedirections {
            let connection = preferred ?? connection(to: target)
            preferred = nil
            let reply: RedisReply
            do {
                reply = asking ? try await connection.sendMany([[Array("ASKING".utf8)], arguments])[1] : try await connection.send(arguments)
            } catch {
                // The node may have failed over: read the map again before the next command.
                state.withLock { $0.stale = true }
                throw error
            }
            guard case .error(let message) = reply else { return reply }
            replies.append(message)
            if message.hasPrefix("MOVED "), let (movedSlot, endpoint) = Self.redirection(message, from: target) {
                state.withLock { state in state.slots[movedSlot] = Int16(state.node(endpoint, configuration: configuration)) }
                try? await refresh()
                target = endpoint
                asking = false
                redirections += 1
            } else if message.hasPrefix("ASK "), let (_, endpoint) = Self.redirection(message, from: target) {
                target = endpoint
                asking = true
                redirections += 1
            } else if message.hasPrefix("TRYAGAIN"), waits < Self.maxWaits {
                // A script over keys of a slot being migrated, some moved and some not: the migration of a
                // slot's keys takes moments. 20 ms, doubling: 1.3 s in all.
                try await Task.sleep(for: .milliseconds(20 << waits))
                waits += 1
            } else if message.hasPrefix("CLUSTERDOWN") {
                state.withLock { $0.stale = true }
                throw ResponderError(code: .redisUnavailable, message: "the Redis Cluster is down: \(message)")
            } else {
                return reply
            }
        }
        throw ResponderError(
            code: .redisUnavailable, message: "too many Redis Cluster redirections for one command (the last to \(target)\(asking ? ", asking" : ""): \(replies.joined(separator: "; ")))")
    }

    private func connection(to node: RedisEndpoint) -> RedisConnection {
        state.withLock { state in state.connection(state.node(node, configuration: configuration)) }
    }

    /// Reads the slot map from the first node that answers (known nodes, then the seeds).
    func refresh() async throws {
        let candidates = state.withLock { state in state.nodes } + seeds
        var lastError: (any Error)?
        for node in candidates {
            do {
                let reply = try await connection(to: node).send([Array("CLUSTER".utf8), Array("SLOTS".utf8)])
                guard case .array(let ranges) = reply else { throw ResponderError(code: .redisCommandFailed, message: "CLUSTER SLOTS: \(reply)") }
                var owners: [(ClosedRange<Int>, RedisEndpoint)] = []
                for range in ranges {
                    guard case .array(let fields) = range, fields.count >= 3, let low = fields[0].integer, let high = fields[1].integer,
                        case .array(let primary) = fields[2], primary.count >= 2, let port = primary[1].integer
                    else { continue }
                    let host = primary[0].text.flatMap { $0.isEmpty ? nil : $0 } ?? node.host
                    let endpoint = RedisEndpoint(host: host, port: Int(port))
                    guard low <= high, high < Self.slotCount else { continue }
                    owners.append((Int(low)...Int(high), endpoint))
                }
                state.withLock { state in
                    var slots = [Int16](repeating: -1, count: Self.slotCount)
                    for (range, endpoint) in owners {
                        let index = Int16(state.node(endpoint, configuration: configuration))
                        for slot in range { slots[slot] = index }
                    }
                    state.slots = slots
                    state.stale = false
                }
                return
            } catch {
                lastError = error
            }
        }
        throw lastError ?? ResponderError(code: .redisUnavailable, message: "no Redis Cluster node answered")
    }

    /// `MOVED 3999 127.0.0.1:6381` → the slot and the node (an empty host is the replying node's).
    static func redirection(_ message: String, from node: RedisEndpoint) -> (Int, RedisEndpoint)? {
        let parts = message.split(separator: " ")
        guard parts.count == 3, let slot = Int(parts[1]), (0..<slotCount).contains(slot) else { return nil }
        let address = parts[2].hasPrefix(":") ? Substring(node.host) + parts[2] : parts[2]
        return RedisEndpoint(address, defaultPort: node.port).map { (slot, $0) }
    }

    /// The key a command's slot is taken from: the first key (`EVAL`'s first after the key count).
    static func key(of arguments: [[UInt8]]) -> [UInt8]? {
        guard let first = arguments.first else { return nil }
        if matches(first, "EVAL") || matches(first, "EVALSHA") {
            guard arguments.count > 3, let count = Int(String(decoding: arguments[2], as: UTF8.self)), count > 0 else { return nil }
            return arguments[3]
        }
        let keyless: [StaticString] = ["PING", "INFO", "CLUSTER", "ASKING", "ROLE", "CONFIG", "DBSIZE", "FLUSHALL", "TIME"]
        for name in keyless where matches(first, name) { return nil }
        return arguments.count > 1 ? arguments[1] : nil
    }

    /// The node serving `slot` (any node serving slots for a keyless command); `nil` when not known.
    private static func node(of slot: Int?, in state: State) -> Int? {
        let index: Int16
        if let slot {
            index = state.slots[slot]
        } else {
            index = state.slots.first { $0 >= 0 } ?? -1
        }
        return index >= 0 ? Int(index) : nil
    }

    /// Whether a command name is `name`, ignoring ASCII case, without making a string of it.
    private static func matches(_ bytes: [UInt8], _ name: StaticString) -> Bool {
        guard bytes.count == name.utf8CodeUnitCount else { return false }
        let expected = UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        for (byte, wanted) in zip(bytes, expected) where byte & 0xDF != wanted { return false }
        return true
    }

    /// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the first `{` and the
    /// next `}`, when not empty) or of the whole key, modulo 16384.
    static func slot(_ key: [UInt8]) -> Int {
        var hashed = key[...]
        if let open = key.firstIndex(of: UInt8(ascii: "{")),
            let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
        {
            hashed = key[(open + 1)..<close]
        }
        var crc: UInt16 = 0
        for byte in hashed { crc = (crc << 8) ^ crcTable[Int(UInt8(crc >> 8) ^ byte)] }
        return Int(crc) % slotCount
    }

    /// CRC16-CCITT (XMODEM, polynomial 0x1021), by byte.
    private static let crcTable: [UInt16] = (0..<256).map { value in
        var crc = UInt16(value) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}
