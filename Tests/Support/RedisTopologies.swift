import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A Redis Cluster of the tests' own: three primaries on free loopback ports, created with
/// `redis-cli --cluster create`. Its processes are ended by their pids.
public final class RedisClusterServers: @unchecked Sendable {
    public let nodes: [RedisServer]

    public init(primaries: Int = 3) async throws {
        var nodes: [RedisServer] = []
        for _ in 0..<primaries {
            nodes.append(
                try await RedisServer(
                    arguments: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"], clusterBus: true))
        }
        self.nodes = nodes
        _ = try await PostgresServer.shell(
            ["redis-cli", "--cluster", "create"] + nodes.map { "127.0.0.1:\($0.port)" } + ["--cluster-replicas", "0", "--cluster-yes"])
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            var ok = true
            for node in nodes where !(try await node.cli(["cluster", "info"])).contains("cluster_state:ok") { ok = false }
            if ok { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ServeProcess.Failure(description: "the Redis Cluster did not reach cluster_state:ok")
    }

    /// A seed list of one node: the client learns the others.
    public var url: String { "redis+cluster://127.0.0.1:\(nodes[0].port)" }

    public func stop() async throws {
        for node in nodes { try await node.stop() }
    }
}

/// A Redis primary, a replica and three Sentinels of the tests' own, on free loopback ports, failing over
/// within a few seconds (down after 1 s). Ended by their pids.
public final class RedisSentinelSet: @unchecked Sendable {
    public let primary: RedisServer
    public let replica: RedisServer
    public let sentinels: [SentinelProcess]
    public let name: String

    public init() async throws {
        primary = try await RedisServer()
        replica = try await RedisServer(arguments: ["--replicaof", "127.0.0.1", "\(primary.port)"])
        name = "convo\(primary.port)"
        var sentinels: [SentinelProcess] = []
        for _ in 0..<3 { sentinels.append(try await SentinelProcess(monitoring: primary.port, name: name)) }
        self.sentinels = sentinels
        // Until the replica is in sync and every Sentinel knows the others, a failover cannot happen.
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            // A server busy with its first sync may drop a client (redis-cli: "Server closed the connection"):
            // not ready yet, ask again.
            let replication = (try? await replica.cli(["info", "replication"])) ?? ""
            var ready = replication.contains("master_link_status:up")
            for sentinel in sentinels {
                let info = (try? await sentinel.cli(["sentinel", "master", name])) ?? ""
                if !info.contains("num-other-sentinels\n2") || !info.contains("num-slaves\n1") { ready = false }
            }
            if ready { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw ServeProcess.Failure(description: "the Sentinels did not see each other and the replica")
    }

    public var url: String { "redis+sentinel://" + sentinels.map { "127.0.0.1:\($0.port)" }.joined(separator: ",") + "/\(name)" }

    /// The port Sentinel names as primary now.
    public func currentPrimaryPort() async throws -> Int? {
        let reply = try await sentinels[0].cli(["sentinel", "get-master-addr-by-name", name])
        return reply.split(separator: "\n").last.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    }

    public func stop() async throws {
        for sentinel in sentinels { try await sentinel.stop() }
        try await primary.stop()
        try await replica.stop()
    }
}

/// A `redis-sentinel` process (Debian's package) with a config file of its own, which Sentinel rewrites.
public final class SentinelProcess: @unchecked Sendable {
    public let port: Int
    let directory: URL

    init(monitoring primaryPort: Int, name: String) async throws {
        port = try ServeProcess.freePort()
        directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("convo-sentinel-\(TestRun.tag)-\(port)-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let config = """
            port \(port)
            bind 127.0.0.1
            daemonize yes
            pidfile \(directory.appendingPathComponent("sentinel.pid").path)
            logfile \(directory.appendingPathComponent("sentinel.log").path)
            dir \(directory.path)
            sentinel monitor \(name) 127.0.0.1 \(primaryPort) 2
            sentinel down-after-milliseconds \(name) 1000
            sentinel failover-timeout \(name) 5000
            sentinel parallel-syncs \(name) 1

            """
        let file = directory.appendingPathComponent("sentinel.conf")
        try config.write(to: file, atomically: true, encoding: .utf8)
        _ = try await PostgresServer.shell(["redis-sentinel", file.path])
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if (try? await cli(["ping"]))?.contains("PONG") == true { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ServeProcess.Failure(description: "redis-sentinel did not answer on port \(port)")
    }

    public func cli(_ command: [String]) async throws -> String {
        try await PostgresServer.shell(["redis-cli", "-p", "\(port)"] + command)
    }

    var pid: pid_t? {
        (try? String(contentsOfFile: directory.appendingPathComponent("sentinel.pid").path, encoding: .utf8))
            .flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    public func stop() async throws {
        guard let pid else { return }
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(10)
        while isRunning(pid) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if isRunning(pid) { kill(pid, SIGKILL) }
    }

    deinit {
        if let pid { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }
}
