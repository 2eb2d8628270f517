/// The people of a conversation. Each of these is appended to the conversation's `workflow-` stream at the
/// version its author read, like the AI's decisions: a change of owner moves the stream on, so an AI
/// decision taken before it meets the expected-version check and is thrown away, whatever the timing.
/// Their `actorId` (in the metadata) is the person's user id.

/// The conversation was given to an agent: taken over from the AI, or passed on from another agent.
public struct ConversationAssigned: DomainEvent {
    public static let eventType = "ConversationAssigned"
    /// The agent who owns the conversation now.
    public var agentId: String
    public var agentName: String
    /// The agent who owned it before; `nil` when it comes from the AI (or from nobody, after a hand-off).
    public var fromAgentId: String?

    public init(agentId: String, agentName: String, fromAgentId: String?) {
        self.agentId = agentId
        self.agentName = agentName
        self.fromAgentId = fromAgentId
    }
}

/// An agent said something to the visitor.
public struct AgentMessageSent: DomainEvent {
    public static let eventType = "AgentMessageSent"
    /// The caller's id of the message (its idempotency key).
    public var messageId: String
    public var text: String
    public var agentId: String
    public var agentName: String

    public init(messageId: String, text: String, agentId: String, agentName: String) {
        self.messageId = messageId
        self.text = text
        self.agentId = agentId
        self.agentName = agentName
    }
}

/// A note between people, never shown to the visitor.
public struct InternalNoteAdded: DomainEvent {
    public static let eventType = "InternalNoteAdded"
    public var noteId: String
    public var text: String
    public var agentId: String
    public var agentName: String

    public init(noteId: String, text: String, agentId: String, agentName: String) {
        self.noteId = noteId
        self.text = text
        self.agentId = agentId
        self.agentName = agentName
    }
}

/// The owning agent gave the conversation back to the AI, which goes on from `nodeId` of the
/// conversation's workflow version.
public struct ConversationHandedBack: DomainEvent {
    public static let eventType = "ConversationHandedBack"
    public var nodeId: String
    public var agentId: String

    public init(nodeId: String, agentId: String) {
        self.nodeId = nodeId
        self.agentId = agentId
    }
}

/// The conversation is done: nobody answers it until it is reopened.
public struct ConversationResolved: DomainEvent {
    public static let eventType = "ConversationResolved"
    public var agentId: String

    public init(agentId: String) { self.agentId = agentId }
}

/// A resolved conversation is open again, with the agent who owned it (or waiting for one).
public struct ConversationReopened: DomainEvent {
    public static let eventType = "ConversationReopened"
    /// The agent who reopened it; `nil` when a visitor's message did.
    public var agentId: String?
    /// The visitor message that reopened it.
    public var causedByMessageId: String?

    public init(agentId: String?, causedByMessageId: String?) {
        self.agentId = agentId
        self.causedByMessageId = causedByMessageId
    }
}
