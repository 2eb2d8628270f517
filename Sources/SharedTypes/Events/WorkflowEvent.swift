/// One event of a `workflow-` stream, typed. The engine decides these; the workflowState fold applies them.
public enum WorkflowEvent: Sendable, Equatable {
    case started(WorkflowStarted)
    case transitioned(WorkflowTransitioned)
    case variableSet(WorkflowVariableSet)
    case assistantMessageSent(AssistantMessageSent)
    case toolCalled(ToolCalled)
    case waitingForInput(WorkflowWaitingForInput)
    case handedOff(ConversationHandedOff)
    case completed(WorkflowCompleted)
    case failed(WorkflowFailed)
    case aiReplyFailed(AIReplyFailed)
    case messagesProcessed(MessagesProcessed)
    case assigned(ConversationAssigned)
    case agentMessageSent(AgentMessageSent)
    case noteAdded(InternalNoteAdded)
    case handedBack(ConversationHandedBack)
    case resolved(ConversationResolved)
    case reopened(ConversationReopened)
    case dataErased(VisitorDataErased)

    /// The payload, for encoding.
    public var payload: any DomainEvent {
        switch self {
        case .started(let event): return event
        case .transitioned(let event): return event
        case .variableSet(let event): return event
        case .assistantMessageSent(let event): return event
        case .toolCalled(let event): return event
        case .waitingForInput(let event): return event
        case .handedOff(let event): return event
        case .completed(let event): return event
        case .failed(let event): return event
        case .aiReplyFailed(let event): return event
        case .messagesProcessed(let event): return event
        case .assigned(let event): return event
        case .agentMessageSent(let event): return event
        case .noteAdded(let event): return event
        case .handedBack(let event): return event
        case .resolved(let event): return event
        case .reopened(let event): return event
        case .dataErased(let event): return event
        }
    }

    /// The stored type name.
    public var eventType: String { type(of: payload).eventType }

    /// Decodes a stored workflow event; `nil` when its type is not a workflow event type.
    ///
    /// Each payload is read by hand (``PayloadReadable``) and left to `JSONDecoder` only when that cannot.
    ///
    /// - Throws: the payload decoder's error when the payload does not fit its type.
    public static func decode(_ stored: some StoredPayload) throws -> WorkflowEvent? {
        let eventType = stored.type
        switch eventType {
        case WorkflowStarted.eventType: return .started(try stored.read(WorkflowStarted.self))
        case WorkflowTransitioned.eventType: return .transitioned(try stored.read(WorkflowTransitioned.self))
        case WorkflowVariableSet.eventType: return .variableSet(try stored.read(WorkflowVariableSet.self))
        case AssistantMessageSent.eventType: return .assistantMessageSent(try stored.read(AssistantMessageSent.self))
        case ToolCalled.eventType: return .toolCalled(try stored.read(ToolCalled.self))
        case WorkflowWaitingForInput.eventType: return .waitingForInput(try stored.read(WorkflowWaitingForInput.self))
        case ConversationHandedOff.eventType: return .handedOff(try stored.read(ConversationHandedOff.self))
        case WorkflowCompleted.eventType: return .completed(try stored.read(WorkflowCompleted.self))
        case WorkflowFailed.eventType: return .failed(try stored.read(WorkflowFailed.self))
        case AIReplyFailed.eventType: return .aiReplyFailed(try stored.read(AIReplyFailed.self))
        case MessagesProcessed.eventType: return .messagesProcessed(try stored.read(MessagesProcessed.self))
        case ConversationAssigned.eventType: return .assigned(try stored.read(ConversationAssigned.self))
        case AgentMessageSent.eventType: return .agentMessageSent(try stored.read(AgentMessageSent.self))
        case InternalNoteAdded.eventType: return .noteAdded(try stored.read(InternalNoteAdded.self))
        case ConversationHandedBack.eventType: return .handedBack(try stored.read(ConversationHandedBack.self))
        case ConversationResolved.eventType: return .resolved(try stored.read(ConversationResolved.self))
        case ConversationReopened.eventType: return .reopened(try stored.read(ConversationReopened.self))
        case VisitorDataErased.eventType: return .dataErased(try stored.read(VisitorDataErased.self))
        default: return nil
        }
    }
}

/// A workflow event encodes as its payload: what is stored under ``WorkflowEvent/eventType``.
extension WorkflowEvent: Encodable {
    public func encode(to encoder: any Encoder) throws { try payload.encode(to: encoder) }
}

/// A stored event's type name and a way to decode its payload; the event store's recorded events are one.
public protocol StoredPayload {
    var type: String { get }
    func decode<T: Decodable>(_ type: T.Type) throws -> T
    /// Calls `body` with the payload's UTF-8 JSON bytes.
    func withPayloadBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}
