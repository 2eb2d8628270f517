import ArgumentParser
import EventStore
import Foundation
import Responder
import SharedTypes

extension Convo.Conversations {
    /// What every agent action of the CLI names: who acts, on which conversation, with which id.
    struct AgentActionOptions: ParsableArguments {
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The conversation id.") var conversation: ConversationID
        @Option(help: "The conversation's tenant.") var tenant: TenantID
        @Option(help: "The agent who acts (their id, as `convo agents list` shows it): the event's actor.") var agent: String
        @Option(help: "An id of the action: the same id again does nothing and prints what was stored.") var requestId: String?
        @Flag(help: "Print what was stored as JSON.") var json = false

        func validate() throws {
            guard UUID(uuidString: agent) != nil else { throw ValidationError("--agent is an agent's id (a UUID), got '\(agent)'") }
        }

        /// Runs `action` as the agent; a refusal prints its code and message and exits 1.
        func run(_ action: @escaping @Sendable (AgentActions, Agent, String) async throws -> AgentActions.Outcome) async throws {
            let logger = try options.makeLogger()
            let (tenant, agentId, requestId, json) = (tenant, UUID(uuidString: agent)!, requestId, json)
            let outcome = try await withStore(options, logger: logger) { store in
                let agents = AgentStore(client: store.client, logger: logger)
                guard let agent = try await agents.agent(agentId, tenant: tenant), agent.disabledAt == nil else {
                    throw CommandFailure("no enabled agent \(agentId.uuidString.lowercased()) in tenant \(tenant)")
                }
                let actions = AgentActions(store: store, workflows: WorkflowRepository(client: store.client, logger: logger), agents: agents, via: "cli")
                do {
                    return try await action(actions, agent, try AgentActions.callerID(requestId, "--request-id"))
                } catch let refusal as APIError {
                    throw CommandFailure("\(refusal.body.code): \(refusal.body.message)")
                }
            }
            if json {
                printJSON(outcome.response)
            } else {
                let state = outcome.response.state.map { " (now \($0.status)\($0.assignedTo.map { ", assigned to \($0)" } ?? ""))" } ?? ""
                print("\(outcome.created ? "stored" : "already stored") \(outcome.response.type) at version \(outcome.response.streamVersion) of workflow-\(outcome.response.conversationId)\(state)")
            }
        }
    }

    struct Assign: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Take a conversation over as --agent, or (a supervisor) give it to --to.")
        @OptionGroup var action: AgentActionOptions
        @Option(help: "Another agent's id (supervisors only).") var to: String?

        func run() async throws {
            let (conversation, tenant, to) = (action.conversation, action.tenant, to)
            try await action.run { actions, agent, id in try await actions.assign(conversation, tenant: tenant, by: agent, to: to, requestId: id) }
        }
    }

    struct Reply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Answer the visitor as the owning agent.")
        @OptionGroup var action: AgentActionOptions
        @Option(help: "What the agent says.") var text: String

        func run() async throws {
            let (conversation, tenant, text) = (action.conversation, action.tenant, text)
            try await action.run { actions, agent, id in try await actions.reply(conversation, tenant: tenant, by: agent, text: text, messageId: id) }
        }
    }

    struct Note: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add an internal note (never shown to the visitor).")
        @OptionGroup var action: AgentActionOptions
        @Option(help: "The note.") var text: String

        func run() async throws {
            let (conversation, tenant, text) = (action.conversation, action.tenant, text)
            try await action.run { actions, agent, id in try await actions.note(conversation, tenant: tenant, by: agent, text: text, noteId: id) }
        }
    }

    struct Handback: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Hand the conversation back to the AI at a node of its workflow version (a running server picks it up with the next visitor message or its sweep).")
        @OptionGroup var action: AgentActionOptions
        @Option(help: "The node the AI goes on from.") var node: String

        func run() async throws {
            let (conversation, tenant, node) = (action.conversation, action.tenant, node)
            try await action.run { actions, agent, id in try await actions.handBack(conversation, tenant: tenant, by: agent, nodeId: node, requestId: id) }
        }
    }

    struct Resolve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resolve the conversation (its owner, or a supervisor).")
        @OptionGroup var action: AgentActionOptions

        func run() async throws {
            let (conversation, tenant) = (action.conversation, action.tenant)
            try await action.run { actions, agent, id in try await actions.resolve(conversation, tenant: tenant, by: agent, requestId: id) }
        }
    }

    struct Reopen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reopen a resolved conversation.")
        @OptionGroup var action: AgentActionOptions

        func run() async throws {
            let (conversation, tenant) = (action.conversation, action.tenant)
            try await action.run { actions, agent, id in try await actions.reopen(conversation, tenant: tenant, by: agent, requestId: id) }
        }
    }
}
