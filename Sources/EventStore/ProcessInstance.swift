#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// This process as other processes see it.
public enum ProcessInstance {
    /// The machine's name, read with `gethostname`, not `ProcessInfo.hostName`, which resolves the name
    /// through DNS and can block a thread of the cooperative pool for seconds.
    public static let host: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        return gethostname(&buffer, buffer.count) == 0
            ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "unknown-host"
    }()

    /// `host:pid`: names this process in conflict events and webhook attempts.
    public static let name = "\(host):\(getpid())"

    /// The `application_name` of a session this process holds for `role`: `convo ROLE PID@HOST`, the process
    /// id before the host so that PostgreSQL's limit (63 bytes) cuts a long host name, not the id.
    public static func sessionName(_ role: String) -> String { "convo \(role) \(getpid())@\(host)" }

    /// The `PID@HOST` of a name ``sessionName(_:)`` made (its host cut where PostgreSQL cut it), or `nil`
    /// for another session's.
    public static func instance(inSessionName name: String) -> String? {
        guard name.hasPrefix("convo "), let last = name.split(separator: " ").last, last.contains("@") else { return nil }
        return String(last)
    }
}
