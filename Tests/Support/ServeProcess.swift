import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A `convo serve` process of the tests: started on a free port, stopped with SIGTERM as an orchestrator does.
public final class ServeProcess: @unchecked Sendable {
    public let port: Int
    let process: Process
    let log: URL

    /// Starts `convo serve` on a free loopback port with `environment` added, and waits until `/healthz` answers.
    /// `launcher` runs before the binary (e.g. `prlimit --nofile=256:256 --`), which it must exec.
    public init(environment: [String: String], arguments: [String] = [], launcher: [String] = []) async throws {
        port = try Self.freePort()
        log = FileManager.default.temporaryDirectory.appendingPathComponent("convo-serve-\(port)-\(UUID().uuidString.prefix(6)).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        process = Process()
        let serve = ["serve", "--host", "127.0.0.1", "--port", "\(port)"] + arguments
        if let program = launcher.first {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = Array(launcher.dropFirst()) + [ConvoProcess.binary.path] + serve
        } else {
            process.executableURL = ConvoProcess.binary
            process.arguments = serve
        }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            guard process.isRunning else { throw Failure(description: "convo serve exited: \(output)") }
            if Self.answers(port) { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        process.terminate()
        throw Failure(description: "convo serve did not answer on port \(port): \(output)")
    }

    public var baseURL: String { "http://127.0.0.1:\(port)" }

    /// What the process wrote to stdout and stderr.
    public var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    public var isRunning: Bool { process.isRunning }

    /// What a failed test shows of the output: from the first crash report or fatal error on, else the tail.
    public var failureSummary: String {
        let text = output
        for marker in ["Fatal error", "💣", "Crash", "error:"] {
            if let range = text.range(of: marker) { return String(text[range.lowerBound...].prefix(2500)) }
        }
        return String(text.suffix(3000))
    }

    /// The process id, for signals a fault test sends (SIGSTOP, SIGCONT, SIGKILL).
    public var pid: Int32 { process.processIdentifier }

    /// Sends `signal` to this process (only ever one the tests started).
    public func send(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    ///
    /// - Returns: its exit status, or `nil` when it had to be killed.
    @discardableResult
    public func stop(timeout: Duration = .seconds(20)) async throws -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        return try await ConvoProcess.waitForExit(process, killAfter: timeout) ? process.terminationStatus : nil
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: log)
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// A port nothing listens on now, below the kernel's range of ephemeral ports (`ip_local_port_range`), at
    /// random, and never handed out before in this process: a port of that range, free when picked, can become
    /// the local port of any outgoing connection (the tests open thousands) before the server it was picked for
    /// binds it; and a port free only because its server is stopped for a while (a fault test's PostgreSQL or
    /// Redis, to be started again on it) must not go to another test meanwhile (a test cluster's PostgreSQL
    /// found its port taken: "Address already in use"). With `clusterBus`, port + 10000 (a Redis Cluster
    /// node's bus) is free, below that range and handed out too. The kernel's pick for port 0 when no such
    /// port is found.
    public static func freePort(clusterBus: Bool = false) throws -> Int {
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
            .split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32768
        let bus = clusterBus ? 10_000 : 0
        func claim(_ port: Int) -> Bool {
            let ports = clusterBus ? [port, port + bus] : [port]
            guard ports.allSatisfy({ $0 <= 65_535 && isFree($0) }) else { return false }
            return handedOut.withLock { handedOut in
                guard !ports.contains(where: handedOut.contains) else { return false }
                handedOut.formUnion(ports)
                return true
            }
        }
        if range - bus > 10_100 {
            for _ in 0..<500 {
                let port = Int.random(in: 10_000..<(range - bus))
                if claim(port) { return port }
            }
        }
        for _ in 0..<500 {
            let port = try kernelsFreePort()
            if claim(port) { return port }
        }
        throw Failure(description: "no free port found")
    }

    /// Every port ``freePort(clusterBus:)`` handed out in this process.
    private static let handedOut = Mutex<Set<Int>>([])

    /// The kernel's pick for port 0.
    static func kernelsFreePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw Failure(description: "bind() failed") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Whether `port` can be bound on loopback now.
    public static func isFree(_ port: Int) -> Bool {
        withLoopbackSocket(port) { fd, address, length in bind(fd, address, length) == 0 }
    }

    /// Whether something accepts TCP connections on the port.
    static func answers(_ port: Int) -> Bool {
        withLoopbackSocket(port) { fd, address, length in connect(fd, address, length) == 0 }
    }

    /// Calls `body` with a new TCP socket and 127.0.0.1:`port`, then closes the socket.
    private static func withLoopbackSocket(_ port: Int, _ body: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Bool) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}
