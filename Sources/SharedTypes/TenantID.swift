/// The tenant that owns a piece of data. Every event, row and read in convo carries one.
///
/// A tenant id is 1 to 64 characters of lowercase ASCII letters, digits, `_` and `-`, starting with a
/// letter or digit, so it is safe in URLs, log metadata and Redis keys.
public struct TenantID: StringIdentifier {
    public let rawValue: String

    /// Creates a tenant id, or returns `nil` when `rawValue` is not a valid one.
    public init?(rawValue: String) {
        guard Self.isValid(rawValue) else { return nil }
        self.rawValue = rawValue
    }

    /// Creates a tenant id from a literal known to be valid.
    ///
    /// - Precondition: `rawValue` is a valid tenant id.
    public init(_ rawValue: String) {
        precondition(Self.isValid(rawValue), "invalid tenant id")
        self.rawValue = rawValue
    }

    /// The tenant that `./scripts/dev` creates.
    public static let `default` = TenantID("default")

    static func isValid(_ raw: String) -> Bool {
        let utf8 = raw.utf8
        guard (1...64).contains(utf8.count), let first = utf8.first, first.isLowercaseAlphanumeric else { return false }
        return utf8.allSatisfy { $0.isLowercaseAlphanumeric || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }
}

extension UInt8 {
    var isLowercaseAlphanumeric: Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(self) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(self)
    }
}
