import EventStore
import Foundation
import Logging
import PostgresNIO
import SharedTypes

extension ConversationsProjection {
    /// What an inbox asks for; every filter is optional.
    public struct InboxFilter: Sendable, Equatable {
        public enum Owner: String, Sendable, CaseIterable {
            /// The AI has it (no person owns it, none was asked for).
            case ai
            /// People have it: waiting for an agent, owned by one, or resolved by one.
            case people
        }

        public var status: String?
        public var owner: Owner?
        public var assignedTo: String?
        public var visitor: String?
        /// The previous page's `next`: rows whose last activity is older.
        public var after: Int64?
        public var limit: Int

        public init(status: String? = nil, owner: Owner? = nil, assignedTo: String? = nil, visitor: String? = nil, after: Int64? = nil, limit: Int = 100) {
            self.status = status
            self.owner = owner
            self.assignedTo = assignedTo
            self.visitor = visitor
            self.after = after
            self.limit = limit
        }
    }

    /// One page of the tenant's conversations, most recent activity first, keyset-paginated on
    /// `(tenant_id, last_position)` (and the status or assignee indexes): a page costs the same however deep.
    ///
    /// The rows are the projection's: they lag the events by the runner's delay. A conversation active while
    /// a client pages moves to the front; a later page does not show it twice.
    ///
    /// - Returns: the rows and the `after` of the next page (`nil` on the last).
    public func inbox(_ filter: InboxFilter, tenant: TenantID, client: PostgresClient, logger: Logger) async throws -> (rows: [ConversationRow], next: Int64?) {
        do {
            let table = try ProjectionTable<ConversationRow>(name)
            guard try await client.withOpenConnection({ try await ProjectionCatalogue.tableExists(name, on: $0, logger: logger) }) else { return ([], nil) }
            let owner = filter.owner?.rawValue
            let rows = try await client.withOpenConnection { connection in
                try await ProjectionTable<ConversationRow>.decode(
                    try await connection.collect(
                        """
                        SELECT to_jsonb(t) FROM \(unescaped: table.name) t
                        WHERE tenant_id = \(tenant.rawValue)
                          AND (\(filter.status)::text IS NULL OR status = \(filter.status))
                          AND (\(filter.assignedTo)::text IS NULL OR assigned_to = \(filter.assignedTo))
                          AND (\(filter.visitor)::text IS NULL OR visitor_uid = \(filter.visitor))
                          AND (\(owner)::text IS NULL OR (\(owner) = 'people') = (with_people_since IS NOT NULL))
                          AND (\(filter.after)::bigint IS NULL OR last_position < \(filter.after))
                        ORDER BY last_position DESC
                        LIMIT \(filter.limit)
                        """, logger: logger))
            }
            return (rows, rows.count == filter.limit ? rows.last?.lastPosition : nil)
        } catch let error as ProjectionError {
            throw error
        } catch {
            throw ProjectionError(code: .storageFailure, message: "\(PostgresEventStore.mapError(error, operation: "read the inbox"))", cause: error)
        }
    }
}
