import EventStore
import Foundation
import Logging
import PostgresNIO
import SharedTypes

/// What a person may do in a tenant's conversations.
enum AgentRole: String, Codable, Sendable, CaseIterable {
    /// Takes conversations over, answers, hands back and resolves the conversations they own.
    case agent
    /// An agent who may also assign a conversation to another agent.
    case supervisor
}

/// A person of a tenant: a row of `users` (where the System user lives too).
struct Agent: Codable, Sendable, Equatable {
    var id: UUID
    var tenant: TenantID
    var email: String
    var name: String
    var role: AgentRole
    var createdAt: Date
    var disabledAt: Date?

    /// The id events carry as `actorId` and `agentId`.
    var actorId: String { id.uuidString.lowercased() }
}

/// Agents and supervisors, each created with a key bound to them (scope `agent`).
struct AgentStore: Sendable {
    let client: PostgresClient
    let logger: Logger

    /// Creates the person (and the tenant when it is new) and their first key.
    ///
    /// - Throws: ``AgentStoreError`` `emailTaken` when the tenant has a person with that email.
    func create(tenant: TenantID, email: String, name: String, role: AgentRole) async throws -> (agent: Agent, key: String, record: APIKeyRecord) {
        let id = UUID()
        do {
            return try await client.withOpenTransaction(logger: logger) { connection in
                try await connection.query("INSERT INTO tenants (id) VALUES (\(tenant.rawValue)) ON CONFLICT DO NOTHING", logger: logger)
                let rows = try await connection.query(
                    """
                    INSERT INTO users (id, email, name, role, tenant_id) VALUES (\(id), \(email), \(name), \(role.rawValue), \(tenant.rawValue))
                    RETURNING created_at
                    """, logger: logger)
                var created = Date()
                for try await date in rows.decode(Date.self) { created = date }
                let (key, record) = try await APIKeyStore.insert(
                    tenant: tenant, scopes: [.agent], name: "agent \(email)", userId: id, on: connection, logger: logger)
                return (Agent(id: id, tenant: tenant, email: email, name: name, role: role, createdAt: created, disabledAt: nil), key, record)
            }
        } catch {
            // The unique index on (tenant, lower(email)); PostgresNIO wraps what failed in the transaction.
            let inner = (error as? PostgresTransactionError)?.closureError ?? error
            if let failure = inner as? PSQLError, failure.serverInfo?[.sqlState] == "23505" {
                throw AgentStoreError.emailTaken(email, tenant: tenant)
            }
            throw PostgresEventStore.mapError(error, operation: "create an agent")
        }
    }

    /// The tenant's people (or everyone's), oldest first.
    func list(tenant: TenantID?) async throws -> [Agent] {
        try await mappingStoreErrors("list agents") {
            try await Self.agents(
                client.queryOpen(
                    """
                    SELECT id, tenant_id, email, name, role, created_at, disabled_at FROM users
                    WHERE role IN ('agent', 'supervisor') AND (\(tenant?.rawValue)::text IS NULL OR tenant_id = \(tenant?.rawValue))
                    ORDER BY created_at, id
                    """, logger: logger))
        }
    }

    /// One person, enabled or not; `nil` when there is none with this id (of this tenant, when given).
    func agent(_ id: UUID, tenant: TenantID? = nil) async throws -> Agent? {
        try await mappingStoreErrors("read an agent") {
            try await Self.agents(
                client.queryOpen(
                    """
                    SELECT id, tenant_id, email, name, role, created_at, disabled_at FROM users
                    WHERE id = \(id) AND role IN ('agent', 'supervisor') AND (\(tenant?.rawValue)::text IS NULL OR tenant_id = \(tenant?.rawValue))
                    """, logger: logger)
            ).first
        }
    }

    /// Disables a person and revokes their keys, in one transaction. Disabling twice keeps the first time.
    ///
    /// - Returns: the person, or `nil` when there is none with this id.
    func disable(_ id: UUID) async throws -> Agent? {
        try await mappingStoreErrors("disable an agent") {
            try await client.withOpenTransaction(logger: logger) { connection in
                let agents = try await Self.agents(
                    connection.query(
                        """
                        UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE id = \(id) AND role IN ('agent', 'supervisor')
                        RETURNING id, tenant_id, email, name, role, created_at, disabled_at
                        """, logger: logger))
                guard let agent = agents.first else { return nil }
                try await connection.query(
                    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE user_id = \(id)", logger: logger)
                return agent
            }
        }
    }

    private static func agents(_ rows: some AsyncSequence<PostgresRow, any Error>) async throws -> [Agent] {
        var agents: [Agent] = []
        for try await (id, tenant, email, name, role, created, disabled) in rows.decode((UUID, String, String, String, String, Date, Date?).self) {
            guard let tenant = TenantID(rawValue: tenant), let role = AgentRole(rawValue: role) else { continue }
            agents.append(Agent(id: id, tenant: tenant, email: email, name: name, role: role, createdAt: created, disabledAt: disabled))
        }
        return agents
    }

}

enum AgentStoreError: Error, CustomStringConvertible {
    case emailTaken(String, tenant: TenantID)

    var description: String {
        switch self {
        case .emailTaken(let email, let tenant): return "tenant \(tenant) already has a person with the email \(email)"
        }
    }
}
