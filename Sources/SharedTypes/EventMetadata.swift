import Foundation

/// What an event says about itself besides its payload: who caused it, in answer to what.
///
/// `correlationId` ties together everything that one visitor message set in motion; `causationId` is
/// the id of the event (or request) that directly caused this one; `actorId` is who acted, a user id
/// (``SystemActor/userID`` for the AI) or `visitor:{uid}`. Other keys travel in ``extra`` and are
/// written as top-level JSON keys next to the named ones.
public struct EventMetadata: Hashable, Sendable, Codable {
    public var correlationId: UUID?
    public var causationId: UUID?
    public var actorId: String?
    public var extra: [String: JSONValue]

    public init(correlationId: UUID? = nil, causationId: UUID? = nil, actorId: String? = nil, extra: [String: JSONValue] = [:]) {
        self.correlationId = correlationId
        self.causationId = causationId
        self.actorId = actorId
        self.extra = extra
    }

    /// A free key's value.
    public subscript(key: String) -> JSONValue? {
        get { extra[key] }
        set { extra[key] = newValue }
    }

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { self.stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
        static let correlationId = Key("correlationId")
        static let causationId = Key("causationId")
        static let actorId = Key("actorId")
        static let named: Set<String> = ["correlationId", "causationId", "actorId"]
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        self.correlationId = try container.decodeIfPresent(UUID.self, forKey: .correlationId)
        self.causationId = try container.decodeIfPresent(UUID.self, forKey: .causationId)
        self.actorId = try container.decodeIfPresent(String.self, forKey: .actorId)
        var extra: [String: JSONValue] = [:]
        for key in container.allKeys where !Key.named.contains(key.stringValue) {
            extra[key.stringValue] = try container.decode(JSONValue.self, forKey: key)
        }
        self.extra = extra
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Key.self)
        try container.encodeIfPresent(correlationId, forKey: .correlationId)
        try container.encodeIfPresent(causationId, forKey: .causationId)
        try container.encodeIfPresent(actorId, forKey: .actorId)
        for (key, value) in extra where !Key.named.contains(key) {
            try container.encode(value, forKey: Key(key))
        }
    }
}
