import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A PostgreSQL cluster of one fault test's own, on a free loopback port: the shared test server is never
/// restarted or stopped under other tests. Runs as the unprivileged `convo` user when the tests run as root
/// (initdb refuses root), like `./scripts/test`'s.
public final class PostgresServer: @unchecked Sendable {
    public let port: Int
    public let directory: URL
    var data: URL { directory.appendingPathComponent("data") }
    static let bin = ProcessInfo.processInfo.environment["PG_BIN"] ?? "/usr/lib/postgresql/15/bin"
    static let osUser = ProcessInfo.processInfo.environment["CONVO_OS_USER"] ?? "convo"

    /// Creates and starts a new cluster with a `convo` database.
    public init() async throws {
        port = try ServeProcess.freePort()
        directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("convo-pg-\(TestRun.tag)-\(port)-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        if getuid() == 0 { try await Self.shell(["chown", Self.osUser, directory.path]) }
        try await Self.shell(Self.asUser(["\(Self.bin)/initdb", "-D", data.path, "-U", "convo", "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C.UTF-8"]))
        try await start()
        try await Self.shell(Self.asUser(["\(Self.bin)/createdb", "-h", "127.0.0.1", "-p", "\(port)", "-U", "convo", "convo"]))
    }

    public var url: String { "postgres://convo@127.0.0.1:\(port)/convo" }

    /// Starts the server and waits until it accepts connections.
    public func start() async throws {
        do {
            try await startOnce()
        } catch {
            // What the server said, not only pg_ctl's "stopped waiting".
            let log = (try? String(contentsOf: directory.appendingPathComponent("server.log"), encoding: .utf8)) ?? ""
            throw ServeProcess.Failure(description: "\(error); server log: \(log.suffix(1500))")
        }
    }

    private func startOnce() async throws {
        try await Self.shell(Self.asUser([
            "\(Self.bin)/pg_ctl", "-D", data.path, "-l", directory.appendingPathComponent("server.log").path, "-w", "-t", "60",
            "-o", "-p \(port) -k \(directory.path) -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off",
            "start",
        ]))
    }

    /// `pg_ctl restart -m fast`: every session is ended, the server comes back at once.
    public func restart() async throws {
        try await Self.shell(Self.asUser(["\(Self.bin)/pg_ctl", "-D", data.path, "-m", "fast", "-w", "-t", "60", "restart",
            "-o", "-p \(port) -k \(directory.path) -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off"]))
    }

    /// `pg_ctl stop -m fast`.
    public func stop() async throws {
        try await Self.shell(Self.asUser(["\(Self.bin)/pg_ctl", "-D", data.path, "-m", "fast", "-w", "-t", "60", "stop"]))
    }

    /// The pid its pid file names, while it has one.
    public var postmasterPID: Int32? {
        guard let text = try? String(contentsOf: data.appendingPathComponent("postmaster.pid"), encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first.flatMap { Int32($0) }
    }

    /// Whether the postmaster of this cluster runs (its pid file names a live process).
    public var isRunning: Bool { postmasterPID.map { kill($0, 0) == 0 } ?? false }

    deinit {
        if isRunning { _ = try? Self.run(Self.asUser(["\(Self.bin)/pg_ctl", "-D", data.path, "-m", "immediate", "-w", "-t", "30", "stop"])) }
        try? FileManager.default.removeItem(at: directory)
    }

    static func asUser(_ command: [String]) -> [String] {
        getuid() == 0 ? ["runuser", "-u", osUser, "--"] + command : command
    }

    /// Runs a command to completion on a dispatch thread (it blocks; the cooperative pool is as wide as the
    /// cores); throws with its output when it fails.
    @discardableResult
    public static func shell(_ command: [String]) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try run(command) }) }
        }
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), which Swift's Glibc module does not
    /// import: looked up by name.
    static let addCloseFrom: @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32 = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else {
            fatalError("glibc 2.34 or later is needed (posix_spawn_file_actions_addclosefrom_np)")
        }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()

    static func run(_ command: [String]) throws -> String {
        // posix_spawn and waitpid, not Foundation's Process: Process learns that a child ended from a
        // descriptor the child inherits, and `pg_ctl start` leaves a server running that inherits it too, so
        // Process would wait for the server to stop. Output goes to a file for the same reason.
        let log = NSTemporaryDirectory() + "convo-cmd-\(UUID().uuidString).log"
        defer { unlink(log) }
        let argv = ["/bin/sh", "-c", "exec \"$@\" >\"$0\" 2>&1 </dev/null", log] + command
        var cArguments = argv.map { strdup($0) } + [nil]
        defer { for argument in cArguments { free(argument) } }
        var pid: pid_t = 0
        // The calling thread is one of Dispatch's, which block signals; a child inherits the mask, and a
        // daemon started with it would ignore SIGTERM (then need SIGKILL). The child starts with none blocked.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        // Nor does it inherit this process's descriptors: NIO's sockets are not close-on-exec, and a daemon
        // started here (a private PostgreSQL or Redis) would hold every connection the tests had open at the
        // time, so that closing one in the tests would never end its session on the server.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        guard Self.addCloseFrom(&actions, 3) == 0 else { throw ServeProcess.Failure(description: "posix_spawn_file_actions_addclosefrom_np failed") }
        let spawned = posix_spawn(&pid, "/bin/sh", &actions, &attributes, &cArguments, environ)
        guard spawned == 0 else { throw ServeProcess.Failure(description: "posix_spawn failed: \(spawned)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        let exited = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        guard exited == 0 else {
            throw ServeProcess.Failure(description: "\(command.joined(separator: " ")) exited \(exited): \(text)")
        }
        return text
    }
}
