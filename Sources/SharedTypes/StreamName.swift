/// The name of an event stream: `category-id`, e.g. `messages-8f2c…` or `workflow-8f2c…`.
///
/// The category is everything before the first `-`; it is 1 to 64 lowercase letters, digits or `_`.
/// The id is the rest: 1 to 200 printable ASCII characters (no spaces or control characters).
public struct StreamName: Hashable, Sendable, Codable, CustomStringConvertible {
    public let category: String
    public let id: String

    /// Creates a stream name from its parts.
    ///
    /// - Throws: ``StreamName/InvalidName`` when either part is not valid.
    public init(category: String, id: String) throws(InvalidName) {
        guard Self.isValidCategory(category) else { throw InvalidName(value: "\(category)-\(id)", reason: "invalid category") }
        guard Self.isValidID(id) else { throw InvalidName(value: "\(category)-\(id)", reason: "invalid id") }
        self.category = category
        self.id = id
    }

    /// Parses `category-id`.
    ///
    /// - Throws: ``StreamName/InvalidName`` when there is no `-` or a part is not valid.
    public init(parsing value: String) throws(InvalidName) {
        guard let dash = value.firstIndex(of: "-") else { throw InvalidName(value: value, reason: "expected category-id") }
        try self.init(category: String(value[..<dash]), id: String(value[value.index(after: dash)...]))
    }

    /// Creates a stream name from a value the store wrote, without validating it again.
    public init(unchecked value: String) {
        // Searched as bytes: the store reads one of these per event, and a search by `Character` was a few per
        // cent of a rebuild. `-` is ASCII, so its byte index is also a valid index of the string.
        let utf8 = value.utf8
        if let dash = utf8.firstIndex(of: UInt8(ascii: "-")) {
            self.category = String(Substring(utf8[..<dash]))
            self.id = String(Substring(utf8[utf8.index(after: dash)...]))
        } else {
            self.category = value
            self.id = ""
        }
    }

    public var description: String { "\(category)-\(id)" }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let raw = try container.decode(String.self)
        do {
            try self.init(parsing: raw)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "\(error)")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// Whether `category` is a valid stream category.
    public static func isValidCategory(_ category: String) -> Bool {
        let utf8 = category.utf8
        return (1...64).contains(utf8.count) && utf8.allSatisfy { $0.isLowercaseAlphanumeric || $0 == UInt8(ascii: "_") }
    }

    static func isValidID(_ id: String) -> Bool {
        let utf8 = id.utf8
        return (1...200).contains(utf8.count) && utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }

    /// A stream name that is not `category-id`.
    public struct InvalidName: Error, CustomStringConvertible {
        public let value: String
        public let reason: String
        public var description: String { "invalid stream name '\(value)': \(reason)" }
    }
}
