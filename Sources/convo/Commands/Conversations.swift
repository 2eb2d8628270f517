import ArgumentParser
import EventStore
import Foundation
import Responder
import SharedTypes

extension Convo {
    /// `convo conversations`: conversations the responder parked, and handing them back.
    struct Conversations: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Parked conversations (list, hand back), and what agents do: assign, reply, note, handback, resolve, reopen.",
            subcommands: [Failed.self, Retry.self, Assign.self, Reply.self, Note.self, Handback.self, Resolve.self, Reopen.self])

        struct Failed: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "The parked conversations (last error, attempts, instance, when), oldest first; exit 0 whether or not there are any.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "Only this tenant's (default: every tenant's).") var tenant: TenantID?
            @Flag(help: "Print them as JSON.") var json = false

            func run() async throws {
                let logger = try options.makeLogger()
                let tenant = tenant
                let entries = try await withStore(options, logger: logger) { store in
                    try await ParkingLot(store: store, logger: logger).all(tenant: tenant)
                }
                if json {
                    printJSON(entries)
                    return
                }
                if entries.isEmpty { print("no parked conversations") }
                for entry in entries {
                    print("\(entry.tenant)/\(entry.conversationId) visitor \(entry.visitorUid): parked \(entry.parkedAt) by \(entry.instance) after \(entry.attempts) attempts: \(entry.error)")
                }
            }
        }

        struct Retry: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Hand a parked conversation back to the responder; exit 1 when it is not parked.")

            @OptionGroup var options: GlobalOptions
            @Argument(help: "The conversation id.") var conversation: ConversationID
            @Option(help: "The conversation's tenant.") var tenant: TenantID = .default

            func run() async throws {
                let logger = try options.makeLogger()
                let (conversation, tenant) = (conversation, tenant)
                let resumed = try await withStore(options, logger: logger) { store in
                    try await ParkingLot(store: store, logger: logger).resume(conversation, tenant: tenant, actor: "cli")
                }
                guard resumed != nil else { throw CommandFailure("conversation \(conversation) of tenant \(tenant) is not parked") }
                print("conversation \(conversation) handed back to the responder")
            }
        }
    }
}
