import Foundation
import Logging
import Metrics
import SharedTypes

/// The per-visitor Redis lock: one worker advances a visitor at a time.
///
/// `SET visitorLock:{tenant:visitor} token NX PX ttl` takes it; a Lua compare-and-delete releases it and a
/// Lua compare-and-`PEXPIRE` renews it, so a worker never frees or extends a lock it no longer holds. The
/// lock saves work; correctness comes from the event store's expected-version check, which fences out a
/// worker whose lock expired.
///
/// With the lock goes the visitor's hand-off set, `visitorPending:{tenant:visitor}`: a worker adds its
/// conversation (``markPending(_:conversation:)``) before trying the lock, the holder takes the members
/// (``takePending(_:)``) before letting go, and the release reports how many came in meanwhile, so a
/// worker that found the lock held can return at once without a message waiting for nobody.
///
/// Both keys carry the hash tag `{tenant:visitor}`, so every script touches one Redis Cluster slot.
/// Versions before the tag used `visitorLock:tenant:visitor`; while such instances still run beside new
/// ones (a rolling upgrade), new ones run with ``legacyKeys`` on, taking and releasing the old key as well
/// in the same script, so old and new never hold one visitor at once (standalone and Sentinel only: the
/// old keys cannot work on a cluster anyway).
public struct VisitorLock: Sendable {
    /// A visitor's lock and hand-off set.
    public struct Visitor: Sendable, Hashable {
        public let lockKey: String
        public let pendingKey: String
        /// The keys of versions before the hash tag.
        public let legacyLockKey: String
        public let legacyPendingKey: String

        public init(tenant: TenantID, visitor: VisitorUID) {
            let tag = "{\(tenant.rawValue):\(visitor.rawValue)}"
            lockKey = "visitorLock:\(tag)"
            pendingKey = "visitorPending:\(tag)"
            legacyLockKey = "visitorLock:\(tenant.rawValue):\(visitor.rawValue)"
            legacyPendingKey = "visitorPending:\(tenant.rawValue):\(visitor.rawValue)"
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
    /// Whether to take, renew and release the keys of versions before the hash tag too (a rolling upgrade
    /// from such a version). Default: off.
    public let legacyKeys: Bool

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
    /// Legacy mode: the new key only if nobody (an old instance) holds the old one, then the old one too.
    private static let legacyAcquireScript = """
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
        redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
        return 1
        """
    private static let legacyReleaseScript = """
        local released = 0
        if redis.call('GET', KEYS[1]) == ARGV[1] then released = redis.call('DEL', KEYS[1]) end
        if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
        return {released, redis.call('SCARD', KEYS[2]) + redis.call('SCARD', KEYS[4])}
        """
    private static let legacyRenewScript = """
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
        return redis.call('PEXPIRE', KEYS[1], ARGV[2])
        """
    private static let legacyMarkPendingScript = """
        redis.call('SADD', KEYS[1], ARGV[1]); redis.call('PEXPIRE', KEYS[1], ARGV[2])
        redis.call('SADD', KEYS[2], ARGV[1]); return redis.call('PEXPIRE', KEYS[2], ARGV[2])
        """

    private let acquired = Counter(label: "convo.lock.acquired")
    private let busy = Counter(label: "convo.lock.busy")
    private let renewed = Counter(label: "convo.lock.renewed")

    public init(redis: RedisClient, ttl: Duration = .seconds(30), legacyKeys: Bool = false) {
        self.redis = redis
        self.ttl = ttl
        self.legacyKeys = legacyKeys
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
        let taken: Bool
        if legacyKeys {
            let reply = try await redis.execute(
                ["EVAL", Self.legacyAcquireScript, "2", visitor.lockKey, visitor.legacyLockKey, token, String(ttl.milliseconds)])
            taken = reply.integer == 1
        } else {
            taken = try await redis.execute(["SET", visitor.lockKey, token, "NX", "PX", String(ttl.milliseconds)]) != .null
        }
        guard taken else {
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
        let visitor = lease.visitor
        let reply =
            legacyKeys
            ? try await redis.execute(
                ["EVAL", Self.legacyReleaseScript, "4", visitor.lockKey, visitor.pendingKey, visitor.legacyLockKey, visitor.legacyPendingKey, lease.token])
            : try await redis.execute(["EVAL", Self.releaseScript, "2", lease.key, visitor.pendingKey, lease.token])
        guard case .array(let fields) = reply, fields.count == 2, let released = fields[0].integer, let pending = fields[1].integer else {
            throw ResponderError(code: .redisCommandFailed, message: "unexpected reply to the release script")
        }
        return Release(wasHeld: released == 1, pending: Int(pending))
    }

    /// Hands a conversation to whoever holds (or next takes) the visitor's lock.
    public func markPending(_ visitor: Visitor, conversation: ConversationID) async throws {
        if legacyKeys {
            try await redis.execute(
                ["EVAL", Self.legacyMarkPendingScript, "2", visitor.pendingKey, visitor.legacyPendingKey, conversation.rawValue, "86400000"])
        } else {
            try await redis.execute(["EVAL", Self.markPendingScript, "1", visitor.pendingKey, conversation.rawValue, "86400000"])
        }
    }

    /// The next conversation handed over, removed from the set; `nil` when there is none.
    public func takePending(_ lease: Lease) async throws -> ConversationID? {
        for key in legacyKeys ? [lease.visitor.pendingKey, lease.visitor.legacyPendingKey] : [lease.visitor.pendingKey] {
            while case .string(let member) = try await redis.execute(["SPOP", key]) {
                if let id = ConversationID(rawValue: String(decoding: member, as: UTF8.self)) { return id }
            }
        }
        return nil
    }

    /// Extends the lock by its ttl if it is still ours; `false` when it was lost.
    ///
    /// - Throws: ``ResponderError`` when Redis cannot be reached.
    public func renew(_ lease: Lease) async throws -> Bool {
        let reply =
            legacyKeys
            ? try await redis.execute(
                ["EVAL", Self.legacyRenewScript, "2", lease.key, lease.visitor.legacyLockKey, lease.token, String(lease.ttl.milliseconds)])
            : try await redis.execute(["EVAL", Self.renewScript, "1", lease.key, lease.token, String(lease.ttl.milliseconds)])
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
