import ArgumentParser
import EventStore
import Foundation
import SharedTypes
import Webhooks

extension Convo {
    /// `convo webhooks`: a tenant's endpoints and their deliveries, as the API has them.
    struct WebhooksCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "webhooks",
            abstract: "Configure webhook endpoints (Standard Webhooks) and look at their deliveries.",
            subcommands: [Put.self, List.self, Get.self, Delete.self, Deliveries.self, Redeliver.self])

        struct Put: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create or replace an endpoint and enable it. A new secret for an existing endpoint is a rotation: the old one signs beside it for 24 h.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The endpoint's tenant.") var tenant: TenantID
            @Argument(help: "The endpoint's id: 1 to 64 of A-Z a-z 0-9 _ -.") var id: String
            @Option(help: "Where messages are POSTed (http or https).") var url: String
            @Option(name: .customLong("event-type"), help: "An event type it wants (repeat): \(WebhookEventType.allCases.map(\.rawValue).joined(separator: ", ")).")
            var eventTypes: [String] = []
            @Option(help: "The signing secret, whsec_…; one is made for a new endpoint when left out (printed once).") var secret: String?
            @Flag(help: "Print the endpoint as JSON.") var json = false

            func validate() throws {
                guard WebhookEndpoint.isValidID(id) else { throw ValidationError("a webhook id is 1 to 64 of A-Z a-z 0-9 _ -") }
                do {
                    try WebhookEndpoint.validateURL(url)
                    _ = try WebhookEventType.parse(eventTypes)
                    _ = try secret.map { try WebhookSecret($0) }
                } catch { throw ValidationError(GlobalOptions.message(of: error)) }
            }

            func run() async throws {
                let (tenant, id, url, json) = (tenant, id, url, json)
                let types = try WebhookEventType.parse(eventTypes)
                let secret = try secret.map { try WebhookSecret($0) }
                try await withWebhookStore(options) { webhooks in
                    let result = try await webhooks.put(tenant: tenant, id: id, url: url, eventTypes: types, secret: secret)
                    if json {
                        var response = WebhookResponse(result.endpoint, health: nil)
                        response.secret = result.generatedSecret?.encoded
                        printJSON(response)
                    } else {
                        if let generated = result.generatedSecret { print(generated.encoded) }
                        printError("webhook \(id) of tenant \(tenant) \(result.created ? "created" : "replaced"), enabled: \(types.map(\.rawValue).joined(separator: ", ")) → \(url)")
                    }
                }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List a tenant's endpoints.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The endpoints' tenant.") var tenant: TenantID
            @Flag(help: "Print the endpoints as JSON.") var json = false

            func run() async throws {
                let (tenant, json) = (tenant, json)
                try await withWebhookStore(options) { webhooks in
                    let endpoints = try await webhooks.endpoints(tenant: tenant)
                    if json { return printJSON(endpoints.map { WebhookResponse($0, health: nil) }) }
                    for endpoint in endpoints {
                        let state = endpoint.enabled ? "enabled" : "disabled: \(endpoint.disabledReason ?? "")"
                        print("\(endpoint.id)\t\(endpoint.url)\t\(endpoint.eventTypes.map(\.rawValue).joined(separator: ","))\t\(state)")
                    }
                }
            }
        }

        struct Get: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show an endpoint with what was measured of it: messages owed, events behind, active senders.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The endpoint's tenant.") var tenant: TenantID
            @Argument(help: "The endpoint's id.") var id: String

            func run() async throws {
                let (tenant, id) = (tenant, id)
                try await withWebhookStore(options) { webhooks in
                    guard let endpoint = try await webhooks.endpoint(tenant: tenant, id: id) else { throw CommandFailure("no webhook '\(id)' in tenant \(tenant)") }
                    printJSON(WebhookResponse(endpoint, health: try await webhooks.health(of: endpoint)))
                }
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete an endpoint and its deliveries.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The endpoint's tenant.") var tenant: TenantID
            @Argument(help: "The endpoint's id.") var id: String

            func run() async throws {
                let (tenant, id) = (tenant, id)
                try await withWebhookStore(options) { webhooks in
                    guard try await webhooks.delete(tenant: tenant, id: id) else { throw CommandFailure("no webhook '\(id)' in tenant \(tenant)") }
                    printError("webhook \(id) of tenant \(tenant) deleted")
                }
            }
        }

        struct Deliveries: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "An endpoint's deliveries, newest first, with their attempts, as JSON.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The endpoint's tenant.") var tenant: TenantID
            @Argument(help: "The endpoint's id.") var id: String
            @Option(help: "pending or delivered.") var status: String?
            @Option(help: "Only deliveries with a smaller id.") var before: Int64?
            @Option(help: "How many, 1 to 500.") var limit = 100

            func run() async throws {
                let (tenant, id, status, before, limit) = (tenant, id, status, before, limit)
                try await withWebhookStore(options) { webhooks in
                    printJSON(try await webhooks.deliveries(tenant: tenant, endpoint: id, status: status, before: before, limit: limit))
                }
            }
        }

        struct Redeliver: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Send a delivery's event once more (the endpoint's sender picks it up within a second).")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The endpoint's tenant.") var tenant: TenantID
            @Argument(help: "The endpoint's id.") var id: String
            @Argument(help: "The delivery's id.") var delivery: Int64

            func run() async throws {
                let (tenant, id, delivery) = (tenant, id, delivery)
                try await withWebhookStore(options) { webhooks in
                    guard let made = try await webhooks.redeliver(tenant: tenant, endpoint: id, id: delivery) else {
                        throw CommandFailure("webhook '\(id)' of tenant \(tenant) has no delivery \(delivery)")
                    }
                    printJSON(made)
                }
            }
        }
    }
}

/// Runs `body` with the webhook store of a migrated database.
func withWebhookStore<T: Sendable>(_ options: GlobalOptions, _ body: @Sendable (WebhookStore) async throws -> T) async throws -> T {
    let logger = try options.makeLogger()
    return try await withStore(options, logger: logger) { store in
        do {
            return try await body(WebhookStore(client: store.client, store: store, logger: logger))
        } catch let error as CommandFailure {
            throw error
        } catch {
            throw CommandFailure(error)
        }
    }
}
