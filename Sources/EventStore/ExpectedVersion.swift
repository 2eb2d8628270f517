import SharedTypes

/// What an append expects of its stream's version; a stale expectation fails with
/// ``EventStoreError/Code/wrongExpectedVersion``.
public enum ExpectedVersion: Hashable, Sendable, CustomStringConvertible {
    /// Append whatever the stream's version is.
    case any
    /// The stream must have no events yet.
    case noStream
    /// The stream must have at least one event.
    case streamExists
    /// The stream's last event must have exactly this version (`0` means the same as ``noStream``).
    case exact(Int64)

    /// The number `convo_append` takes: -1 any, -2 stream exists, 0 no stream, n exact.
    /// An exact version or no stream: the append needs no version computed from the stream.
    var isExactVersion: Bool {
        switch self {
        case .exact, .noStream: return true
        case .any, .streamExists: return false
        }
    }

    var sqlValue: Int64 {
        switch self {
        case .any: return -1
        case .streamExists: return -2
        case .noStream: return 0
        case .exact(let version): return version
        }
    }

    public var description: String {
        switch self {
        case .any: return "any"
        case .noStream: return "no stream"
        case .streamExists: return "stream exists"
        case .exact(let version): return String(version)
        }
    }
}

/// Which tenants a read covers. Every read names one: the projection runner reads all tenants, everything
/// that serves a user reads one.
public enum TenantScope: Hashable, Sendable {
    case allTenants
    case tenant(TenantID)
}
