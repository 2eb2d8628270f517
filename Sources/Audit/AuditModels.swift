import Foundation
import SharedTypes

/// A visitor message, as the audit trail names it: the event that stored it and the caller's id and text.
public struct MessageReference: Codable, Sendable, Equatable {
    public var eventId: UUID
    public var messageId: String
    public var text: String
    public var streamVersion: Int64
    public var recordedAt: Date
}

/// One change of a conversation's workflowState: one event of its `workflow-` stream, with the state's node
/// and status before and after it, what caused it, and who wrote it under which lock.
public struct WorkflowChange: Codable, Sendable, Equatable {
    public var globalPosition: Int64
    public var streamVersion: Int64
    public var eventId: UUID
    public var type: String
    public var recordedAt: Date
    public var fromNode: String?
    public var toNode: String?
    public var statusBefore: String
    public var status: String
    /// What changed, in a few words: `moved greet → ask`, `variable email set`, `tool add_tag succeeded`.
    public var summary: String
    /// The visitor message being handled when the change was made.
    public var cause: MessageReference?
    /// ``SystemActor/actorID`` for the responder, an agent's user id, or `visitor:{uid}`.
    public var actorId: String?
    public var lockToken: String?
    /// The process that wrote it (host and pid).
    public var instance: String?
}

/// `GET /v1/conversations/{id}/workflow-state/history`, `convo audit history`.
public struct WorkflowHistory: Codable, Sendable, Equatable {
    public var tenant: String
    public var conversationId: String
    public var changes: [WorkflowChange]
}

/// A tool the responder ran, or refused, on the way to a reply.
public struct ToolCallRecord: Codable, Sendable, Equatable {
    public var streamVersion: Int64
    public var tool: String
    public var arguments: JSONValue
    public var outcome: String
    public var error: String?
    public var nodeId: String
    public var actorId: String
}

/// One step of the walk that led to a reply.
public struct WalkStep: Codable, Sendable, Equatable {
    public var streamVersion: Int64
    public var type: String
    public var nodeId: String?
    public var summary: String
}

/// Why the visitor got a reply: `GET /v1/conversations/{id}/explain/{eventId}`, `convo audit explain`.
public struct ReplyExplanation: Codable, Sendable, Equatable {
    public struct Reply: Codable, Sendable, Equatable {
        public var eventId: UUID
        public var globalPosition: Int64
        public var streamVersion: Int64
        public var recordedAt: Date
        public var text: String
        public var nodeId: String
        /// `workflow` for a message node's fixed text, else the AI provider's name.
        public var provider: String
        public var model: String?
        public var latencyMs: Int?
        public var actorId: String?
        public var lockToken: String?
        public var instance: String?
    }

    public var tenant: String
    public var conversationId: String
    public var reply: Reply
    /// The visitor messages it answers (several for a burst answered at once).
    public var answered: [MessageReference]
    /// The event that caused it (metadata `causationId`), when that is a stored visitor message.
    public var causedBy: MessageReference?
    /// The workflow steps from the previous `MessagesProcessed` to the reply: nodes walked, variables set.
    public var walk: [WalkStep]
    public var tools: [ToolCallRecord]
    /// The workflow (id and version) the walk ran.
    public var workflowId: String?
    public var workflowVersion: Int?
}

/// One event of the trail, as a search returns it.
public struct AuditEvent: Codable, Sendable, Equatable {
    public var globalPosition: Int64
    public var eventId: UUID
    public var stream: String
    public var streamVersion: Int64
    public var type: String
    public var recordedAt: Date
    public var actorId: String?
    public var conversationId: String?
    public var visitorUid: String?
    /// The chained hash (hex): what `convo audit verify` checks.
    public var hash: String
    public var data: JSONValue
    public var metadata: JSONValue
    /// `true` when personal members of `data` were erased (the visitor was forgotten); absent otherwise.
    public var erased: Bool? = nil
}

/// A page of a search, in position order; `next` is the cursor of the next page, `nil` after the last.
public struct AuditPage: Codable, Sendable, Equatable {
    public var tenant: String
    public var events: [AuditEvent]
    public var next: Int64?
}

/// The event a conflict's loser collided with: the winner's write.
public struct ConflictWinner: Codable, Sendable, Equatable {
    public var eventId: UUID
    public var type: String
    public var streamVersion: Int64
    public var recordedAt: Date
    public var lockToken: String?
    public var instance: String?
}

/// A recorded `ProcessingConflictDetected`.
public struct ConflictRecord: Codable, Sendable, Equatable {
    public var globalPosition: Int64
    public var eventId: UUID
    public var recordedAt: Date
    public var conversationId: String
    public var visitorUid: String
    public var stream: String
    public var expectedVersion: Int64
    public var actualVersion: Int64
    /// The losing worker's lock token and process.
    public var lockToken: String
    public var instance: String
    /// The write at `expectedVersion + 1` that won, when it is stored.
    public var winner: ConflictWinner?
}

public struct ConflictPage: Codable, Sendable, Equatable {
    public var tenant: String
    public var conflicts: [ConflictRecord]
    public var next: Int64?
}

/// What a search of the trail asks for; every field narrows it.
public struct AuditFilter: Sendable, Equatable {
    public enum Order: String, Sendable, CaseIterable {
        case ascending = "asc"
        case descending = "desc"
    }

    public var types: [String] = []
    public var actor: String?
    public var conversation: ConversationID?
    public var visitor: VisitorUID?
    public var tool: String?
    /// Recorded at or after.
    public var from: Date?
    /// Recorded before.
    public var to: Date?
    public var order: Order = .ascending
    /// The cursor: only events past this position in ``order``.
    public var after: Int64?
    public var limit: Int = 100

    public init() {}

    public static let maxLimit = 1000
}

/// An audit query could not be answered as asked.
public struct AuditError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case conversationNotFound = "conversation_not_found"
        case eventNotFound = "event_not_found"
        case notAReply = "not_a_reply"
        case invalidFilter = "invalid_parameter"
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
