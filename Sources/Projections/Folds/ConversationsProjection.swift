import EventStore
import Foundation
import SharedTypes

/// `conversations`: one row per conversation for inboxes and dashboards — visitor, status, hand-off, tags,
/// notes, message counts, how many visitor messages still wait for the responder, last activity. Folded
/// from the conversation's `messages-` and `workflow-` streams; tools act through the `ToolCalled` events
/// they record.
public struct ConversationsProjection: Projection {
    public var name: String
    public var version: Int
    /// Of personal data only tool calls' arguments (a status, a tag); never a text.
    public var personalDataRead: PersonalDataOpening { .only([ToolCalled.eventType]) }

    public init(name: String = "conversations", version: Int = 3) {
        self.name = name
        self.version = version
    }

    static let categories: Set<String> = ["messages", "workflow"]

    /// Its rows are keyed by the conversation whose stream the event is in.
    public var rowsAreConversationLocal: Bool { true }

    public func keys(of event: ProjectedEvent) throws -> [ConversationKey] {
        Self.categories.contains(event.stream.category) ? [ConversationKey(event)] : []
    }

    public func apply(_ event: ProjectedEvent, to row: ConversationRow?, key: ConversationKey) throws -> ConversationRow {
        var row = row ?? ConversationRow(key: key)
        let at = RowCoding.truncated(event.recordedAt)
        row.lastActivityAt = max(row.lastActivityAt ?? at, at)
        row.lastPosition = max(row.lastPosition, event.globalPosition)
        switch event.stream.category {
        case "messages":
            try applyMessage(event, to: &row, at: at)
        default:
            try applyWorkflow(event, to: &row, at: at)
        }
        row.unprocessedCount = max(0, row.messagesVersion - max(row.messagesConsumed, row.startedVersion))
        return row
    }

    private func applyMessage(_ event: ProjectedEvent, to row: inout ConversationRow, at: Date) throws {
        guard event.streamVersion == row.messagesVersion + 1 else {
            throw FoldError(event, "expected messages version \(row.messagesVersion + 1), got \(event.streamVersion)")
        }
        row.messagesVersion = event.streamVersion
        switch event.type {
        case ConversationStarted.eventType:
            let started = try event.message(ConversationStarted.self)
            row.visitorUid = started.visitorUid.rawValue
            row.startedAt = at
            row.startedVersion = event.streamVersion
        case VisitorMessageReceived.eventType:
            let message = try event.message(VisitorMessageReceived.self)
            if row.visitorUid == nil { row.visitorUid = message.visitorUid.rawValue }
            row.visitorMessages += 1
            // With people: unread until an agent answers.
            if row.withPeopleSince != nil { row.unreadCount += 1 }
            // A visitor writing again reopens a resolved conversation.
            if row.status == "resolved" { row.status = "open" }
        default:
            throw FoldError(event, "not a message event type")
        }
    }

    private func applyWorkflow(_ event: ProjectedEvent, to row: inout ConversationRow, at: Date) throws {
        guard event.streamVersion == row.workflowVersion + 1 else {
            throw FoldError(event, "expected workflow version \(row.workflowVersion + 1), got \(event.streamVersion)")
        }
        row.workflowVersion = event.streamVersion
        switch try event.workflowEvent() {
        case .started, .transitioned, .variableSet, .waitingForInput, .aiReplyFailed, .completed, .failed:
            break
        case .assistantMessageSent:
            row.assistantMessages += 1
        case .toolCalled(let call):
            guard call.outcome == .succeeded, let tool = ToolName(rawValue: call.tool) else { break }
            switch tool {
            case .setConversationStatus:
                if let status = call.arguments["status"]?.stringValue { row.status = status }
            case .addVisitorNote:
                row.noteCount += 1
            case .addTag:
                if let tag = call.arguments["tag"]?.stringValue, !row.tags.contains(tag) {
                    row.tags.append(tag)
                    row.tags.sort()
                }
            case .updateVisitorProfile, .requestHandoff:
                // The profile is the visitors projection's; the hand-off arrives as its own event.
                break
            }
        case .handedOff(let handoff):
            row.handedOffTo = handoff.assignee
            row.status = "pending"
            row.startWithPeople(at: at)
        case .messagesProcessed(let processed):
            row.messagesConsumed = max(row.messagesConsumed, processed.upToVersion)
        case .assigned(let assigned):
            row.assignedTo = assigned.agentId
            if row.status != "resolved" { row.status = "pending" }
            row.startWithPeople(at: at)
        case .agentMessageSent:
            row.agentMessages += 1
            row.unreadCount = 0
            if row.firstResponseAt == nil { row.firstResponseAt = at }
        case .noteAdded:
            row.noteCount += 1
        case .handedBack:
            row.assignedTo = nil
            row.handedOffTo = nil
            row.status = "open"
            row.withPeopleSince = nil
            row.firstResponseAt = nil
            row.unreadCount = 0
        case .resolved:
            row.status = "resolved"
        case .reopened:
            row.status = "pending"
        case .dataErased(let erased):
            row.messagesConsumed = max(row.messagesConsumed, erased.messagesVersion)
        }
    }
}

/// A row of `conversations`.
public struct ConversationRow: ProjectionRow {
    public var tenantId: String
    public var conversationId: String
    public var visitorUid: String?
    /// `open`, `pending` (with a human) or `resolved`, as `set_conversation_status` and hand-offs set it.
    public var status = "open"
    public var handedOffTo: String?
    public var tags: [String] = []
    public var noteCount: Int64 = 0
    public var visitorMessages: Int64 = 0
    public var assistantMessages: Int64 = 0
    /// The `messages-` stream's version, and how far the responder has consumed it.
    public var messagesVersion: Int64 = 0
    public var messagesConsumed: Int64 = 0
    /// The `workflow-` stream's version.
    public var workflowVersion: Int64 = 0
    /// The global position of the last event folded in.
    public var lastPosition: Int64 = 0
    /// The version of `ConversationStarted` in the `messages-` stream (it is not a message to answer).
    public var startedVersion: Int64 = 0
    /// Visitor messages the responder has not consumed yet.
    public var unprocessedCount: Int64 = 0
    /// The agent (user id) who owns the conversation.
    public var assignedTo: String?
    public var agentMessages: Int64 = 0
    /// Visitor messages since the conversation went to people, or since an agent last answered.
    public var unreadCount: Int64 = 0
    /// When the conversation went to people (a hand-off or an assignment); `nil` while with the AI.
    public var withPeopleSince: Date?
    /// The first agent message since then.
    public var firstResponseAt: Date?

    /// From ``withPeopleSince`` to ``firstResponseAt``; `nil` until an agent has answered.
    public var firstResponseSeconds: Double? {
        guard let since = withPeopleSince, let first = firstResponseAt else { return nil }
        return max(0, first.timeIntervalSince(since))
    }
    public var startedAt: Date?
    public var lastActivityAt: Date?

    public init(key: ConversationKey) {
        self.tenantId = key.tenantId
        self.conversationId = key.conversationId
    }

    public var key: ConversationKey { ConversationKey(tenantId: tenantId, conversationId: conversationId) }

    public static let columns: [ProjectionColumn] = [
        .init("tenant_id", "text"),
        .init("conversation_id", "text"),
        .init("visitor_uid", "text", nullable: true),
        .init("status", "text"),
        .init("handed_off_to", "text", nullable: true),
        .init("tags", "text[]"),
        .init("note_count", "bigint"),
        .init("visitor_messages", "bigint"),
        .init("assistant_messages", "bigint"),
        .init("messages_version", "bigint"),
        .init("messages_consumed", "bigint"),
        .init("workflow_version", "bigint"),
        .init("last_position", "bigint"),
        .init("started_version", "bigint"),
        .init("unprocessed_count", "bigint"),
        .init("started_at", "timestamptz", nullable: true),
        .init("last_activity_at", "timestamptz", nullable: true),
        .init("assigned_to", "text", nullable: true),
        .init("agent_messages", "bigint"),
        .init("unread_count", "bigint"),
        .init("with_people_since", "timestamptz", nullable: true),
        .init("first_response_at", "timestamptz", nullable: true),
    ]
    public static let keyColumnCount = 2
    public static let indexes = [
        ["tenant_id", "status", "last_activity_at"], ["tenant_id", "visitor_uid"], ["unprocessed_count"],
        // The inbox (``ConversationsProjection/inbox(_:tenant:client:logger:)``): newest activity first, by status or assignee.
        ["tenant_id", "last_position"], ["tenant_id", "status", "last_position"], ["tenant_id", "assigned_to", "last_position"],
    ]

    enum CodingKeys: String, CodingKey {
        case tenantId = "tenant_id"
        case conversationId = "conversation_id"
        case visitorUid = "visitor_uid"
        case status
        case handedOffTo = "handed_off_to"
        case tags
        case noteCount = "note_count"
        case visitorMessages = "visitor_messages"
        case assistantMessages = "assistant_messages"
        case messagesVersion = "messages_version"
        case messagesConsumed = "messages_consumed"
        case workflowVersion = "workflow_version"
        case lastPosition = "last_position"
        case startedVersion = "started_version"
        case unprocessedCount = "unprocessed_count"
        case startedAt = "started_at"
        case lastActivityAt = "last_activity_at"
        case assignedTo = "assigned_to"
        case agentMessages = "agent_messages"
        case unreadCount = "unread_count"
        case withPeopleSince = "with_people_since"
        case firstResponseAt = "first_response_at"
    }

    /// A hand-off or an assignment: the first of an episode with people starts its clock.
    mutating func startWithPeople(at date: Date) {
        guard withPeopleSince == nil else { return }
        withPeopleSince = date
        firstResponseAt = nil
    }
}
