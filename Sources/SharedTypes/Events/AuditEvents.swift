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
