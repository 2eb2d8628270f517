/// A conversation's id, chosen by the caller (the chat front end): 1 to 128 characters of ASCII letters,
/// digits, `_`, `.`, `:` and `-`.
public struct ConversationID: StringIdentifier {
    public let rawValue: String

    public init?(rawValue: String) {
        guard Self.isValid(rawValue) else { return nil }
        self.rawValue = rawValue
    }

    /// The stream of what visitors and agents said: `messages-{id}`.
    public var messagesStream: StreamName { try! StreamName(category: "messages", id: rawValue) }
    /// The stream of what the responder decided: `workflow-{id}`.
    public var workflowStream: StreamName { try! StreamName(category: "workflow", id: rawValue) }

    /// 1 to 128 characters of A-Z a-z 0-9 `_ . : -`; visitor ids use the same alphabet.
    static func isValid(_ raw: String) -> Bool {
        let utf8 = raw.utf8
        return (1...128).contains(utf8.count)
            && utf8.allSatisfy {
                $0.isLowercaseAlphanumeric || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0)
                    || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: "-")
            }
    }
}

/// A visitor's id, chosen by the chat front end; same alphabet as ``ConversationID``.
public struct VisitorUID: StringIdentifier {
    public let rawValue: String

    public init?(rawValue: String) {
        guard ConversationID.isValid(rawValue) else { return nil }
        self.rawValue = rawValue
    }

    /// The actor id of this visitor in event metadata: `visitor:{uid}`.
    public var actorID: String { "visitor:\(rawValue)" }
}
