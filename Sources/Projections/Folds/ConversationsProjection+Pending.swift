import EventStore
import Logging
import PostgresNIO
import SharedTypes

extension ConversationsProjection {
    /// A conversation with visitor messages the responder has not consumed.
    public struct Pending: Sendable, Hashable {
        public var tenant: TenantID
        public var visitor: VisitorUID
        public var conversation: ConversationID
    }

    /// The conversations whose stored row counts unprocessed visitor messages: as current as the projection
    /// (see `convo projections status`), read through its index, never by scanning the events.
    ///
    /// - Returns: nothing while the projection has not been built yet.
    /// - Throws: ``ProjectionError`` when PostgreSQL cannot be read.
    public func pending(_ scope: TenantScope, client: PostgresClient, logger: Logger) async throws -> [Pending] {
        let tenant: String?
        switch scope {
        case .allTenants: tenant = nil
        case .tenant(let id): tenant = id.rawValue
        }
        var found: [Pending] = []
        do {
            guard try await client.withOpenConnection({ try await ProjectionCatalogue.tableExists(name, on: $0, logger: logger) }) else { return [] }
            let table = try ProjectionTable<ConversationRow>(name)
            let rows = try await client.queryOpen(
                """
                SELECT tenant_id, visitor_uid, conversation_id FROM \(unescaped: table.name)
                WHERE unprocessed_count > 0 AND (\(tenant)::text IS NULL OR tenant_id = \(tenant))
                """, logger: logger)
            for try await (tenant, visitor, conversation) in rows.decode((String, String?, String).self) {
                guard let tenant = TenantID(rawValue: tenant), let visitor = visitor.flatMap(VisitorUID.init(rawValue:)),
                    let conversation = ConversationID(rawValue: conversation)
                else { continue }
                found.append(Pending(tenant: tenant, visitor: visitor, conversation: conversation))
            }
        } catch {
            throw ProjectionError(code: .storageFailure, message: "\(PostgresEventStore.mapError(error, operation: "look for pending messages"))", cause: error)
        }
        return found
    }
}
