import ArgumentParser
import EventStore
import Foundation
import Logging
import Responder
import SharedTypes

extension Convo {
    /// `convo send`: ingest visitor messages from the command line and, optionally, process them here.
    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send visitor messages to a conversation (as the HTTP ingest does) and optionally process them in this process.",
            discussion: "With --count N, sends N messages '<text> 1' … '<text> N' with ids '<message-id>-1' …; a resent id is stored once.")

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The conversation's id.") var conversation: ConversationID
        @Option(help: "The visitor's id.") var visitor: VisitorUID
        @Option(help: "The message text.") var text: String
        @Option(name: .customLong("message-id"), help: "The message's id (default: a new UUID).") var messageId: String?
        @Option(help: "How many messages to send.") var count: Int = 1
        @Option(help: "The tenant.") var tenant: TenantID = .default
        @Flag(help: "Process the visitor after each message, under the visitor lock, as convo serve does.") var process = false
        @Option(help: "The workflow new conversations start (with --process).") var workflow: String = WorkflowRepository.defaultWorkflowID

        func validate() throws {
            guard (1...100_000).contains(count) else { throw ValidationError("--count is 1 to 100000") }
        }

        func run() async throws {
            let (tenant, conversation, visitor) = (tenant, conversation, visitor)
            let logger = try options.makeLogger()
            let baseID = messageId ?? UUID().uuidString.lowercased()
            let redisURL = options.redisURL()
            let keyring = try options.requiredKeyring()
            try await withPostgresClient(
                url: try options.databaseURL(), maximumConnections: 8, connectTimeout: try options.connectTimeout(), logger: logger
            ) { client in
                do {
                    try await Migrator(client: client, logger: logger).requireCurrent()
                    let store = PostgresEventStore(client: client, keyring: keyring, logger: logger)
                    let ingestor = MessageIngestor(store: store, logger: logger)
                    let processor = try process ? ConversationProcessor(
                        store: store, redis: RedisClient(configuration: RedisConfiguration(url: redisURL, connections: 2)),
                        workflows: WorkflowRepository(client: client, logger: logger),
                        configuration: .init(defaultWorkflowID: workflow), logger: logger) : nil
                    var stored = 0
                    for index in 1...count {
                        let id = count == 1 ? baseID : "\(baseID)-\(index)"
                        let body = count == 1 ? text : "\(text) \(index)"
                        let result = try await ingestor.ingest(
                            IncomingMessage(tenant: tenant, conversationId: conversation, visitorUid: visitor, messageId: id, text: body, sentAt: Date()))
                        if !result.isDuplicate { stored += 1 }
                        if let processor { try await processor.process(tenant: tenant, visitor: visitor, conversation: conversation) }
                    }
                    print("sent \(count) message\(count == 1 ? "" : "s") to \(conversation) (\(stored) new)")
                } catch {
                    throw CommandFailure(error)
                }
            }
        }
    }
}
