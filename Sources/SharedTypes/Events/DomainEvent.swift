/// An event payload with a stable type name: the name is stored with the event and never changes, even
/// if the Swift type is renamed.
public protocol DomainEvent: Codable, Sendable, Equatable, PersonalFieldsDeclaring {
    static var eventType: String { get }
}

/// Every event type convo writes, by stream. Adding a type here is how a fold learns about it.
public enum EventCatalogue {
    /// `messages-{conversation}`: what visitors said, appended at ingest without a lock.
    public static let messageEvents: [any DomainEvent.Type] = [ConversationStarted.self, VisitorMessageReceived.self]
    /// `workflow-{conversation}`: what the responder decided, appended only under the visitor lock.
    public static let workflowEvents: [any DomainEvent.Type] = [
        WorkflowStarted.self, WorkflowTransitioned.self, WorkflowVariableSet.self, AssistantMessageSent.self, ToolCalled.self,
        WorkflowWaitingForInput.self, ConversationHandedOff.self, WorkflowCompleted.self, WorkflowFailed.self, AIReplyFailed.self, MessagesProcessed.self, VisitorDataErased.self,
    ]
    /// `audit-{tenant}`: what operators must see, such as two writers racing for one visitor.
    public static let auditEvents: [any DomainEvent.Type] = [ProcessingConflictDetected.self, ConversationParked.self, ConversationResumed.self, VisitorForgotten.self]

    public static var all: [any DomainEvent.Type] { messageEvents + workflowEvents + auditEvents }
}
