import Foundation
import Hummingbird
import SharedTypes
import Webhooks

/// A tenant's webhook endpoints, with an `admin` key: configure (`PUT`), read with what was measured of
/// them, delete, page through deliveries and ask for a redelivery.
struct WebhookRoutes: Sendable {
    let context: ServerContext

    func register(on router: some RouterMethods<ConvoRequestContext>, table: RouteTable) {
        table.add(.get, "/v1/webhooks", on: router, use: list)
        table.add(.put, "/v1/webhooks/{webhookId}", on: router, use: put)
        table.add(.get, "/v1/webhooks/{webhookId}", on: router, use: get)
        table.add(.delete, "/v1/webhooks/{webhookId}", on: router, use: delete)
        table.add(.get, "/v1/webhooks/{webhookId}/deliveries", on: router, use: deliveries)
        table.add(.post, "/v1/webhooks/{webhookId}/deliveries/{deliveryId}/redeliver", on: router, use: redeliver)
    }

    struct PutBody: Decodable {
        var url: String
        var eventTypes: [String]
        /// `whsec_…`; convo makes one for a new endpoint when it is left out (shown once, in the answer).
        var secret: String?
    }

    @Sendable func put(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<WebhookResponse> {
        let tenant = try requestContext.tenant(for: .admin)
        let id = try Self.webhookID(requestContext)
        let body = try await request.decodeJSON(PutBody.self, context: requestContext)
        let result = try await Self.mapped {
            let types = try WebhookEventType.parse(body.eventTypes)
            let secret = try body.secret.map { try WebhookSecret($0) }
            return try await context.webhooks.put(tenant: tenant, id: id, url: body.url, eventTypes: types, secret: secret)
        }
        var response = WebhookResponse(result.endpoint, health: nil)
        response.secret = result.generatedSecret?.encoded
        return EditedResponse(status: result.created ? .created : .ok, response: response)
    }

    @Sendable func list(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> WebhookListResponse {
        let tenant = try requestContext.tenant(for: .admin)
        return WebhookListResponse(webhooks: try await Self.mapped { try await context.webhooks.endpoints(tenant: tenant) }.map { WebhookResponse($0, health: nil) })
    }

    @Sendable func get(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> WebhookResponse {
        let endpoint = try await endpoint(requestContext)
        return WebhookResponse(endpoint, health: try await Self.mapped { try await context.webhooks.health(of: endpoint) })
    }

    @Sendable func delete(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> Response {
        let tenant = try requestContext.tenant(for: .admin)
        let id = try Self.webhookID(requestContext)
        guard try await Self.mapped({ try await context.webhooks.delete(tenant: tenant, id: id) }) else { throw Self.notFound(id) }
        return Response(status: .noContent)
    }

    @Sendable func deliveries(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> WebhookDeliveriesResponse {
        let endpoint = try await endpoint(requestContext)
        let query = request.uri.queryParameters
        let limit = try query.get("limit").map { raw in
            guard let value = Int(raw), (1...500).contains(value) else { throw APIError(.badRequest, "invalid_limit", "limit is 1 to 500") }
            return value
        } ?? 100
        let before = try query.get("before").map { raw in
            guard let value = Int64(raw), value > 0 else { throw APIError(.badRequest, "invalid_cursor", "before is a delivery id") }
            return value
        }
        let status = try query.get("status").map { raw in
            guard ["pending", "delivered"].contains(raw) else { throw APIError(.badRequest, "invalid_status", "status is pending or delivered") }
            return raw
        }
        let page = try await Self.mapped {
            try await context.webhooks.deliveries(tenant: endpoint.tenant, endpoint: endpoint.id, status: status, before: before, limit: limit)
        }
        return WebhookDeliveriesResponse(deliveries: page, nextBefore: page.count == limit ? page.last?.id : nil)
    }

    @Sendable func redeliver(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<WebhookDelivery> {
        let endpoint = try await endpoint(requestContext)
        guard let raw = requestContext.pathParameter("deliveryId"), let id = Int64(raw), id > 0 else {
            throw APIError(.badRequest, "invalid_delivery_id", "a delivery id is a positive integer")
        }
        guard let delivery = try await Self.mapped({ try await context.webhooks.redeliver(tenant: endpoint.tenant, endpoint: endpoint.id, id: id) }) else {
            throw APIError(.notFound, "delivery_not_found", "webhook \(endpoint.id) has no delivery \(id)")
        }
        return EditedResponse(status: .accepted, response: delivery)
    }

    private func endpoint(_ requestContext: ConvoRequestContext) async throws -> WebhookEndpoint {
        let tenant = try requestContext.tenant(for: .admin)
        let id = try Self.webhookID(requestContext)
        guard let endpoint = try await Self.mapped({ try await context.webhooks.endpoint(tenant: tenant, id: id) }) else { throw Self.notFound(id) }
        return endpoint
    }

    static func webhookID(_ requestContext: ConvoRequestContext) throws -> String {
        guard let id = requestContext.pathParameter("webhookId"), WebhookEndpoint.isValidID(id) else {
            throw APIError(.badRequest, "invalid_webhook_id", "a webhook id is 1 to 64 of A-Z a-z 0-9 _ -")
        }
        return id
    }

    static func notFound(_ id: String) -> APIError { APIError(.notFound, "webhook_not_found", "no webhook '\(id)' in this tenant") }

    /// Webhook errors as the API answers them: what the caller sent is 422 with a code, PostgreSQL's
    /// failures are left to the error middleware (503 when it is unreachable).
    static func mapped<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as WebhookError {
            switch error.code {
            case .invalidSecret: throw APIError(.unprocessableContent, "invalid_secret", error.message)
            case .invalidURL: throw APIError(.unprocessableContent, "invalid_url", error.message)
            case .invalidEventTypes: throw APIError(.unprocessableContent, "invalid_event_types", error.message)
            case .invalidArgument: throw APIError(.badRequest, "invalid_input", error.message)
            case .notFound: throw APIError(.notFound, "not_found", error.message)
            case .unavailable: throw APIError.unavailable("PostgreSQL")
            default: throw error.cause ?? error
            }
        }
    }
}

struct WebhookResponse: ResponseCodable {
    struct Health: Codable {
        var checkpoint: Int64
        var owed: Int
        var oldestOwedAt: Date?
        var eventsBehind: Int
        var activeSenders: Int
    }

    var id: String
    var url: String
    var eventTypes: [String]
    var enabled: Bool
    var disabledAt: Date?
    var disabledReason: String?
    /// The secret convo made for a new endpoint: shown this once.
    var secret: String?
    /// Secrets signing now: 2 during a rotation.
    var signingSecrets: Int
    var createdAt: Date
    var updatedAt: Date
    var health: Health?

    init(_ endpoint: WebhookEndpoint, health: WebhookStore.Health?) {
        id = endpoint.id
        url = endpoint.url
        eventTypes = endpoint.eventTypes.map(\.rawValue)
        enabled = endpoint.enabled
        disabledAt = endpoint.disabledAt
        disabledReason = endpoint.disabledReason
        let now = Date()
        signingSecrets = endpoint.signing.keys.filter { $0.retiresAt.map { $0 > now } ?? true }.count
        createdAt = endpoint.createdAt
        updatedAt = endpoint.updatedAt
        self.health = health.map {
            Health(checkpoint: endpoint.checkpoint, owed: $0.owed, oldestOwedAt: $0.oldestOwedAt, eventsBehind: $0.eventsBehind, activeSenders: $0.activeSenders)
        }
    }
}

struct WebhookListResponse: ResponseCodable {
    var webhooks: [WebhookResponse]
}

struct WebhookDeliveriesResponse: ResponseCodable {
    var deliveries: [WebhookDelivery]
    /// Pass as `before` for the next page; `null` on the last.
    var nextBefore: Int64?
}

extension WebhookDelivery: ResponseEncodable {}
