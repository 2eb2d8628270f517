import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A Redis server of one fault test's own, on a free loopback port: stopped and started again without
/// touching the shared one. Ended by its pid (from its pid file), never by name.
public final class RedisServer: @unchecked Sendable {
    public let port: Int
    let directory: URL
    /// Added to the command line (e.g. `--replicaof`, `--cluster-enabled yes`).
    let arguments: [String]

    /// `clusterBus`: the port must leave room for the cluster bus at port + 10000, free too.
    public init(arguments: [String] = [], clusterBus: Bool = false) async throws {
        self.arguments = arguments
        self.port = try ServeProcess.freePort(clusterBus: clusterBus)
        directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("convo-redis-\(TestRun.tag)-\(port)-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try await start()
    }

    public var url: String { "redis://127.0.0.1:\(port)" }
    var pidFile: String { directory.appendingPathComponent("redis.pid").path }

    /// Starts the server (daemonized, no persistence) and waits until it answers PING.
    public func start() async throws {
        try await PostgresServer.shell([
            "redis-server", "--port", "\(port)", "--bind", "127.0.0.1", "--dir", directory.path, "--daemonize", "yes", "--pidfile", pidFile,
            "--logfile", directory.appendingPathComponent("redis.log").path, "--save", "", "--appendonly", "no",
        ] + arguments)
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if (try? await PostgresServer.shell(["redis-cli", "-p", "\(port)", "ping"]))?.contains("PONG") == true { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ServeProcess.Failure(description: "redis-server did not answer on port \(port)")
    }

    /// Stops the server (SIGTERM to its pid) and waits until it has exited.
    public func stop() async throws {
        guard let pid = self.pid else { return }
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(10)
        while isRunning(pid) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if isRunning(pid) { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(atPath: pidFile)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    public func freeze() {
        if let pid { kill(pid, SIGSTOP) }
    }

    /// Lets a frozen server go on (SIGCONT).
    public func thaw() {
        if let pid { kill(pid, SIGCONT) }
    }

    /// Kills the server with SIGKILL (a crash), without waiting for anything but its exit.
    public func crash() async throws {
        guard let pid = self.pid else { return }
        kill(pid, SIGKILL)
        let deadline = ContinuousClock.now + .seconds(10)
        while isRunning(pid) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        try? FileManager.default.removeItem(atPath: pidFile)
    }

    /// `redis-cli -p PORT …`'s output.
    public func cli(_ command: [String]) async throws -> String {
        try await PostgresServer.shell(["redis-cli", "-p", "\(port)"] + command)
    }

    var pid: pid_t? {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8) else { return nil }
        return pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    deinit {
        if let pid { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }
}

/// Whether the process runs: it exists and is not a zombie (a daemon ended is reparented to pid 1, which
/// may not reap it at once; `kill(pid, 0)` still finds a zombie).
public func isRunning(_ pid: pid_t) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return true }
    let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
    return state != "Z" && state != "X"
}
