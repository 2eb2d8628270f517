import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The tests' webhook receiver (`Tests/webhooks/receiver.py`, Python with the Standard Webhooks reference
/// library): every delivery's signature checked, every request logged as a JSON line. Started on a free
/// loopback port in a folder of its own (`convo-receiver-RUN-…`, so `./scripts/test` ends it should the
/// test process crash); stopped and killed by its pid only.
public final class WebhookReceiver: @unchecked Sendable {
    public struct Entry: Decodable, Sendable {
        public var id: String
        public var verified: Bool
        /// The sender went away before the whole body came (a killed instance): not a delivery.
        public var truncated: Bool?
        public var status: Int
        public var type: String?
        public var conversationId: String?
        public var position: Int64?
        public var eventType: String?
        public var signatures: Int
        public var receivedAt: Double
    }

    public let port: Int
    let directory: URL
    let secrets: [String]
    let options: [String]

    /// - Parameter options: the receiver's misbehaviour, e.g. `["--refuse-every", "4"]`.
    public init(secrets: [String], options: [String] = [], port: Int? = nil) async throws {
        guard let python = ProcessInfo.processInfo.environment["CONVO_TEST_PYTHON"] else {
            throw ServeProcess.Failure(description: "CONVO_TEST_PYTHON is not set: run the tests through ./scripts/test, which installs standardwebhooks")
        }
        self.python = python
        self.port = try port ?? ServeProcess.freePort()
        self.secrets = secrets
        self.options = options
        directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("convo-receiver-\(TestRun.tag)-\(self.port)-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: logPath, contents: nil)
        try await start()
    }

    let python: String
    public var url: String { "http://127.0.0.1:\(port)/hook" }
    var logPath: String { directory.appendingPathComponent("received.jsonl").path }
    var pidFile: String { directory.appendingPathComponent("receiver.pid").path }
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("webhooks/receiver.py").path

    /// Starts the receiver (again, on the same port and log) and waits until it accepts connections.
    public func start() async throws {
        let command = [python, Self.script, "--port", "\(port)", "--log", logPath] + secrets.flatMap { ["--secret", $0] } + options
        try await PostgresServer.shell([
            "/bin/sh", "-c", "\"$@\" >>\"$0/receiver.out\" 2>&1 </dev/null & echo $! >\"$0/receiver.pid\"", directory.path,
        ] + command)
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            if ServeProcess.answers(port) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ServeProcess.Failure(description: "the webhook receiver did not listen on \(port): \((try? String(contentsOfFile: directory.appendingPathComponent("receiver.out").path, encoding: .utf8)) ?? "")")
    }

    /// Kills it (SIGKILL: the receiver is down, connections refused) and waits for the port to be free.
    public func kill() async throws {
        guard let pid else { return }
        Glibc.kill(pid, SIGKILL)
        let deadline = ContinuousClock.now + .seconds(10)
        while (isRunning(pid) || ServeProcess.answers(port)) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        try? FileManager.default.removeItem(atPath: pidFile)
    }

    /// Waits up to `timeout` for the receiver to end by itself (`--die-after-accepting`); whether it did.
    public func waitForExit(timeout: Duration = .seconds(30)) async throws -> Bool {
        guard let pid else { return true }
        let deadline = ContinuousClock.now + timeout
        while isRunning(pid) {
            guard ContinuousClock.now < deadline else { return false }
            try await Task.sleep(for: .milliseconds(20))
        }
        // Ended: its pid is no longer ours to signal.
        try? FileManager.default.removeItem(atPath: pidFile)
        return true
    }

    /// Every request so far, in the order they were taken: each is logged before its answer is written, so a
    /// receiver killed in between has logged an acceptance its sender never saw.
    public func entries() throws -> [Entry] {
        let text = try String(contentsOfFile: logPath, encoding: .utf8)
        return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(Entry.self, from: Data($0.utf8)) }
    }

    var pid: pid_t? {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8) else { return nil }
        return pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    deinit {
        if let pid { Glibc.kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }
}
