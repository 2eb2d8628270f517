import ArgumentParser

/// The `convo` command: the HTTP server and the operator's tools.
@main
struct Convo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convo",
        abstract: "An event-sourced conversation service: every visitor message and workflow step is an event.",
        subcommands: [Serve.self, Migrate.self, Keys.self, Agents.self, Workflows.self, Projections.self, State.self, Conversations.self, Tools.self, Send.self, AuditCommand.self, WebhooksCommand.self, SettingsCommand.self, Visitors.self, Encryption.self]
    )
}
