import Synchronization
import ConvoTestSupport
import Foundation
import Responder
import SharedTypes
import Testing

@Suite struct VisitorLockTests {
    func makeLock(ttl: Duration = .seconds(5)) throws -> VisitorLock {
        VisitorLock(redis: RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL)), ttl: ttl)
    }

    func uniqueVisitor() -> VisitorUID { VisitorUID(rawValue: "v-\(UUID().uuidString.prefix(8))")! }

    @Test func aHeldLockIsBusyForOthersUntilItsHolderReleasesIt() async throws {
        let lock = try makeLock()
        let tenant = TestDatabase.uniqueTenant()
        let visitor = uniqueVisitor()
        let lease = try #require(try await lock.acquire(tenant: tenant, visitor: visitor))
        #expect(lease.key == "visitorLock:{\(tenant.rawValue):\(visitor.rawValue)}")
        #expect(try await lock.acquire(tenant: tenant, visitor: visitor) == nil)
        // Another visitor, or the same visitor of another tenant, is independent.
        let other = try #require(try await lock.acquire(tenant: tenant, visitor: uniqueVisitor()))
        let otherTenant = try #require(try await lock.acquire(tenant: TestDatabase.uniqueTenant(), visitor: visitor))
        #expect(try await lock.release(lease).wasHeld)
        let again = try #require(try await lock.acquire(tenant: tenant, visitor: visitor))
        #expect(again.token != lease.token)
        for held in [again, other, otherTenant] { try await lock.release(held) }
    }

    @Test func theReleaseCountsConversationsHandedOverMeanwhile() async throws {
        let lock = try makeLock()
        let tenant = TestDatabase.uniqueTenant()
        let visitor = VisitorLock.Visitor(tenant: tenant, visitor: uniqueVisitor())
        let c1 = ConversationID(rawValue: "c-1")!
        let c2 = ConversationID(rawValue: "c-2")!
        try await lock.markPending(visitor, conversation: c1)
        let lease = try #require(try await lock.acquire(visitor))
        #expect(try await lock.takePending(lease) == c1)
        #expect(try await lock.takePending(lease) == nil)
        // Another worker hands over c2 (twice: a set keeps it once) while the lock is held.
        try await lock.markPending(visitor, conversation: c2)
        try await lock.markPending(visitor, conversation: c2)
        #expect(try await lock.acquire(visitor) == nil)
        #expect(try await lock.release(lease) == VisitorLock.Release(wasHeld: true, pending: 1))
        let next = try #require(try await lock.acquire(visitor))
        #expect(try await lock.takePending(next) == c2)
        #expect(try await lock.release(next) == VisitorLock.Release(wasHeld: true, pending: 0))
    }

    @Test func releaseAndRenewCheckTheToken() async throws {
        let lock = try makeLock()
        let tenant = TestDatabase.uniqueTenant()
        let visitor = uniqueVisitor()
        let lease = try #require(try await lock.acquire(tenant: tenant, visitor: visitor))
        let impostor = VisitorLock.Lease(visitor: lease.visitor, token: "not-the-token", ttl: lease.ttl)
        #expect(try await lock.release(impostor).wasHeld == false)
        #expect(try await lock.renew(impostor) == false)
        #expect(try await lock.acquire(tenant: tenant, visitor: visitor) == nil)  // still held
        #expect(try await lock.renew(lease))
        #expect(try await lock.release(lease).wasHeld)
        #expect(try await lock.release(lease).wasHeld == false)  // already gone
        #expect(try await lock.renew(lease) == false)
    }

    @Test func aLockExpiresAfterItsTTLUnlessRenewed() async throws {
        // Generous margins: the suite runs beside heavy tests on a small machine.
        let lock = try makeLock(ttl: .seconds(4))
        let tenant = TestDatabase.uniqueTenant()
        let visitor = uniqueVisitor()
        let lease = try #require(try await lock.acquire(tenant: tenant, visitor: visitor))
        for _ in 0..<10 {
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await lock.renew(lease))
        }
        #expect(try await lock.acquire(tenant: tenant, visitor: visitor) == nil)  // 5 s in, past its ttl, kept by renewals
        // Unrenewed, it expires: Redis drops the key once its ttl has passed.
        let redis = RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL))
        #expect(try await eventually { try await redis.execute(["EXISTS", lease.key]) == .integer(0) })
        // The successor holds it long enough for the checks below, however slow the machine.
        let patient = try makeLock(ttl: .seconds(30))
        let successor = try #require(try await patient.acquire(tenant: tenant, visitor: visitor))
        #expect(try await lock.renew(lease) == false)  // the expired holder cannot take it back
        #expect(try await lock.release(lease).wasHeld == false)
        #expect(try await patient.release(successor).wasHeld)
    }

    @Test func manyContendersGetTheLockOneAtATime() async throws {
        let lock = try makeLock()
        let tenant = TestDatabase.uniqueTenant()
        let visitor = uniqueVisitor()
        let holders = Counter()
        let maxHolders = Counter()
        let acquired = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<20 {
                group.addTask {
                    var count = 0
                    for _ in 0..<20 {
                        guard let lease = try await lock.acquire(tenant: tenant, visitor: visitor) else { continue }
                        maxHolders.max(holders.add(1))
                        try await Task.sleep(for: .milliseconds(1))
                        holders.add(-1)
                        #expect(try await lock.release(lease).wasHeld)
                        count += 1
                    }
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(acquired > 0)
        #expect(maxHolders.value == 1)
    }

    /// A rolling upgrade: instances of a version before the hash tag take `visitorLock:tenant:visitor`.
    /// With legacyKeys, a new instance and an old one never hold one visitor at once.
    @Test func legacyKeysKeepOldAndNewInstancesExclusive() async throws {
        let redis = RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL))
        let lock = VisitorLock(redis: redis, ttl: .seconds(60), legacyKeys: true)
        let tenant = TestDatabase.uniqueTenant()
        let visitor = VisitorLock.Visitor(tenant: tenant, visitor: uniqueVisitor())
        // An old instance holds the visitor: the new one does not take it.
        #expect(try await redis.execute(["SET", visitor.legacyLockKey, "old-token", "NX", "PX", "5000"]) != .null)
        #expect(try await lock.acquire(visitor) == nil)
        #expect(try await redis.execute(["DEL", visitor.legacyLockKey]).integer == 1)
        // A new instance holds it: an old one's SET NX fails, and a message it hands over is seen.
        let lease = try #require(try await lock.acquire(visitor))
        #expect(try await redis.execute(["SET", visitor.legacyLockKey, "old-token", "NX", "PX", "5000"]) == .null)
        #expect(try await redis.execute(["SADD", visitor.legacyPendingKey, "c-old"]).integer == 1)
        // The renewal extends the old key too: cut its expiry to 10 s, renew, and it is back near the 60 s ttl.
        // (10 s, not 1: at the start of a full run a second can pass between two commands, and the key was gone.)
        #expect(try await redis.execute(["PEXPIRE", visitor.legacyLockKey, "10000"]).integer == 1)
        #expect(try await lock.renew(lease))
        let ttl = try await redis.execute(["PTTL", visitor.legacyLockKey]).integer ?? 0
        #expect(ttl > 30_000, "\(ttl)")
        #expect(try await lock.takePending(lease) == ConversationID(rawValue: "c-old"))
        // Released: both keys are gone, and an old instance can take it again.
        #expect(try await lock.release(lease).wasHeld)
        #expect(try await redis.execute(["EXISTS", visitor.lockKey, visitor.legacyLockKey]).integer == 0)
        // Without legacyKeys the old key is ignored (the version check, not the lock, then separates them).
        let plain = VisitorLock(redis: redis, ttl: .seconds(5))
        #expect(try await redis.execute(["SET", visitor.legacyLockKey, "old-token", "NX", "PX", "5000"]) != .null)
        let unaware = try #require(try await plain.acquire(visitor))
        try await plain.release(unaware)
        _ = try await redis.execute(["DEL", visitor.legacyLockKey])
    }
}

/// A thread-safe counter for tests.
final class Counter: Sendable {
    private let state = Mutex(0)
    @discardableResult func add(_ delta: Int) -> Int { state.withLock { $0 += delta; return $0 } }
    func max(_ candidate: Int) { state.withLock { $0 = Swift.max($0, candidate) } }
    var value: Int { state.withLock { $0 } }

}
