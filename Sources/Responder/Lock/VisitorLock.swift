import Foundation
import Logging
import Metrics
import SharedTypes

/// The per-visitor Redis lock: one worker advances a visitor at a time.
///
/// `SET visitorLock:{tenant}:{visitor} token NX PX ttl` takes it; a Lua compare-and-delete releases it and a
/// Lua compare-and-`PEXPIRE` renews it, so a worker never frees or extends a lock it no longer holds. The
/// lock saves work; correctness comes from the event store's expected-version check, which fences out a
/// worker whose lock expired.
public struct VisitorLock: Sendable {
    /// A held lock: its key and the random token that proves it is ours.
    public struct Lease: Sendable, Hashable {
        public let key: String
        public let token: String
        public let ttl: Duration

        public init(key: String, token: String, ttl: Duration) {
            self.key = key
            self.token = token
            self.ttl = ttl
        }
    }

    public let redis: RedisClient
    /// How long a lock lives without renewal. Default: 30 seconds.
    public let ttl: Duration

    private static let releaseScript = """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end
        """
    private static let renewScript = """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end
        """

    private let acquired = Counter(label: "convo.lock.acquired")
    private let busy = Counter(label: "convo.lock.busy")

    public init(redis: RedisClient, ttl: Duration = .seconds(30)) {
        self.redis = redis
        self.ttl = ttl
    }

    /// The Redis key of a visitor's lock.
    public static func key(tenant: TenantID, visitor: VisitorUID) -> String {
        "visitorLock:\(tenant.rawValue):\(visitor.rawValue)"
    }

    /// Takes the visitor's lock; `nil` at once when another worker holds it.
    ///
    /// - Throws: ``ResponderError`` when Redis cannot be reached or refuses the command.
    public func acquire(tenant: TenantID, visitor: VisitorUID) async throws -> Lease? {
        try await acquire(key: Self.key(tenant: tenant, visitor: visitor))
    }

    /// Takes a lock by key; `nil` when it is held.
    public func acquire(key: String) async throws -> Lease? {
        let token = UUID().uuidString.lowercased()
        let reply = try await redis.execute(["SET", key, token, "NX", "PX", String(ttl.milliseconds)])
        guard reply != .null else {
            busy.increment()
            return nil
        }
        acquired.increment()
        return Lease(key: key, token: token, ttl: ttl)
    }

    /// Releases the lock if it is still ours; `false` when it had expired or another worker holds it now.
    ///
    /// - Throws: ``ResponderError`` when Redis cannot be reached.
    @discardableResult
    public func release(_ lease: Lease) async throws -> Bool {
        let reply = try await redis.execute(["EVAL", Self.releaseScript, "1", lease.key, lease.token])
        return reply.integer == 1
    }

    /// Extends the lock by its ttl if it is still ours; `false` when it was lost.
    ///
    /// - Throws: ``ResponderError`` when Redis cannot be reached.
    public func renew(_ lease: Lease) async throws -> Bool {
        let reply = try await redis.execute(["EVAL", Self.renewScript, "1", lease.key, lease.token, String(lease.ttl.milliseconds)])
        return reply.integer == 1
    }
}

extension Duration {
    /// Whole milliseconds, at least 1.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }
}
