/// An identifier that is a validated string: its failable `init?(rawValue:)` is the only way in, and it
/// travels in JSON as the bare string (the standard library's `Codable` for `RawRepresentable`, which
/// refuses a string `init?(rawValue:)` refuses).
public protocol StringIdentifier: RawRepresentable<String>, Hashable, Sendable, Codable, CustomStringConvertible, Comparable {}

extension StringIdentifier {
    public var description: String { rawValue }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}
