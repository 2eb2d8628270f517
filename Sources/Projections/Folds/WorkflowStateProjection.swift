import EventStore
import Foundation
import SharedTypes

/// `workflow_state`: where each conversation's workflow stands, one row per conversation, folded from its
/// `workflow-` stream by ``WorkflowState/apply(_:)``.
public struct WorkflowStateProjection: Projection {
    public var name: String
    public var version: Int
    /// Of personal data only the workflow's variables; never a text.
    public var personalDataRead: PersonalDataOpening { .only([WorkflowVariableSet.eventType]) }

    public init(name: String = "workflow_state", version: Int = 1) {
        self.name = name
        self.version = version
    }

    /// Its rows are keyed by the conversation whose stream the event is in.
    public var rowsAreConversationLocal: Bool { true }

    public func keys(of event: ProjectedEvent) throws -> [ConversationKey] {
        event.stream.category == "workflow" ? [ConversationKey(event)] : []
    }

    public func apply(_ event: ProjectedEvent, to row: WorkflowStateRow?, key: ConversationKey) throws -> WorkflowStateRow {
        var state = row?.state ?? WorkflowState()
        try state.apply(event)
        return WorkflowStateRow(key: key, state: state)
    }
}

/// A row of `workflow_state`.
public struct WorkflowStateRow: ProjectionRow {
    public var key: ConversationKey
    public var state: WorkflowState

    public init(key: ConversationKey, state: WorkflowState) {
        self.key = key
        self.state = state
        self.state.updatedAt = state.updatedAt.map(RowCoding.truncated)
    }

    public static let columns: [ProjectionColumn] = [
        .init("tenant_id", "text"),
        .init("conversation_id", "text"),
        .init("workflow_id", "text", nullable: true),
        .init("workflow_version", "int", nullable: true),
        .init("current_node", "text", nullable: true),
        .init("status", "text"),
        .init("variables", "jsonb"),
        .init("messages_consumed", "bigint"),
        .init("stream_version", "bigint"),
        .init("handed_off_to", "text", nullable: true),
        .init("failure_reason", "text", nullable: true),
        .init("updated_at", "timestamptz", nullable: true),
    ]
    public static let keyColumnCount = 2
    public static let indexes = [["tenant_id", "status"]]

    enum CodingKeys: String, CodingKey {
        case tenantId = "tenant_id"
        case conversationId = "conversation_id"
        case workflowId = "workflow_id"
        case workflowVersion = "workflow_version"
        case currentNode = "current_node"
        case status
        case variables
        case messagesConsumed = "messages_consumed"
        case streamVersion = "stream_version"
        case handedOffTo = "handed_off_to"
        case failureReason = "failure_reason"
        case updatedAt = "updated_at"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        key = ConversationKey(
            tenantId: try container.decode(String.self, forKey: .tenantId), conversationId: try container.decode(String.self, forKey: .conversationId))
        var state = WorkflowState()
        state.workflowId = try container.decodeIfPresent(String.self, forKey: .workflowId)
        state.workflowVersion = try container.decodeIfPresent(Int.self, forKey: .workflowVersion)
        state.currentNode = try container.decodeIfPresent(String.self, forKey: .currentNode)
        state.status = try container.decode(WorkflowState.Status.self, forKey: .status)
        state.variables = try container.decode([String: JSONValue].self, forKey: .variables)
        state.messagesConsumed = try container.decode(Int64.self, forKey: .messagesConsumed)
        state.version = try container.decode(Int64.self, forKey: .streamVersion)
        state.handedOffTo = try container.decodeIfPresent(String.self, forKey: .handedOffTo)
        state.failureReason = try container.decodeIfPresent(String.self, forKey: .failureReason)
        state.updatedAt = try container.decodeIfPresent(Date.self, forKey: .updatedAt)
        self.state = state
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(key.tenantId, forKey: .tenantId)
        try container.encode(key.conversationId, forKey: .conversationId)
        try container.encode(state.workflowId, forKey: .workflowId)
        try container.encode(state.workflowVersion, forKey: .workflowVersion)
        try container.encode(state.currentNode, forKey: .currentNode)
        try container.encode(state.status, forKey: .status)
        try container.encode(state.variables, forKey: .variables)
        try container.encode(state.messagesConsumed, forKey: .messagesConsumed)
        try container.encode(state.version, forKey: .streamVersion)
        try container.encode(state.handedOffTo, forKey: .handedOffTo)
        try container.encode(state.failureReason, forKey: .failureReason)
        try container.encode(state.updatedAt, forKey: .updatedAt)
    }
}
