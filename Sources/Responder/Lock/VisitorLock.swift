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
///
/// With the lock goes the visitor's hand-off set, `visitorPending:{tenant}:{visitor}`: a worker adds its
/// conversation (``markPending(_:conversation:)``) before trying the lock, the holder takes the members
/// (``takePending(_:)``) before letting go, and the release reports how many came in meanwhile, so a
/// worker that found the lock held can return at once without a message waiting for nobody.
public struct VisitorLock: Sendable {
    /// A visitor's lock and hand-off set.
    public struct Visitor: Sendable, Hashable {
        public let lockKey: String
        public let pendingKey: String

        public init(tenant: TenantID, visitor: VisitorUID) {
            lockKey = "visitorLock:\(tenant.rawValue):\(visitor.rawValue)"
            pendingKey = "visitorPending:\(tenant.rawValue):\(visitor.rawValue)"
        }
    }

    /// A held lock: whose it is and the random token that proves it is ours.
    public struct Lease: Sendable, Hashable {
        public let visitor: Visitor
        public let token: String
        public let ttl: Duration
        public var key: String { visitor.lockKey }

        public init(visitor: Visitor, token: String, ttl: Duration) {
            self.visitor = visitor
            self.token = token
            self.ttl = ttl
        }
    }

    /// What a release found.
    public struct Release: Sendable, Equatable {
        /// Whether the lock was still ours (`false`: it had expired, maybe taken by another worker).
        public var wasHeld: Bool
        /// Conversations handed over while it was held and not taken: the caller should go again.
        public var pending: Int

        public init(wasHeld: Bool, pending: Int) {
            self.wasHeld = wasHeld
            self.pending = pending
        }
    }

    public let redis: RedisClient
    /// How long a lock lives without renewal. Default: 30 seconds.
    public let ttl: Duration

    /// Compare-and-delete of the lock, then the size of the hand-off set: `{released, pending}`.
    private static let releaseScript = """
        local released = 0
        if redis.call('GET', KEYS[1]) == ARGV[1] then released = redis.call('DEL', KEYS[1]) end
        return {released, redis.call('SCARD', KEYS[2])}
        """
    /// SADD to the hand-off set, which lives a day at most.
    private static let markPendingScript = """
        redis.call('SADD', KEYS[1], ARGV[1]); return redis.call('PEXPIRE', KEYS[1], ARGV[2])
        """
    private static let renewScript = """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end
        """

    private let acquired = Counter(label: "convo.lock.acquired")
    private let busy = Counter(label: "convo.lock.busy")
    private let renewed = Counter(label: "convo.lock.renewed")

    public init(redis: RedisClient, ttl: Duration = .seconds(30)) {
        self.redis = redis
        self.ttl = ttl
    }

    /// The Redis key of a visitor's lock.
    public static func key(tenant: TenantID, visitor: VisitorUID) -> String {
        Visitor(tenant: tenant, visitor: visitor).lockKey
    }

    /// Takes the visitor's lock; `nil` at once when another worker holds it.
    ///
    /// - Throws: ``ResponderError`` when Redis cannot be reached or refuses the command.
    public func acquire(tenant: TenantID, visitor: VisitorUID) async throws -> Lease? {
        try await acquire(Visitor(tenant: tenant, visitor: visitor))
    }

    /// Takes the visitor's lock; `nil` at once when another worker holds it.
    public func acquire(_ visitor: Visitor) async throws -> Lease? {
        let token = UUID().uuidString.lowercased()
        let reply = try await redis.execute(["SET", visitor.lockKey, token, "NX", "PX", String(ttl.milliseconds)])
        guard reply != .null else {
            busy.increment()
            return nil
        }
        acquired.increment()
        return Lease(visitor: visitor, token: token, ttl: ttl)
    }

    /// Releases the lock if it is still ours, and counts the conversations handed over meanwhile.
    ///
    /// - Throws: ``ResponderError`` when Redis cannot be reached or answers oddly.
    @discardableResult
    public func release(_ lease: Lease) async throws -> Release {
        let reply = try await redis.execute(["EVAL", Self.releaseScript, "2", lease.key, lease.visitor.pendingKey, lease.token])
        guard case .array(let fields) = reply, fields.count == 2, let released = fields[0].integer, let pending = fields[1].integer else {
            throw ResponderError(code: .redisCommandFailed, message: "unexpected reply to the release script")
        }
        return Release(wasHeld: released == 1, pending: Int(pending))
    }

    /// Hands a conversation to whoever holds (or next takes) the visitor's lock.
    public func markPending(_ visitor: Visitor, conversation: ConversationID) async throws {
        try await redis.execute(["EVAL", Self.markPendingScript, "1", visitor.pendingKey, conversation.rawValue, "86400000"])
    }

    /// The next conversation handed over, removed from the set; `nil` when there is none.
    public func takePending(_ lease: Lease) async throws -> ConversationID? {
        while case .string(let member) = try await redis.execute(["SPOP", lease.visitor.pendingKey]) {
            if let id = ConversationID(rawValue: String(decoding: member, as: UTF8.self)) { return id }
        }
        return nil
    }

    /// Extends the lock by its ttl if it is still ours; `false` when it was lost.
    ///
    /// - Throws: ``ResponderError`` when Redis cannot be reached.
    public func renew(_ lease: Lease) async throws -> Bool {
        let reply = try await redis.execute(["EVAL", Self.renewScript, "1", lease.key, lease.token, String(lease.ttl.milliseconds)])
        guard reply.integer == 1 else { return false }
        renewed.increment()
        return true
    }
}

extension Duration {
    /// Whole milliseconds, at least 1.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }
}
