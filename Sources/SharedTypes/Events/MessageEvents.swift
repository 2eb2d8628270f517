import Foundation

/// The first event of a conversation's `messages-` stream: which visitor it belongs to.
public struct ConversationStarted: DomainEvent {
    public static let eventType = "ConversationStarted"
    public var visitorUid: VisitorUID
    public var startedAt: Date

    public init(visitorUid: VisitorUID, startedAt: Date) {
        self.visitorUid = visitorUid
        self.startedAt = startedAt
    }
}

/// A visitor said something. `messageId` is the caller's idempotency key.
public struct VisitorMessageReceived: DomainEvent {
    public static let eventType = "VisitorMessageReceived"
    public var messageId: String
    public var visitorUid: VisitorUID
    public var text: String
    public var sentAt: Date

    public init(messageId: String, visitorUid: VisitorUID, text: String, sentAt: Date) {
        self.messageId = messageId
        self.visitorUid = visitorUid
        self.text = text
        self.sentAt = sentAt
    }
}
