import EventStore
import Foundation
import SharedTypes

/// Where a conversation's workflow stands: a pure fold of its `workflow-` stream. Nobody writes it; it is
/// rebuilt from the events at will, so an overwrite cannot go unnoticed.
public struct WorkflowState: Sendable, Equatable, Codable {
    public enum Status: String, Sendable, Codable, CaseIterable {
        /// No workflow event yet.
        case notStarted = "not_started"
        /// Between nodes while the responder works.
        case running
        /// Paused at a `wait_for_input` node.
        case waitingForInput = "waiting_for_input"
        /// Waiting for a human; the AI no longer answers.
        case handedOff = "handed_off"
        /// Owned by an agent (``WorkflowState/assignedTo``); the AI no longer answers.
        case assigned
        /// Done; nobody answers until it is reopened.
        case resolved
        case completed
        case failed

        /// Whether the workflow no longer reacts to visitor messages.
        public var isFinal: Bool { self == .handedOff || self == .assigned || self == .resolved || self == .completed || self == .failed }

        /// Whether a person, not the AI, has the conversation (waiting for one, owning it, or done with it).
        public var isWithPeople: Bool { self == .handedOff || self == .assigned || self == .resolved }
    }

    public var workflowId: String?
    public var workflowVersion: Int?
    public var currentNode: String?
    public var status: Status
    public var variables: [String: JSONValue]
    /// The `messages-` stream version the workflow has consumed up to.
    public var messagesConsumed: Int64
    /// The `workflow-` stream version this state reflects.
    public var version: Int64
    public var handedOffTo: String?
    /// The agent (user id) who owns the conversation; `nil` while the AI or nobody does.
    public var assignedTo: String?
    public var failureReason: String?
    public var updatedAt: Date?

    public init() {
        status = .notStarted
        variables = [:]
        messagesConsumed = 0
        version = 0
    }

    /// Applies one event. Pure: the same events in the same order always give the same state.
    public mutating func apply(_ event: WorkflowEvent, version: Int64, at date: Date?) {
        switch event {
        case .started(let started):
            workflowId = started.workflowId
            workflowVersion = started.workflowVersion
            currentNode = started.startNodeId
            status = .running
        case .transitioned(let transition):
            currentNode = transition.to
            if !status.isFinal { status = .running }
        case .variableSet(let set):
            variables[set.name] = set.value
        case .assistantMessageSent, .toolCalled, .aiReplyFailed:
            break
        case .waitingForInput(let waiting):
            currentNode = waiting.nodeId
            status = .waitingForInput
        case .handedOff(let handoff):
            currentNode = handoff.nodeId
            status = .handedOff
            handedOffTo = handoff.assignee
        case .completed(let completed):
            currentNode = completed.nodeId
            status = .completed
        case .failed(let failed):
            if let node = failed.nodeId { currentNode = node }
            status = .failed
            failureReason = failed.reason
        case .messagesProcessed(let processed):
            messagesConsumed = max(messagesConsumed, processed.upToVersion)
        case .assigned(let assigned):
            assignedTo = assigned.agentId
            if status != .resolved { status = .assigned }
        case .agentMessageSent, .noteAdded:
            break
        case .handedBack(let back):
            assignedTo = nil
            handedOffTo = nil
            currentNode = back.nodeId
            status = .running
        case .resolved:
            status = .resolved
        case .reopened:
            // Back to its people: the owner, or whoever takes it.
            status = assignedTo != nil ? .assigned : .handedOff
        case .dataErased(let erased):
            // What a fold of the erased events gives: every value set so far was sealed with the destroyed key.
            messagesConsumed = max(messagesConsumed, erased.messagesVersion)
            for name in variables.keys { variables[name] = .string(PersonalData.erasedPlaceholder) }
        }
        self.version = version
        if let date { updatedAt = date }
    }

    /// Applies a stored event of the conversation's `workflow-` stream.
    ///
    /// - Throws: ``FoldError`` when the event is not a workflow event or its payload does not decode.
    public mutating func apply(_ recorded: RecordedEvent) throws {
        try apply(ProjectedEvent(recorded))
    }

    /// Applies an event of the conversation's `workflow-` stream, its payload decoded.
    ///
    /// - Throws: ``FoldError`` when the event is not a workflow event or its payload did not decode.
    public mutating func apply(_ event: ProjectedEvent) throws {
        guard event.streamVersion == version + 1 else {
            throw FoldError(event, "expected stream version \(version + 1), got \(event.streamVersion)")
        }
        apply(try event.workflowEvent(), version: event.streamVersion, at: event.recordedAt)
    }

    /// The state after `events`, from the beginning of the stream.
    ///
    /// - Throws: ``FoldError`` for an event the fold cannot apply.
    public static func fold(_ events: some Sequence<RecordedEvent>) throws -> WorkflowState {
        var state = WorkflowState()
        for event in events { try state.apply(event) }
        return state
    }
}
