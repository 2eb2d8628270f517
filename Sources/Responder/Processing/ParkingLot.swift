import EventStore
import Foundation
import Logging
import PostgresNIO
import SharedTypes

/// Conversations the responder stopped retrying (``ConversationParked``) and their resumption
/// (``ConversationResumed``): events of the tenant's `audit-` stream, so every instance, `convo` command
/// and audit query sees the same thing. A conversation is parked while its latest such event is a park.
public struct ParkingLot: Sendable {
    /// A parked conversation: the park event and when it was recorded.
    public struct Entry: Sendable, Codable, Equatable {
        public var tenant: String
        public var conversationId: String
        public var visitorUid: String
        public var error: String
        public var attempts: Int
        public var instance: String
        public var parkedAt: Date
        public var position: Int64
    }

    let store: PostgresEventStore
    let logger: Logger

    public init(store: PostgresEventStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// Records that the responder gave up on the conversation until an operator resumes it.
    public func park(_ parked: ConversationParked, tenant: TenantID) async throws {
        let event = try NewEvent(type: ConversationParked.eventType, encoding: parked, metadata: EventMetadata(actorId: SystemActor.actorID))
        _ = try await store.append([event], to: ConversationProcessor.auditStream(tenant), tenant: tenant, expectedVersion: .any)
    }

    /// Hands a parked conversation back to the responder.
    ///
    /// - Returns: the entry it resumed, or `nil` when the conversation was not parked (nothing written).
    public func resume(_ conversation: ConversationID, tenant: TenantID, actor: String = SystemActor.actorID) async throws -> Entry? {
        guard let entry = try await parked(conversation, tenant: tenant), let visitor = VisitorUID(rawValue: entry.visitorUid) else { return nil }
        let event = try NewEvent(
            type: ConversationResumed.eventType, encoding: ConversationResumed(conversationId: conversation, visitorUid: visitor),
            metadata: EventMetadata(actorId: actor))
        _ = try await store.append([event], to: ConversationProcessor.auditStream(tenant), tenant: tenant, expectedVersion: .any)
        return entry
    }

    /// The conversation's park, when it is parked now.
    public func parked(_ conversation: ConversationID, tenant: TenantID) async throws -> Entry? {
        try await entries(
            """
            SELECT tenant_id, event_type, data::text, recorded_at, global_position FROM events
            WHERE tenant_id = \(tenant.rawValue) AND stream_category = 'audit' AND (data ->> 'conversationId') = \(conversation.rawValue)
              AND event_type IN ('ConversationParked', 'ConversationResumed')
            ORDER BY global_position DESC LIMIT 1
            """
        ).first
    }

    /// Every parked conversation, of one tenant or of all, oldest park first.
    public func all(tenant: TenantID?) async throws -> [Entry] {
        try await entries(
            """
            SELECT tenant_id, event_type, data, recorded_at, global_position FROM (
                SELECT DISTINCT ON (tenant_id, data ->> 'conversationId') tenant_id, event_type, data::text AS data, recorded_at, global_position
                FROM events
                WHERE stream_category = 'audit' AND event_type IN ('ConversationParked', 'ConversationResumed')
                  AND (\(tenant?.rawValue)::text IS NULL OR tenant_id = \(tenant?.rawValue))
                ORDER BY tenant_id, data ->> 'conversationId', global_position DESC
            ) latest
            ORDER BY global_position
            """
        )
    }

    private func entries(_ query: PostgresQuery) async throws -> [Entry] {
        do {
            var found: [Entry] = []
            let rows = try await store.client.queryOpen(query, logger: logger)
            for try await (tenant, type, data, at, position) in rows.decode((String, String, String, Date, Int64).self) where type == ConversationParked.eventType {
                let parked = try JSONCoding.decoder.decode(ConversationParked.self, from: Data(data.utf8))
                found.append(
                    Entry(
                        tenant: tenant, conversationId: parked.conversationId.rawValue, visitorUid: parked.visitorUid.rawValue, error: parked.error,
                        attempts: parked.attempts, instance: parked.instance, parkedAt: at, position: position))
            }
            return found
        } catch {
            throw PostgresEventStore.mapError(error, operation: "read the parked conversations")
        }
    }
}
