/// A conversation's id, chosen by the caller (the chat front end): 1 to 128 characters of ASCII letters,
/// digits, `_`, `.`, `:` and `-`.
public struct ConversationID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let rawValue: String

    public init?(rawValue: String) {
        guard Identifier.isValid(rawValue) else { return nil }
        self.rawValue = rawValue
    }

    public var description: String { rawValue }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    /// The stream of what visitors and agents said: `messages-{id}`.
    public var messagesStream: StreamName { try! StreamName(category: "messages", id: rawValue) }
    /// The stream of what the responder decided: `workflow-{id}`.
    public var workflowStream: StreamName { try! StreamName(category: "workflow", id: rawValue) }

    public init(from decoder: any Decoder) throws {
        self = try Identifier.decode(decoder, Self.init(rawValue:))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// A visitor's id, chosen by the chat front end; same alphabet as ``ConversationID``.
public struct VisitorUID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let rawValue: String

    public init?(rawValue: String) {
        guard Identifier.isValid(rawValue) else { return nil }
        self.rawValue = rawValue
    }

    public var description: String { rawValue }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    /// The actor id of this visitor in event metadata: `visitor:{uid}`.
    public var actorID: String { "visitor:\(rawValue)" }

    public init(from decoder: any Decoder) throws {
        self = try Identifier.decode(decoder, Self.init(rawValue:))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

enum Identifier {
    static func isValid(_ raw: String) -> Bool {
        let utf8 = raw.utf8
        return (1...128).contains(utf8.count)
            && utf8.allSatisfy {
                $0.isLowercaseAlphanumeric || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0)
                    || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: "-")
            }
    }

    static func decode<T>(_ decoder: any Decoder, _ make: (String) -> T?) throws -> T {
        let container = try decoder.singleValueContainer()
        let raw = try container.decode(String.self)
        guard let value = make(raw) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "1 to 128 characters of A-Z a-z 0-9 _ . : -")
        }
        return value
    }
}
