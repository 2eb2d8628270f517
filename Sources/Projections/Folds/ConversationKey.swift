import EventStore
import SharedTypes

/// The key of a per-conversation row: `(tenant_id, conversation_id)`.
public struct ConversationKey: Codable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public var tenantId: String
    public var conversationId: String

    public init(tenant: TenantID, conversation: ConversationID) {
        self.tenantId = tenant.rawValue
        self.conversationId = conversation.rawValue
    }

    enum CodingKeys: String, CodingKey {
        case tenantId = "tenant_id"
        case conversationId = "conversation_id"
    }

    public var description: String { "\(tenantId)/\(conversationId)" }

    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.tenantId, lhs.conversationId) < (rhs.tenantId, rhs.conversationId) }

    /// The conversation of a `messages-` or `workflow-` stream event; `nil` for other streams.
    static func of(_ event: RecordedEvent, categories: Set<String>) -> ConversationKey? {
        guard categories.contains(event.stream.category) else { return nil }
        return ConversationKey(tenantId: event.tenant.rawValue, conversationId: event.stream.id)
    }

    public init(tenantId: String, conversationId: String) {
        self.tenantId = tenantId
        self.conversationId = conversationId
    }
}

/// The key of a per-visitor row: `(tenant_id, visitor_uid)`.
public struct VisitorKey: Codable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public var tenantId: String
    public var visitorUid: String

    public init(tenant: TenantID, visitor: VisitorUID) {
        self.tenantId = tenant.rawValue
        self.visitorUid = visitor.rawValue
    }

    enum CodingKeys: String, CodingKey {
        case tenantId = "tenant_id"
        case visitorUid = "visitor_uid"
    }

    public var description: String { "\(tenantId)/\(visitorUid)" }

    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.tenantId, lhs.visitorUid) < (rhs.tenantId, rhs.visitorUid) }
}

extension VisitorKey {
    public init(tenantId: String, visitorUid: String) {
        self.tenantId = tenantId
        self.visitorUid = visitorUid
    }
}
