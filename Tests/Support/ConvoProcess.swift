import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Runs the built `convo` binary as a separate process, as an operator or a second instance would.
public enum ConvoProcess {
    public struct Output: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// The `convo` binary: in `CONVO_TEST_BINARY_DIR` (set by `./scripts/test`), else the debug build folder.
    public static var binary: URL {
        if let dir = ProcessInfo.processInfo.environment["CONVO_TEST_BINARY_DIR"] {
            return URL(fileURLWithPath: dir).appendingPathComponent("convo")
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug/convo").standardized
    }

    /// Runs `convo arguments…` to completion with `environment` added to this process's, and returns its output.
    public static func run(_ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(60)) async throws -> Output {
        try await run(executable: binary, arguments, environment: environment, timeout: timeout)
    }

    /// Runs another program the same way (a test tool: the browser tests' Selenium script).
    public static func run(executable: URL, _ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(60)) async throws -> Output {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Read both pipes while the process runs, so a full pipe never blocks it. The reads block, so they
        // run on dispatch threads: on the cooperative pool (as wide as the cores) they would starve every
        // other test of the process for as long as the child runs.
        async let out = readToEnd(stdout.fileHandleForReading)
        async let err = readToEnd(stderr.fileHandleForReading)
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now > deadline {
                process.terminate()
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        // A child that ignores SIGTERM is killed after a grace period, so a run never waits on it forever.
        try await waitForExit(process, killAfter: .seconds(5))
        return Output(status: process.terminationStatus, stdout: String(decoding: await out, as: UTF8.self), stderr: String(decoding: await err, as: UTF8.self))
    }

    /// Waits for `process` to exit, sending SIGKILL once `killAfter` has passed.
    ///
    /// - Returns: whether it exited by itself.
    @discardableResult
    static func waitForExit(_ process: Process, killAfter: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now + killAfter
        while process.isRunning, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        guard process.isRunning else { return true }
        kill(process.processIdentifier, SIGKILL)
        while process.isRunning { try await Task.sleep(for: .milliseconds(20)) }
        return false
    }

    private static func readToEnd(_ handle: FileHandle) async -> Data {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: handle.readDataToEndOfFile()) }
        }
    }
}
