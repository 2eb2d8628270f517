import ArgumentParser
import EventStore
import Foundation
import SharedTypes

extension Convo {
    /// `convo agents`: the people of a tenant, each with a key of their own.
    struct Agents: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create, list and disable agents (the people who take conversations over).",
            subcommands: [Create.self, List.self, Disable.self])

        struct Create: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create an agent and a key bound to them (scope agent). The key is printed once; only its hash is kept.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The tenant the agent works for.") var tenant: TenantID
            @Option(help: "The agent's email (one per tenant).") var email: String
            @Option(help: "The agent's name, as visitors and colleagues see it.") var name: String
            @Option(help: "agent, or supervisor (may also assign conversations to others).") var role: String = AgentRole.agent.rawValue
            @Flag(help: "Print {\"id\", \"key\", …} as JSON.") var json = false

            func validate() throws {
                let trimmed = email.trimmingCharacters(in: .whitespaces)
                guard trimmed.count <= 254, trimmed.split(separator: "@").count == 2, !trimmed.contains(" "), !trimmed.unicodeScalars.contains(where: { $0.value < 0x20 })
                else { throw ValidationError("--email is an email address, got '\(email)'") }
                guard !name.trimmingCharacters(in: .whitespaces).isEmpty, name.count <= 200, !name.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
                    throw ValidationError("--name has 1 to 200 characters, none of them control characters")
                }
                guard AgentRole(rawValue: role) != nil else { throw ValidationError("--role is agent or supervisor, got '\(role)'") }
            }

            func run() async throws {
                let (tenant, email, name, role) = (tenant, email.trimmingCharacters(in: .whitespaces), name, AgentRole(rawValue: role)!)
                let json = json
                try await withAgentStore(options) { agents in
                    let (agent, key, record) = try await agents.create(tenant: tenant, email: email, name: name, role: role)
                    if json {
                        printJSON(CreatedAgent(id: agent.actorId, key: key, keyId: record.id, tenant: tenant.rawValue, email: agent.email, name: agent.name, role: agent.role))
                    } else {
                        print(key)
                        printError("agent \(agent.actorId) (\(agent.name), \(agent.role.rawValue)) of tenant \(tenant) with key \(record.id); the key is not shown again")
                    }
                }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List agents.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "Only this tenant's agents.") var tenant: TenantID?
            @Flag(help: "Print the agents as JSON.") var json = false

            func run() async throws {
                let (tenant, json) = (tenant, json)
                try await withAgentStore(options) { agents in
                    let all = try await agents.list(tenant: tenant)
                    if json {
                        printJSON(all)
                        return
                    }
                    print("ID                                    TENANT            ROLE        DISABLED              EMAIL / NAME")
                    for agent in all {
                        print(
                            [
                                agent.actorId.padding(toLength: 38, withPad: " ", startingAt: 0),
                                agent.tenant.rawValue.padding(toLength: 18, withPad: " ", startingAt: 0),
                                agent.role.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0),
                                (agent.disabledAt?.formatted(.iso8601) ?? "-").padding(toLength: 22, withPad: " ", startingAt: 0),
                                "\(agent.email) / \(agent.name)",
                            ].joined())
                    }
                }
            }
        }

        struct Disable: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Disable an agent and revoke their keys. Every server refuses the keys within its key-cache interval.")

            @OptionGroup var options: GlobalOptions
            @Argument(help: "The agent's id (as `agents list` shows it).") var id: String

            func validate() throws {
                guard UUID(uuidString: id) != nil else { throw ValidationError("the id is a UUID, got '\(id)'") }
            }

            func run() async throws {
                let id = UUID(uuidString: id)!
                try await withAgentStore(options) { agents in
                    guard let agent = try await agents.disable(id) else { throw CommandFailure("no agent '\(id.uuidString.lowercased())'") }
                    print("disabled agent \(agent.actorId) (\(agent.email)) of tenant \(agent.tenant); their keys are revoked")
                }
            }
        }
    }
}

struct CreatedAgent: Codable {
    var id: String
    var key: String
    var keyId: String
    var tenant: String
    var email: String
    var name: String
    var role: AgentRole
}

/// Runs `body` with the agent store of a migrated database (``withStore(_:logger:_:)``): store errors
/// become a message and exit status 1.
private func withAgentStore(_ options: GlobalOptions, _ body: @escaping @Sendable (AgentStore) async throws -> Void) async throws {
    let logger = try options.makeLogger()
    try await withStore(options, logger: logger) { store in try await body(AgentStore(client: store.client, logger: logger)) }
}
