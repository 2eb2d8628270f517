import ConvoTestSupport
import Foundation
import SharedTypes
import Testing

@testable import Responder

/// The visitor lock on the Redis topologies the README names, each with real processes on loopback: a
/// three-primary Redis Cluster (slots spread over the nodes, `MOVED` after a slot moves, `ASK` during a
/// migration) and a primary with a replica under three Sentinels (failed over twice).
@Suite(.serialized, .timeLimit(.minutes(3))) struct RedisTopologyTests {
    static func visitor(_ index: Int, tenant: TenantID) -> VisitorLock.Visitor {
        VisitorLock.Visitor(tenant: tenant, visitor: VisitorUID(rawValue: "v-\(index)")!)
    }

    @Test func theLockRenewalPendingSetAndReleaseWorkOnEverySlotOfACluster() async throws {
        let cluster = try await RedisClusterServers()
        let lock = VisitorLock(redis: RedisClient(configuration: try RedisConfiguration(url: cluster.url, connections: 2)), ttl: .seconds(30))
        let tenant = TestDatabase.uniqueTenant()
        // Our slot of a key is Redis's.
        for index in 0..<20 {
            let key = Self.visitor(index, tenant: tenant).lockKey
            let theirs = try await cluster.nodes[0].cli(["cluster", "keyslot", key]).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(Int(theirs) == ClusterRouter.slot(Array(key.utf8)), "\(key)")
            #expect(ClusterRouter.slot(Array(key.utf8)) == ClusterRouter.slot(Array(Self.visitor(index, tenant: tenant).pendingKey.utf8)))
        }
        var leases: [VisitorLock.Lease] = []
        for index in 0..<200 {
            let visitor = Self.visitor(index, tenant: tenant)
            try await lock.markPending(visitor, conversation: ConversationID(rawValue: "c-\(index)")!)
            let lease = try #require(try await lock.acquire(visitor))
            #expect(try await lock.acquire(visitor) == nil)
            #expect(try await lock.renew(lease))
            leases.append(lease)
        }
        // The keys live on all three primaries.
        for node in cluster.nodes {
            let keys = Int(try await node.cli(["dbsize"]).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            #expect(keys > 20, "\(node.port): \(keys) keys")
        }
        for (index, lease) in leases.enumerated() {
            #expect(try await lock.takePending(lease) == ConversationID(rawValue: "c-\(index)")!)
            let release = try await lock.release(lease)
            #expect(release.wasHeld && release.pending == 0)
        }
        try await cluster.stop()
    }

    @Test func aSlotThatMovedIsFollowedAndOneBeingMigratedIsAsked() async throws {
        let cluster = try await RedisClusterServers()
        let client = RedisClient(configuration: try RedisConfiguration(url: cluster.url, connections: 1))
        let lock = VisitorLock(redis: client, ttl: .seconds(30))
        let tenant = TestDatabase.uniqueTenant()
        var ids: [String] = []
        for node in cluster.nodes { ids.append(try await node.cli(["cluster", "myid"]).trimmingCharacters(in: .whitespacesAndNewlines)) }
        func owner(_ slot: Int) async throws -> Int {
            for (index, node) in cluster.nodes.enumerated() {
                let info = try await node.cli(["cluster", "nodes"])
                if info.split(separator: "\n").contains(where: { $0.contains("myself") && Self.serves($0, slot) }) { return index }
            }
            throw ServeProcess.Failure(description: "no node serves slot \(slot)")
        }
        // The client learns the map first.
        let first = Self.visitor(1000, tenant: tenant)
        try await lock.release(try #require(try await lock.acquire(first)))

        // MOVED: a slot moves from its node to another behind the client's back.
        let moved = Self.visitor(1001, tenant: tenant)
        let movedSlot = ClusterRouter.slot(Array(moved.lockKey.utf8))
        let from = try await owner(movedSlot)
        let to = (from + 1) % 3
        // As redis-cli --cluster reshard does it: importing, migrating, then the new owner first.
        _ = try await cluster.nodes[to].cli(["cluster", "setslot", "\(movedSlot)", "importing", ids[from]])
        _ = try await cluster.nodes[from].cli(["cluster", "setslot", "\(movedSlot)", "migrating", ids[to]])
        for index in [to, from, 3 - to - from] { _ = try await cluster.nodes[index].cli(["cluster", "setslot", "\(movedSlot)", "node", ids[to]]) }
        let movedLease = try #require(try await lock.acquire(moved))
        #expect(try await cluster.nodes[to].cli(["exists", moved.lockKey]).contains("1"))
        #expect(try await lock.release(movedLease).wasHeld)

        // ASK: a slot in the middle of a migration; a key not on the old node is asked of the new one.
        let asked = Self.visitor(1002, tenant: tenant)
        let askedSlot = ClusterRouter.slot(Array(asked.lockKey.utf8))
        let source = try await owner(askedSlot)
        let target = (source + 1) % 3
        _ = try await cluster.nodes[target].cli(["cluster", "setslot", "\(askedSlot)", "importing", ids[source]])
        _ = try await cluster.nodes[source].cli(["cluster", "setslot", "\(askedSlot)", "migrating", ids[target]])
        let askedLease = try #require(try await lock.acquire(asked))
        #expect(try await lock.renew(askedLease))
        #expect(try await lock.acquire(asked) == nil)
        // The release script touches the lock (moved) and the pending set (nowhere yet): Redis answers
        // TRYAGAIN until the migration ends, and the client waits a little, then reports it.
        await #expect(throws: ResponderError.self) { try await lock.release(askedLease) }
        for index in [target, source, 3 - target - source] {
            _ = try await cluster.nodes[index].cli(["cluster", "setslot", "\(askedSlot)", "node", ids[target]])
        }
        // Migrated: the client is sent on (MOVED) and the release goes through.
        #expect(try await lock.release(askedLease).wasHeld)
        try await cluster.stop()
    }

    /// Whether a `CLUSTER NODES` line serves `slot` (ranges and single slots after the eighth field).
    static func serves(_ line: Substring, _ slot: Int) -> Bool {
        line.split(separator: " ").dropFirst(8).contains { field in
            if field.hasPrefix("[") { return false }
            let bounds = field.split(separator: "-").compactMap { Int($0) }
            if bounds.count == 2 { return (bounds[0]...bounds[1]).contains(slot) }
            return bounds.first == slot
        }
    }

    @Test func theLockFollowsASentinelFailoverAndACrashedPrimary() async throws {
        let set = try await RedisSentinelSet()
        let client = RedisClient(configuration: try RedisConfiguration(url: set.url, connections: 2, timeout: .milliseconds(500)))
        let lock = VisitorLock(redis: client, ttl: .seconds(30))
        let tenant = TestDatabase.uniqueTenant()
        try await lock.release(try #require(try await lock.acquire(Self.visitor(0, tenant: tenant))))
        #expect(client.currentPrimary?.port == set.primary.port)

        // A failover asked of Sentinel: the old primary becomes a replica (its writes answer READONLY).
        _ = try await set.sentinels[0].cli(["sentinel", "failover", set.name])
        #expect(try await eventually(timeout: .seconds(30)) { try await set.currentPrimaryPort() == set.replica.port })
        var index = 1
        let followed = try await eventually(timeout: .seconds(30)) {
            index += 1
            guard let lease = try? await lock.acquire(Self.visitor(index, tenant: tenant)) else { return false }
            return (try? await lock.release(lease).wasHeld) == true && client.currentPrimary?.port == set.replica.port
        }
        #expect(followed, "primary now \(String(describing: client.currentPrimary))")

        // The new primary crashes: Sentinel promotes the old one back (now its replica), the client follows.
        try await Task.sleep(for: .seconds(1))
        #expect(try await eventually(timeout: .seconds(30)) { (try? await set.primary.cli(["info", "replication"]))?.contains("master_link_status:up") == true })
        try await set.replica.crash()
        #expect(try await eventually(timeout: .seconds(30)) { try await set.currentPrimaryPort() == set.primary.port })
        let recovered = try await eventually(timeout: .seconds(30)) {
            index += 1
            guard let lease = try? await lock.acquire(Self.visitor(index, tenant: tenant)) else { return false }
            return (try? await lock.release(lease).wasHeld) == true && client.currentPrimary?.port == set.primary.port
        }
        #expect(recovered, "primary now \(String(describing: client.currentPrimary))")
        try await set.stop()
    }

    @Test func sentinelAndClusterURLsAreParsedAndBadOnesRefused() throws {
        let sentinel = try RedisConfiguration(url: "redis+sentinel://:pw@h1:26380,h2/mymaster/2")
        #expect(sentinel.topology == .sentinel(sentinels: [RedisEndpoint(host: "h1", port: 26380), RedisEndpoint(host: "h2", port: 26379)], primaryName: "mymaster"))
        #expect(sentinel.password == "pw" && sentinel.database == 2)
        let cluster = try RedisConfiguration(url: "redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
        #expect(cluster.topology == .cluster(seeds: [RedisEndpoint(host: "10.0.0.1", port: 7000), RedisEndpoint(host: "10.0.0.2", port: 7001)]))
        for bad in ["redis+sentinel://h1:26379", "redis+cluster://h1/3", "redis+sentinel://h1:x/m", "rediss://h", "redis://h1,h2", "redis+cluster://"] {
            #expect(throws: ResponderError.self, "\(bad)") { try RedisConfiguration(url: bad) }
        }
    }
}
