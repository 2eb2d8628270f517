import ArgumentParser
import Foundation
import Responder
import SharedTypes

extension Convo {
    /// `convo settings`: a tenant's settings, shown or changed.
    struct SettingsCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "settings", abstract: "Show a tenant's settings, or change them (each instance picks a change up within 5 s).")

        @OptionGroup var options: GlobalOptions
        @Option(help: "The tenant.") var tenant: TenantID
        @Option(
            name: .customLong("reopen-on-visitor-message"),
            help: "true: a visitor message reopens a resolved conversation (the default); false: it is stored and the conversation stays resolved.")
        var reopenOnVisitorMessage: Bool?
        @Flag(help: "Print the settings as JSON.") var json = false

        func run() async throws {
            let (tenant, reopen, json) = (tenant, reopenOnVisitorMessage, json)
            let logger = try options.makeLogger()
            try await withStore(options, logger: logger) { store in
                let settingsStore = TenantSettingsStore(client: store.client, logger: logger)
                var settings = try await settingsStore.read(tenant)
                if let reopen {
                    settings.reopenOnVisitorMessage = reopen
                    settings = try await settingsStore.write(settings, for: tenant)
                }
                if json {
                    printJSON(settings)
                } else {
                    print("reopen-on-visitor-message\t\(settings.reopenOnVisitorMessage)")
                }
            }
        }
    }
}
