import EventStore
import Foundation
import SharedTypes

/// `visitors`: one row per visitor — the profile `update_visitor_profile` records (name, email, phone),
/// how many conversations and messages, first and last seen.
///
/// A tool call happens in a conversation's `workflow-` stream, which does not name the visitor: the
/// responder puts the visitor in every workflow event's metadata (`visitorUid`), and a profile update
/// without it stops the projection rather than being dropped.
public struct VisitorsProjection: Projection {
    public var name: String
    public var version: Int
    /// Of personal data only the profile a tool call sets; never a text.
    public var personalDataRead: PersonalDataOpening { .only([ToolCalled.eventType]) }

    public init(name: String = "visitors", version: Int = 1) {
        self.name = name
        self.version = version
    }

    public func keys(of event: ProjectedEvent) throws -> [VisitorKey] {
        switch event.type {
        case ConversationStarted.eventType:
            return [VisitorKey(tenantId: event.tenant.rawValue, visitorUid: try event.message(ConversationStarted.self).visitorUid.rawValue)]
        case VisitorMessageReceived.eventType:
            return [VisitorKey(tenantId: event.tenant.rawValue, visitorUid: try event.message(VisitorMessageReceived.self).visitorUid.rawValue)]
        case ToolCalled.eventType:
            guard case .toolCalled(let call) = try event.workflowEvent() else { return [] }
            guard call.outcome == .succeeded, call.tool == ToolName.updateVisitorProfile.rawValue else { return [] }
            let metadata: EventMetadata
            do {
                metadata = try event.recorded.metadata()
            } catch {
                throw FoldError(event, "metadata does not decode: \(error)")
            }
            guard let visitor = metadata["visitorUid"]?.stringValue else {
                throw FoldError(event, "a profile update without visitorUid in its metadata")
            }
            return [VisitorKey(tenantId: event.tenant.rawValue, visitorUid: visitor)]
        case VisitorDataErased.eventType:
            guard case .dataErased(let erased) = try event.workflowEvent() else { return [] }
            return [VisitorKey(tenantId: event.tenant.rawValue, visitorUid: erased.visitorUid.rawValue)]
        default:
            return []
        }
    }

    public func apply(_ event: ProjectedEvent, to row: VisitorRow?, key: VisitorKey) throws -> VisitorRow {
        var row = row ?? VisitorRow(key: key)
        let at = RowCoding.truncated(event.recordedAt)
        switch event.type {
        case ConversationStarted.eventType:
            row.conversations += 1
            row.firstSeenAt = min(row.firstSeenAt ?? at, at)
        case VisitorMessageReceived.eventType:
            row.messages += 1
            row.firstSeenAt = min(row.firstSeenAt ?? at, at)
            row.lastSeenAt = max(row.lastSeenAt ?? at, at)
        case ToolCalled.eventType:
            guard case .toolCalled(let call) = try event.workflowEvent() else { throw FoldError(event, "not a tool call") }
            let arguments = call.arguments
            if let name = arguments["name"]?.stringValue { row.name = name }
            if let email = arguments["email"]?.stringValue { row.email = email }
            if let phone = arguments["phone"]?.stringValue { row.phone = phone }
            row.profileUpdatedAt = at
        case VisitorDataErased.eventType:
            // The profile came from tool calls sealed with the destroyed key: a fold of them now sets nothing.
            row.name = nil
            row.email = nil
            row.phone = nil
        default:
            throw FoldError(event, "not an event the visitors projection applies")
        }
        return row
    }
}

/// A row of `visitors`.
public struct VisitorRow: ProjectionRow {
    public var tenantId: String
    public var visitorUid: String
    public var name: String?
    public var email: String?
    public var phone: String?
    public var conversations: Int64 = 0
    public var messages: Int64 = 0
    public var firstSeenAt: Date?
    public var lastSeenAt: Date?
    public var profileUpdatedAt: Date?

    public init(key: VisitorKey) {
        self.tenantId = key.tenantId
        self.visitorUid = key.visitorUid
    }

    public var key: VisitorKey { VisitorKey(tenantId: tenantId, visitorUid: visitorUid) }

    public static let columns: [ProjectionColumn] = [
        .init("tenant_id", "text"),
        .init("visitor_uid", "text"),
        .init("name", "text", nullable: true),
        .init("email", "text", nullable: true),
        .init("phone", "text", nullable: true),
        .init("conversations", "bigint"),
        .init("messages", "bigint"),
        .init("first_seen_at", "timestamptz", nullable: true),
        .init("last_seen_at", "timestamptz", nullable: true),
        .init("profile_updated_at", "timestamptz", nullable: true),
    ]
    public static let keyColumnCount = 2
    public static let indexes = [["tenant_id", "email"]]

    enum CodingKeys: String, CodingKey {
        case tenantId = "tenant_id"
        case visitorUid = "visitor_uid"
        case name, email, phone, conversations, messages
        case firstSeenAt = "first_seen_at"
        case lastSeenAt = "last_seen_at"
        case profileUpdatedAt = "profile_updated_at"
    }
}
