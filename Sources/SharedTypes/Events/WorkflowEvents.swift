/// The responder began running a workflow for a conversation; the conversation keeps this version.
public struct WorkflowStarted: DomainEvent {
    public static let eventType = "WorkflowStarted"
    public var workflowId: String
    public var workflowVersion: Int
    public var startNodeId: String

    public init(workflowId: String, workflowVersion: Int, startNodeId: String) {
        self.workflowId = workflowId
        self.workflowVersion = workflowVersion
        self.startNodeId = startNodeId
    }
}

/// The workflow moved from one node to another, because of a visitor message (when there was one).
public struct WorkflowTransitioned: DomainEvent {
    public static let eventType = "WorkflowTransitioned"
    public var from: String?
    public var to: String
    /// The caller's id of the message being handled, if any.
    public var causedByMessageId: String?

    public init(from: String?, to: String, causedByMessageId: String?) {
        self.from = from
        self.to = to
        self.causedByMessageId = causedByMessageId
    }
}

/// A workflow variable took a value (a saved answer, a tool's result).
public struct WorkflowVariableSet: DomainEvent {
    public static let eventType = "WorkflowVariableSet"
    public var name: String
    public var value: JSONValue
    public var nodeId: String

    public init(name: String, value: JSONValue, nodeId: String) {
        self.name = name
        self.value = value
        self.nodeId = nodeId
    }
}

/// The responder said something to the visitor.
public struct AssistantMessageSent: DomainEvent {
    public static let eventType = "AssistantMessageSent"
    public var text: String
    public var nodeId: String
    /// The visitor messages (their ids) this answers; several when a burst is answered at once.
    public var inReplyTo: [String]
    /// `workflow` for a message node's text; the AI provider's name for an `ai_reply`.
    public var provider: String
    public var model: String?
    public var latencyMs: Int?

    public init(text: String, nodeId: String, inReplyTo: [String], provider: String, model: String? = nil, latencyMs: Int? = nil) {
        self.text = text
        self.nodeId = nodeId
        self.inReplyTo = inReplyTo
        self.provider = provider
        self.model = model
        self.latencyMs = latencyMs
    }
}

/// A catalogue tool ran, or was refused, on behalf of `actorId` (the System user for the AI).
public struct ToolCalled: DomainEvent {
    public static let eventType = "ToolCalled"

    public enum Outcome: String, Codable, Sendable {
        case succeeded
        case rejected
    }

    public var tool: String
    public var arguments: JSONValue
    public var outcome: Outcome
    /// Why the call was rejected (bad arguments, a tool the node does not allow).
    public var error: String?
    public var actorId: String
    public var nodeId: String

    public init(tool: String, arguments: JSONValue, outcome: Outcome, error: String? = nil, actorId: String, nodeId: String) {
        self.tool = tool
        self.arguments = arguments
        self.outcome = outcome
        self.error = error
        self.actorId = actorId
        self.nodeId = nodeId
    }
}

/// The workflow paused at a `wait_for_input` node until the visitor's next message.
public struct WorkflowWaitingForInput: DomainEvent {
    public static let eventType = "WorkflowWaitingForInput"
    public var nodeId: String

    public init(nodeId: String) { self.nodeId = nodeId }
}

/// The conversation went to a human; the AI stops answering.
public struct ConversationHandedOff: DomainEvent {
    public static let eventType = "ConversationHandedOff"
    public var nodeId: String
    public var team: String?
    public var reason: String?

    public init(nodeId: String, team: String?, reason: String?) {
        self.nodeId = nodeId
        self.team = team
        self.reason = reason
    }

    /// Who takes the conversation: the team, or `agents` when the workflow named none.
    public var assignee: String { team ?? "agents" }
}

/// The workflow reached an `end` node.
public struct WorkflowCompleted: DomainEvent {
    public static let eventType = "WorkflowCompleted"
    public var nodeId: String

    public init(nodeId: String) { self.nodeId = nodeId }
}

/// The workflow could not go on (the AI provider failed with no fallback, the step limit was hit).
public struct WorkflowFailed: DomainEvent {
    public static let eventType = "WorkflowFailed"
    public var nodeId: String?
    public var reason: String

    public init(nodeId: String?, reason: String) {
        self.nodeId = nodeId
        self.reason = reason
    }
}

/// The AI provider could not answer at an `ai_reply` node that names an `onFailure` node; the workflow
/// went there instead of failing.
public struct AIReplyFailed: DomainEvent {
    public static let eventType = "AIReplyFailed"
    public var nodeId: String
    public var provider: String
    public var reason: String

    public init(nodeId: String, provider: String, reason: String) {
        self.nodeId = nodeId
        self.provider = provider
        self.reason = reason
    }
}

/// The workflow has consumed the `messages-` stream up to this version.
public struct MessagesProcessed: DomainEvent {
    public static let eventType = "MessagesProcessed"
    public var upToVersion: Int64

    public init(upToVersion: Int64) { self.upToVersion = upToVersion }
}

/// The visitor of this conversation was forgotten: every personal member of the conversation's events
/// sealed until now reads as erased, and the visitor messages up to `messagesVersion` count as consumed,
/// so the responder never answers what it can no longer read. Appended to the `workflow-` stream before the
/// visitor's key is destroyed: a decision taken on what was read before meets the expected-version check.
public struct VisitorDataErased: DomainEvent {
    public static let eventType = "VisitorDataErased"
    public var visitorUid: VisitorUID
    /// The `messages-` stream's version when the visitor was forgotten.
    public var messagesVersion: Int64
    /// The id of the tenant's ``VisitorForgotten`` record.
    public var erasureId: String

    public init(visitorUid: VisitorUID, messagesVersion: Int64, erasureId: String) {
        self.visitorUid = visitorUid
        self.messagesVersion = messagesVersion
        self.erasureId = erasureId
    }
}
