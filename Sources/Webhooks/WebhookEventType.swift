import SharedTypes

/// What an endpoint can subscribe to: a stored event's meaning for a help desk, named as the Standard
/// Webhooks specification suggests (`noun.verb`).
public enum WebhookEventType: String, CaseIterable, Sendable, Codable, Comparable {
    /// A conversation's first message arrived.
    case conversationStarted = "conversation.started"
    /// Someone said something in a conversation: the visitor, the AI or an agent (`data.role`).
    case messageCreated = "message.created"
    /// The workflow handed the conversation to people: a visitor is waiting for one.
    case handedOff = "conversation.handed_off"
    /// An agent took the conversation (from the AI or from another agent).
    case assigned = "conversation.assigned"
    /// An agent wrote a note the visitor never sees.
    case noteAdded = "conversation.note_added"
    /// An agent gave the conversation back to the AI.
    case handedBack = "conversation.handed_back"
    case resolved = "conversation.resolved"
    case reopened = "conversation.reopened"
    /// The responder stopped retrying a conversation that keeps failing; an operator must look at it.
    case parked = "conversation.parked"
    /// An operator handed a parked conversation back to the responder.
    case resumed = "conversation.resumed"
    /// The conversation's visitor was forgotten: what they said (and was said to them) is erased in convo;
    /// a help desk erases its copy.
    case erased = "conversation.erased"

    /// The webhook event type of a stored event type; `nil` for events no endpoint is told about.
    public static func of(storedType: String) -> WebhookEventType? { byStoredType[storedType] }

    private static let byStoredType: [String: WebhookEventType] = [
        ConversationStarted.eventType: .conversationStarted,
        VisitorMessageReceived.eventType: .messageCreated,
        AssistantMessageSent.eventType: .messageCreated,
        AgentMessageSent.eventType: .messageCreated,
        ConversationHandedOff.eventType: .handedOff,
        ConversationAssigned.eventType: .assigned,
        InternalNoteAdded.eventType: .noteAdded,
        ConversationHandedBack.eventType: .handedBack,
        ConversationResolved.eventType: .resolved,
        ConversationReopened.eventType: .reopened,
        ConversationParked.eventType: .parked,
        ConversationResumed.eventType: .resumed,
        VisitorDataErased.eventType: .erased,
    ]

    /// The most names a list may hold.
    public static let maxNames = 20

    /// Parses a list of names.
    ///
    /// - Throws: ``WebhookError/Code/invalidEventTypes`` naming the unknown ones, or when the list is empty.
    public static func parse(_ names: [String]) throws(WebhookError) -> [WebhookEventType] {
        guard !names.isEmpty else {
            throw WebhookError(code: .invalidEventTypes, message: "name at least one event type: \(allCases.map(\.rawValue).joined(separator: ", "))")
        }
        // As the API's schema says: a list is at most 20 names (repeats count).
        guard names.count <= maxNames else {
            throw WebhookError(code: .invalidEventTypes, message: "name at most \(maxNames) event types")
        }
        let unknown = names.filter { WebhookEventType(rawValue: $0) == nil }
        guard unknown.isEmpty else {
            throw WebhookError(
                code: .invalidEventTypes,
                message: "unknown event types \(unknown.prefix(5).map { "'\($0.prefix(64))'" }.joined(separator: ", ")); known: "
                    + allCases.map(\.rawValue).joined(separator: ", "))
        }
        return Set(names.compactMap(WebhookEventType.init(rawValue:))).sorted()
    }

    public static func < (lhs: WebhookEventType, rhs: WebhookEventType) -> Bool { lhs.rawValue < rhs.rawValue }
}
