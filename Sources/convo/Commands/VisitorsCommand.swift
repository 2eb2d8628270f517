import ArgumentParser
import EventStore
import Foundation
import Responder
import SharedTypes

extension Convo {
    /// `convo visitors`: a visitor's rights — forget them, export what convo holds, apply retention.
    struct Visitors: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "visitors", abstract: "Forget a visitor (crypto-shredding), export what convo holds about them, or run a retention pass.",
            subcommands: [Forget.self, Export.self, Retention.self])

        struct Forget: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Destroy a visitor's data keys: everything sealed with them reads as erased, everywhere, for good. Idempotent.")

            @OptionGroup var options: GlobalOptions
            @Argument(help: "The visitor's uid.") var visitor: VisitorUID
            @Option(help: "The tenant.") var tenant: TenantID
            @Option(help: "Why (kept in the erasure's record).") var reason = "requested"
            @Flag(help: "Print the erasure's record as JSON.") var json = false

            func run() async throws {
                let (visitor, tenant, reason, json) = (visitor, tenant, reason, json)
                guard (1...500).contains(reason.unicodeScalars.count) else { throw ValidationError("--reason has 1 to 500 characters") }
                let logger = try options.makeLogger()
                _ = try options.requiredKeyring()
                try await withStore(options, logger: logger) { store in
                    let erasure = try await VisitorPrivacy(store: store, logger: logger).forget(visitor, tenant: tenant, reason: reason, requestedBy: "cli")
                    if json {
                        printJSON(erasure)
                    } else {
                        print(
                            "\(erasure.alreadyForgotten ? "already forgotten" : "forgotten")\tvisitor \(erasure.visitorUid)\terasure \(erasure.erasureId)\t"
                                + "\(erasure.conversations.count) conversation(s)\tkey generation(s) \(erasure.keyGenerations.map(String.init).joined(separator: ","))")
                    }
                }
            }
        }

        struct Export: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Print everything convo holds about a visitor, as JSON.")

            @OptionGroup var options: GlobalOptions
            @Argument(help: "The visitor's uid.") var visitor: VisitorUID
            @Option(help: "The tenant.") var tenant: TenantID

            func run() async throws {
                let (visitor, tenant) = (visitor, tenant)
                let logger = try options.makeLogger()
                _ = try options.requiredKeyring()
                try await withStore(options, logger: logger) { store in
                    printJSON(try await VisitorPrivacy(store: store, logger: logger).export(visitor, tenant: tenant))
                }
            }
        }

        struct Retention: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Run one retention pass now: forget the visitors whose last activity is older than their tenant's visitorRetentionDays.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "Only this tenant.") var tenant: TenantID?
            @Flag(name: .customLong("dry-run"), help: "List who would be forgotten; forget nobody.") var dryRun = false
            @Flag(help: "Print the report as JSON.") var json = false

            func run() async throws {
                let (tenant, dryRun, json) = (tenant, dryRun, json)
                let logger = try options.makeLogger()
                _ = try options.requiredKeyring()
                try await withStore(options, logger: logger) { store in
                    let progress = ProgressPrinter(interactive: ProgressPrinter.isInteractive)
                    let started = ContinuousClock.now
                    let report = try await RetentionService(store: store, logger: logger).pass(tenant: tenant, dryRun: dryRun) { done, total in
                        progress.update(label: "retention", subject: "visitors", done: done, total: total, since: started)
                    }
                    progress.finish()
                    if json {
                        printJSON(report)
                        return
                    }
                    guard report.ran else {
                        printError("another process is running a retention pass; nothing done")
                        throw ExitCode(3)
                    }
                    for candidate in report.candidates {
                        print("\(dryRun ? "would forget" : "forgot")\t\(candidate.tenant)\t\(candidate.visitorUid)\tlast activity \(Timestamp.string(from: candidate.lastActivityAt))")
                    }
                    print(dryRun ? "\(report.candidates.count) visitor(s) would be forgotten" : "\(report.forgotten) visitor(s) forgotten")
                }
            }
        }
    }

    /// `convo encryption`: master keys.
    struct Encryption: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "encryption", abstract: "Master keys: make one, see which wrap the data keys, rotate.",
            subcommands: [GenerateKey.self, Status.self, RotateMasterKey.self])

        struct GenerateKey: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "generate-key", abstract: "Print a new random master key (base64 of 32 bytes) and its id on standard error.")

            func run() async throws {
                let key = MasterKeyring.generateKey()
                print(key)
                printError("key id \(try MasterKeyring(parsing: key).current.id)")
            }
        }

        struct Status: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "How many live data keys each master key wraps, and which keys this process has.")

            @OptionGroup var options: GlobalOptions

            func run() async throws {
                let logger = try options.makeLogger()
                let keyring = try options.keyring()
                try await withStore(options, logger: logger) { store in
                    let counts = try await store.vault.keysByMasterKey()
                    for (id, count) in counts.sorted(by: { $0.key < $1.key }) {
                        let role = keyring?.current.id == id ? "current" : keyring?.keys.contains { $0.id == id } == true ? "accepted" : "missing"
                        print("\(id)\t\(count) data key(s)\t\(role)")
                    }
                    if counts.isEmpty { print("no live data keys") }
                }
            }
        }

        struct RotateMasterKey: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "rotate-master-key",
                abstract: "Wrap every data key with the current (first) master key. Run with the new key first and the old ones after; servers given both keep working throughout.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "Data keys per batch.") var batchSize = 500

            func run() async throws {
                let batchSize = batchSize
                guard (1...10_000).contains(batchSize) else { throw ValidationError("--batch-size is between 1 and 10000") }
                let logger = try options.makeLogger()
                let keyring = try options.requiredKeyring()
                try await withStore(options, logger: logger) { store in
                    let progress = ProgressPrinter(interactive: ProgressPrinter.isInteractive)
                    let started = ContinuousClock.now
                    let done = try await store.vault.rewrapAll(batchSize: batchSize) { done, left in
                        progress.update(label: "rotate", subject: "data keys", done: done, total: done + left, since: started)
                    }
                    progress.finish()
                    let counts = try await store.vault.keysByMasterKey()
                    let others = counts.filter { $0.key != keyring.current.id }.values.reduce(0, +)
                    print("\(done) data key(s) rewrapped; \(counts[keyring.current.id] ?? 0) wrapped by \(keyring.current.id), \(others) by other keys")
                    if others > 0 { throw ExitCode(1) }
                }
            }
        }
    }
}
