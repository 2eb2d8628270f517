import EventStore
import SharedTypes

/// The key of a per-conversation row: `(tenant_id, conversation_id)`.
public struct ConversationKey: Codable, Hashable, Sendable, CustomStringConvertible {
    public var tenantId: String
    public var conversationId: String

    public init(tenantId: String, conversationId: String) {
        self.tenantId = tenantId
        self.conversationId = conversationId
    }

    public init(tenant: TenantID, conversation: ConversationID) {
        self.init(tenantId: tenant.rawValue, conversationId: conversation.rawValue)
    }

    /// The conversation of a `messages-` or `workflow-` stream's event: the stream's id.
    init(_ event: ProjectedEvent) {
        self.init(tenantId: event.tenant.rawValue, conversationId: event.stream.id)
    }

    enum CodingKeys: String, CodingKey {
        case tenantId = "tenant_id"
        case conversationId = "conversation_id"
    }

    public var description: String { "\(tenantId)/\(conversationId)" }

}

/// The key of a per-visitor row: `(tenant_id, visitor_uid)`.
public struct VisitorKey: Codable, Hashable, Sendable, CustomStringConvertible {
    public var tenantId: String
    public var visitorUid: String

    public init(tenantId: String, visitorUid: String) {
        self.tenantId = tenantId
        self.visitorUid = visitorUid
    }

    public init(tenant: TenantID, visitor: VisitorUID) {
        self.init(tenantId: tenant.rawValue, visitorUid: visitor.rawValue)
    }

    enum CodingKeys: String, CodingKey {
        case tenantId = "tenant_id"
        case visitorUid = "visitor_uid"
    }

    public var description: String { "\(tenantId)/\(visitorUid)" }

}
