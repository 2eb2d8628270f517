import ArgumentParser
import EventStore
import Foundation
import Responder
import SharedTypes

extension Convo {
    /// `convo workflows`: check and publish workflow definitions.
    struct Workflows: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate and publish workflows.", subcommands: [Validate.self, Publish.self])

        struct Validate: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Check a workflow file: node types, tools and their arguments, links, reachability, loops that never wait.")

            @Argument(help: "The workflow's JSON file.") var file: String
            @Flag(help: "Print the result as JSON.") var json = false

            func run() async throws {
                let bytes = try readWorkflowFile(file)
                do {
                    let definition = try WorkflowParser.parse(Data(bytes))
                    if json {
                        printJSON(ValidationReport(valid: true, id: definition.id, nodes: definition.nodes.count, issues: []))
                    } else {
                        print("\(file): valid workflow '\(definition.id)' with \(definition.nodes.count) nodes")
                    }
                } catch let error as InvalidWorkflow {
                    if json {
                        printJSON(ValidationReport(valid: false, id: nil, nodes: nil, issues: error.issues))
                    } else {
                        printError("\(file): \(error.issues.count) problem\(error.issues.count == 1 ? "" : "s")")
                        for issue in error.issues { printError("  \(issue)") }
                    }
                    throw ExitCode(1)
                }
            }
        }

        struct Publish: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Publish a workflow as the next version of its id; conversations already running keep their version.")

            @OptionGroup var options: GlobalOptions
            @Argument(help: "The workflow's JSON file.") var file: String
            @Option(help: "The tenant to publish for.") var tenant: TenantID = .default
            @Flag(help: "Print the result as JSON.") var json = false

            func run() async throws {
                let tenant = tenant
                let bytes = try readWorkflowFile(file)
                let logger = try options.makeLogger()
                try await withPostgresClient(url: try options.databaseURL(), connectTimeout: try options.connectTimeout(), logger: logger) { client in
                    do {
                        try await Migrator(client: client, logger: logger).requireCurrent()
                        let published = try await WorkflowRepository(client: client, logger: logger).publish(bytes, tenant: tenant, publishedBy: "cli")
                        let definition = published.definition
                        if json {
                            printJSON(PublishReport(id: definition.id, version: definition.version, tenant: tenant.rawValue, created: published.isNew))
                        } else if published.isNew {
                            print("published \(definition.id) v\(definition.version) for tenant \(tenant)")
                        } else {
                            print("\(definition.id) v\(definition.version) already has this content; nothing published")
                        }
                    } catch let error as InvalidWorkflow {
                        printError("\(file): \(error.issues.count) problem\(error.issues.count == 1 ? "" : "s")")
                        for issue in error.issues { printError("  \(issue)") }
                        throw ExitCode(1)
                    } catch let error as ExitCode {
                        throw error
                    } catch {
                        throw CommandFailure(error)
                    }
                }
            }
        }
    }

    /// `convo tools list`: the tool catalogue, defined once in SharedTypes.
    struct Tools: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the tools workflows and the AI may call.", subcommands: [List.self])

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List every tool with its arguments.")
            @Flag(help: "Print the catalogue as JSON (name, description, JSON Schema of the arguments).") var json = false

            func run() async throws {
                if json {
                    printJSON(ToolCatalogue.all)
                    return
                }
                for tool in ToolCatalogue.all {
                    print("\(tool.name.rawValue)  \(tool.description)")
                    let required = Set(tool.parameters.required ?? [])
                    for (name, schema) in (tool.parameters.properties ?? [:]).sorted(by: { $0.key < $1.key }) {
                        var line = "    \(name)\(required.contains(name) ? "" : " (optional)"): \(schema.description ?? "")"
                        if let values = schema.enum { line += " One of: \(values.joined(separator: ", "))." }
                        print(line)
                    }
                }
            }
        }
    }
}

struct ValidationReport: Encodable {
    var valid: Bool
    var id: String?
    var nodes: Int?
    var issues: [WorkflowIssue]
}

struct PublishReport: Encodable {
    var id: String
    var version: Int
    var tenant: String
    var created: Bool
}

func readWorkflowFile(_ path: String) throws -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else { throw CommandFailure("cannot read \(path)") }
    guard data.count <= 1 << 20 else { throw CommandFailure("\(path) is larger than 1 MiB") }
    return Array(data)
}

func printJSON(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.dateEncodingStrategy = .iso8601
    print(String(decoding: (try? encoder.encode(value)) ?? Data("null".utf8), as: UTF8.self))
}

func printError(_ line: String, newline: Bool = true) {
    FileHandle.standardError.write(Data((line + (newline ? "\n" : "")).utf8))
}
