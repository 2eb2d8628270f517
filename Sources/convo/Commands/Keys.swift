import ArgumentParser
import EventStore
import Foundation
import SharedTypes

extension Convo {
    /// `convo keys`: API keys of tenants.
    struct Keys: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create, list and revoke API keys.", subcommands: [Create.self, List.self, Revoke.self])

        struct Create: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create a key for a tenant (and the tenant when it is new). The key is printed once; only its hash is kept.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The tenant the key belongs to.") var tenant: TenantID
            @Option(help: "Comma-separated: ingest (post messages), read (query), admin (publish workflows, read the audit).")
            var scopes: String
            @Option(help: "A label to tell keys apart.") var name: String = ""
            @Flag(help: "Print {\"key\": …, \"id\": …} as JSON.") var json = false

            func validate() throws {
                guard let parsed = Scope.parseList(scopes) else {
                    throw ValidationError("--scopes is a comma-separated list of ingest, read and admin, got '\(scopes)'")
                }
                guard !parsed.contains(.agent) else {
                    throw ValidationError("an agent key belongs to a person: make it with `convo agents create`")
                }
                guard name.count <= 200 else { throw ValidationError("--name has at most 200 characters") }
            }

            func run() async throws {
                let (tenant, scopes, name) = (tenant, Scope.parseList(scopes)!, name)
                try await withKeyStore(options) { keys in
                    let (key, record) = try await keys.create(tenant: tenant, scopes: scopes, name: name)
                    if json {
                        printJSON(CreatedKey(key: key, id: record.id, tenant: record.tenant.rawValue, scopes: record.scopes))
                    } else {
                        print(key)
                        printError("key \(record.id) for tenant \(record.tenant) with scopes \(record.scopes.map(\.rawValue).joined(separator: ",")); it is not shown again")
                    }
                }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List keys (never their secrets).")

            @OptionGroup var options: GlobalOptions
            @Option(help: "Only this tenant's keys.") var tenant: TenantID?
            @Flag(help: "Print the keys as JSON.") var json = false

            func run() async throws {
                let tenant = tenant
                try await withKeyStore(options) { keys in
                    let records = try await keys.list(tenant: tenant)
                    if json {
                        printJSON(records)
                        return
                    }
                    print("ID                TENANT            SCOPES             CREATED               REVOKED               NAME")
                    for record in records {
                        let columns = [
                            record.id.padding(toLength: 18, withPad: " ", startingAt: 0),
                            record.tenant.rawValue.padding(toLength: 18, withPad: " ", startingAt: 0),
                            record.scopes.map(\.rawValue).joined(separator: ",").padding(toLength: 19, withPad: " ", startingAt: 0),
                            record.createdAt.formatted(.iso8601).padding(toLength: 22, withPad: " ", startingAt: 0),
                            (record.revokedAt?.formatted(.iso8601) ?? "-").padding(toLength: 22, withPad: " ", startingAt: 0),
                            record.name,
                        ]
                        print(columns.joined())
                    }
                }
            }
        }

        struct Revoke: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Revoke a key by its id. Every server refuses it within a few seconds (their key cache).")

            @OptionGroup var options: GlobalOptions
            @Argument(help: "The key's id (as `keys list` shows it).") var id: String

            func run() async throws {
                let id = id
                try await withKeyStore(options) { keys in
                    guard let record = try await keys.revoke(id) else { throw CommandFailure("no key '\(id)'") }
                    print("revoked key \(record.id) of tenant \(record.tenant)")
                }
            }
        }
    }
}

struct CreatedKey: Codable {
    var key: String
    var id: String
    var tenant: String
    var scopes: [Scope]
}

/// Runs `body` with the key store of a migrated database; store errors become a message and exit status 1.
private func withKeyStore(_ options: GlobalOptions, _ body: @Sendable (APIKeyStore) async throws -> Void) async throws {
    let logger = try options.makeLogger()
    try await withPostgresClient(url: try options.databaseURL(), connectTimeout: try options.connectTimeout(), logger: logger) { client in
        do {
            try await Migrator(client: client, logger: logger).requireCurrent()
            try await body(APIKeyStore(client: client, logger: logger))
        } catch let error as CommandFailure {
            throw error
        } catch {
            throw CommandFailure(error)
        }
    }
}
