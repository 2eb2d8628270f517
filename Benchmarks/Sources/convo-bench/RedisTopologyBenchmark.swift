import ArgumentParser
import Foundation
import Responder
import SharedTypes

#if canImport(Glibc)
    import Glibc
#endif

/// The visitor lock (acquire + release pairs) through Sentinel and through a Redis Cluster, against one
/// Redis, in one run: each on servers this benchmark starts (loopback, free ports, a folder of its own) and
/// stops by pid.
struct RedisTopologyBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redis-topologies", abstract: "visitor lock pairs/s through Sentinel and Redis Cluster against one Redis.")

    @Option(help: "Seconds per round and side.") var seconds: Int = 5
    @Option(help: "Rounds; the sides alternate.") var rounds: Int = 3
    @Option(help: "Concurrent lock users (tasks).") var concurrency: Int = 16
    @Option(help: "Connections on every side (a cluster: a third of them per node).") var connections: Int = 6
    @Flag(help: "Exit 1 when a ratio misses its target.") var check = false

    static let target = 0.9

    func run() async throws {
        let servers = try Servers()
        defer { servers.stop() }
        try await servers.start()
        report("redis topologies: one Redis on \(servers.single), Sentinel \(servers.sentinelURL), Cluster \(servers.clusterURL); \(concurrency) tasks, \(connections) connections (\(max(1, connections / 3)) per cluster node), \(seconds) s per side and round")
        // The same number of connections (threads) on every side, a third of them per node of the cluster.
        let clients = [
            ("single", RedisClient(configuration: try RedisConfiguration(url: "redis://127.0.0.1:\(servers.single)", connections: connections))),
            ("sentinel", RedisClient(configuration: try RedisConfiguration(url: servers.sentinelURL, connections: connections))),
            // The Sentinel's primary addressed directly: what its replica costs, apart from the client.
            ("primary", RedisClient(configuration: try RedisConfiguration(url: "redis://127.0.0.1:\(servers.primary)", connections: connections))),
            ("cluster", RedisClient(configuration: try RedisConfiguration(url: servers.clusterURL, connections: max(1, connections / 3)))),
        ]
        // Whose CPU each side costs: this process (the client) and the Redis processes it talks to.
        let serverPids: [String: [pid_t]] = [
            "single": servers.pids([servers.single]), "sentinel": servers.pids([servers.primary, servers.replica] + servers.sentinels),
            "primary": servers.pids([servers.primary, servers.replica]), "cluster": servers.pids(servers.nodes),
        ]
        var totals: [String: (pairs: Int, time: Duration, client: Double, servers: Double)] = [:]
        for round in 0..<rounds {
            for (name, client) in round.isMultiple(of: 2) ? clients : clients.reversed() {
                let pids = serverPids[name] ?? []
                let before = (IngestBaselines.CPU.usage(RUSAGE_SELF.rawValue), pids.map(IngestBaselines.CPU.processTime).reduce(0, +))
                let (pairs, time) = try await pairsPerSecond(client, tag: "\(name)\(round)")
                let after = (IngestBaselines.CPU.usage(RUSAGE_SELF.rawValue), pids.map(IngestBaselines.CPU.processTime).reduce(0, +))
                totals[name, default: (0, .zero, 0, 0)].pairs += pairs
                totals[name, default: (0, .zero, 0, 0)].time += time
                totals[name, default: (0, .zero, 0, 0)].client += after.0 - before.0
                totals[name, default: (0, .zero, 0, 0)].servers += after.1 - before.1
            }
        }
        func rate(_ name: String) -> Double { Double(totals[name]!.pairs) / totals[name]!.time.inSeconds }
        func cpu(_ name: String) -> String {
            let total = totals[name]!
            func µs(_ seconds: Double) -> String { (seconds / Double(max(1, total.pairs)) * 1e6).formatted(1) }
            return "CPU per pair: client \(µs(total.client)) µs, Redis processes \(µs(total.servers)) µs"
        }
        let single = rate("single")
        report("single    \(single.formatted(0)) pairs/s  \(cpu("single"))")
        var missed = false
        for name in ["sentinel", "cluster"] {
            let ratio = rate(name) / single
            missed = missed || ratio < Self.target
            report(
                "\(name.padding(toLength: 9, withPad: " ", startingAt: 0)) \(rate(name).formatted(0)) pairs/s  ratio \(ratio.formatted(2)) (target ≥ \(Self.target)) \(ratio >= Self.target ? "ok" : "MISSED")  \(cpu(name))"
            )
        }
        let direct = rate("primary")
        report(
            "the Sentinel's primary addressed directly (redis://, its replica attached) \(direct.formatted(0)) pairs/s: Sentinel discovery against it \((rate("sentinel") / direct).formatted(2)), the replica against one Redis \((direct / single).formatted(2)); \(cpu("primary"))"
        )
        // What the topologies cost the strongest client on this machine: redis-benchmark (C), the lock's
        // SET NX PX at the same concurrency, against the same servers, alternating, in the same run.
        var c: [String: Double] = [:]
        for round in 0..<rounds {
            let sides: [(String, [String])] = [
                ("single", ["-p", "\(servers.single)"]), ("primary", ["-p", "\(servers.primary)"]), ("cluster", ["--cluster", "-p", "\(servers.nodes[0])"]),
            ]
            for (name, target) in round.isMultiple(of: 2) ? sides : sides.reversed() {
                c[name, default: 0] += try Self.redisBenchmark(target, concurrency: concurrency) / Double(rounds)
            }
        }
        if let cSingle = c["single"], let cPrimary = c["primary"], let cCluster = c["cluster"] {
            report(
                "redis-benchmark (C, SET NX PX, \(concurrency) clients): single \(cSingle.formatted(0))/s, primary with its replica \((cPrimary / cSingle).formatted(2))×, "
                    + "cluster \((cCluster / cSingle).formatted(2))× of single: what the topology itself costs here")
        }
        if check && missed { throw ExitCode(1) }
    }

    /// redis-benchmark's requests per second for the visitor lock's SET NX PX on random keys.
    static func redisBenchmark(_ target: [String], concurrency: Int) throws -> Double {
        let output = try Servers.run(
            ["redis-benchmark", "-h", "127.0.0.1"] + target + ["-n", "200000", "-c", "\(concurrency)", "-r", "100000", "-q", "SET", "lock:{tag}:__rand_int__", "t", "NX", "PX", "30000"])
        // "SET lock:{tag}:__rand_int__ t NX PX 30000: 95238.10 requests per second, p50=0.135 msec" ({tag}: redis-benchmark puts each node's slot there in a cluster)
        guard let range = output.range(of: " requests per second", options: .backwards) else { throw ValidationError("redis-benchmark said: \(output.suffix(300))") }
        let number = output[..<range.lowerBound].split(whereSeparator: { $0 == " " || $0 == "\r" || $0 == "\n" }).last.map(String.init) ?? ""
        guard let rate = Double(number) else { throw ValidationError("redis-benchmark said: \(output.suffix(300))") }
        return rate
    }

    private func pairsPerSecond(_ redis: RedisClient, tag: String) async throws -> (Int, Duration) {
        let lock = VisitorLock(redis: redis, ttl: .seconds(30))
        let tenant = TenantID(rawValue: "bench")!
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + .seconds(seconds)
        let pairs = try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var count = 0
                    while clock.now < deadline {
                        let visitor = VisitorUID(rawValue: "\(tag)-\(worker)-\(count % 256)")!
                        if let lease = try await lock.acquire(tenant: tenant, visitor: visitor) { try await lock.release(lease) }
                        count += 1
                    }
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
        return (pairs, clock.now - start)
    }

    /// The servers of one run, in a temporary folder.
    final class Servers {
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("convo-bench-redis-\(UUID().uuidString.prefix(8))")
        let single: Int
        let primary: Int
        let replica: Int
        let sentinels: [Int]
        let nodes: [Int]
        /// Each server's pid file, by its port.
        var pidFiles: [Int: String] = [:]

        init() throws {
            var used = Set<Int>()
            func port(clusterBus: Bool = false) throws -> Int {
                while true {
                    let candidate = Int.random(in: 20000...40000)
                    if used.contains(candidate) || !Self.isFree(candidate) || (clusterBus && !Self.isFree(candidate + 10000)) { continue }
                    used.insert(candidate)
                    if clusterBus { used.insert(candidate + 10000) }
                    return candidate
                }
            }
            single = try port()
            primary = try port()
            replica = try port()
            sentinels = try (0..<3).map { _ in try port() }
            nodes = try (0..<3).map { _ in try port(clusterBus: true) }
        }

        var name: String { "bench\(primary)" }
        var sentinelURL: String { "redis+sentinel://" + sentinels.map { "127.0.0.1:\($0)" }.joined(separator: ",") + "/\(name)" }
        var clusterURL: String { "redis+cluster://127.0.0.1:\(nodes[0])" }

        func start() async throws {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try redis(single)
            try redis(primary)
            try redis(replica, ["--replicaof", "127.0.0.1", "\(primary)"])
            for node in nodes { try redis(node, ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]) }
            for sentinel in sentinels {
                let folder = directory.appendingPathComponent("\(sentinel)")
                try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
                let config = folder.appendingPathComponent("sentinel.conf")
                let pidFile = folder.appendingPathComponent("pid").path
                try """
                    port \(sentinel)
                    bind 127.0.0.1
                    daemonize yes
                    pidfile \(pidFile)
                    logfile \(folder.appendingPathComponent("log").path)
                    dir \(folder.path)
                    sentinel monitor \(name) 127.0.0.1 \(primary) 2

                    """.write(to: config, atomically: true, encoding: .utf8)
                pidFiles[sentinel] = pidFile
                try Self.run(["redis-sentinel", config.path])
            }
            try Self.run(["redis-cli", "--cluster", "create"] + nodes.map { "127.0.0.1:\($0)" } + ["--cluster-replicas", "0", "--cluster-yes"])
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                let states = try nodes.map { try Self.run(["redis-cli", "-p", "\($0)", "cluster", "info"]) }
                let known = try? Self.run(["redis-cli", "-p", "\(sentinels[0])", "sentinel", "get-master-addr-by-name", name])
                if states.allSatisfy({ $0.contains("cluster_state:ok") }) && known?.contains("\(primary)") == true { return }
                try await Task.sleep(for: .milliseconds(100))
            }
            throw ValidationError("the cluster or the Sentinels did not come up")
        }

        private func redis(_ port: Int, _ extra: [String] = []) throws {
            let folder = directory.appendingPathComponent("\(port)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            let pidFile = folder.appendingPathComponent("pid").path
            pidFiles[port] = pidFile
            try Self.run(
                ["redis-server", "--port", "\(port)", "--bind", "127.0.0.1", "--dir", folder.path, "--daemonize", "yes", "--pidfile", pidFile,
                 "--logfile", folder.appendingPathComponent("log").path, "--save", "", "--appendonly", "no"] + extra)
        }

        /// The pids the servers on `ports` wrote.
        func pids(_ ports: [Int]) -> [pid_t] { ports.compactMap { pidFiles[$0].flatMap(Self.pid) } }

        /// Ends every server it started, by the pids they wrote.
        func stop() {
            for file in pidFiles.values { if let pid = Self.pid(file) { kill(pid, SIGKILL) } }
            try? FileManager.default.removeItem(at: directory)
        }

        private static func pid(_ file: String) -> pid_t? {
            (try? String(contentsOfFile: file, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }

        static func isFree(_ port: Int) -> Bool {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            return withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
        }

        /// Runs a command to its end (posix_spawn: a daemonizing child would keep Foundation's Process
        /// waiting), with no signal blocked in the child; its output, or an error with it.
        @discardableResult
        static func run(_ command: [String]) throws -> String {
            let log = NSTemporaryDirectory() + "convo-bench-\(UUID().uuidString).log"
            defer { unlink(log) }
            let argv = ["/bin/sh", "-c", "exec \"$@\" >\"$0\" 2>&1 </dev/null", log] + command
            var cArguments = argv.map { strdup($0) } + [nil]
            defer { for argument in cArguments { free(argument) } }
            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            var none = sigset_t()
            sigemptyset(&none)
            posix_spawnattr_setsigmask(&attributes, &none)
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
            var pid: pid_t = 0
            guard posix_spawn(&pid, "/bin/sh", nil, &attributes, &cArguments, environ) == 0 else { throw ValidationError("could not start \(command[0])") }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            guard status == 0 else { throw ValidationError("\(command.joined(separator: " ")) failed: \(text)") }
            return text
        }
    }
}
