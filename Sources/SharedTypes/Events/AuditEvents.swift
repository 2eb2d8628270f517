/// Two writers tried to advance one visitor: an append to a `workflow-` stream found another version than
/// the one read under the lock. The stale decision was thrown away; nothing was lost.
public struct ProcessingConflictDetected: DomainEvent {
    public static let eventType = "ProcessingConflictDetected"
    public var conversationId: ConversationID
    public var visitorUid: VisitorUID
    public var stream: String
    public var expectedVersion: Int64
    public var actualVersion: Int64
    public var lockToken: String
    /// The process that lost (host and pid).
    public var instance: String

    public init(
        conversationId: ConversationID, visitorUid: VisitorUID, stream: String, expectedVersion: Int64, actualVersion: Int64, lockToken: String,
        instance: String
    ) {
        self.conversationId = conversationId
        self.visitorUid = visitorUid
        self.stream = stream
        self.expectedVersion = expectedVersion
        self.actualVersion = actualVersion
        self.lockToken = lockToken
        self.instance = instance
    }
}

/// The responder stopped retrying a conversation whose processing kept failing for a reason a retry does
/// not cure (a fold error, a missing or invalid workflow): it holds no worker while it waits for an
/// operator. Its messages stay stored and unconsumed; ``ConversationResumed`` hands it back.
public struct ConversationParked: DomainEvent {
    public static let eventType = "ConversationParked"
    public var conversationId: ConversationID
    public var visitorUid: VisitorUID
    /// The last error, without payloads.
    public var error: String
    public var attempts: Int
    /// The process that parked it (host and pid).
    public var instance: String

    public init(conversationId: ConversationID, visitorUid: VisitorUID, error: String, attempts: Int, instance: String) {
        self.conversationId = conversationId
        self.visitorUid = visitorUid
        self.error = error
        self.attempts = attempts
        self.instance = instance
    }
}

/// An operator handed a parked conversation back to the responder, which tries it again at once.
public struct ConversationResumed: DomainEvent {
    public static let eventType = "ConversationResumed"
    public var conversationId: ConversationID
    public var visitorUid: VisitorUID

    public init(conversationId: ConversationID, visitorUid: VisitorUID) {
        self.conversationId = conversationId
        self.visitorUid = visitorUid
    }
}

/// A visitor was forgotten: their data keys were destroyed, so everything sealed with them reads as erased
/// for good. The record of the erasure itself (who asked, when, why, which conversations) stays.
public struct VisitorForgotten: DomainEvent {
    public static let eventType = "VisitorForgotten"
    public var erasureId: String
    public var visitorUid: VisitorUID
    /// Why: a request's reason, or the tenant's retention period.
    public var reason: String
    /// Who asked: an API key's id or `cli`, or `system:retention`.
    public var requestedBy: String
    public var conversations: [ConversationID]
    /// The key generations destroyed.
    public var keyGenerations: [Int]

    public init(erasureId: String, visitorUid: VisitorUID, reason: String, requestedBy: String, conversations: [ConversationID], keyGenerations: [Int]) {
        self.erasureId = erasureId
        self.visitorUid = visitorUid
        self.reason = reason
        self.requestedBy = requestedBy
        self.conversations = conversations
        self.keyGenerations = keyGenerations
    }
}
