import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A Redis server of one fault test's own, on a free loopback port: stopped and started again without
/// touching the shared one. Ended by its pid (from its pid file), never by name.
public final class RedisServer: @unchecked Sendable {
    public let port: Int
    let directory: URL

    public init() async throws {
        port = try ServeProcess.freePort()
        directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("convo-redis-\(port)-\(UUID().uuidString.prefix(6))")
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
        ])
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
        while kill(pid, 0) == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(atPath: pidFile)
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
