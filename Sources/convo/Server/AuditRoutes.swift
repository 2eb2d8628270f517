import Audit
import EventStore
import Foundation
import Hummingbird
import SharedTypes

/// The audit trail over HTTP, for keys with the `read` or `admin` scope; the same queries as `convo audit`.
struct AuditRoutes: Sendable {
    let context: ServerContext

    func register(on router: some RouterMethods<ConvoRequestContext>, table: RouteTable) {
        table.add(.get, "/v1/conversations/{conversationId}/workflow-state/history", on: router, use: history)
        table.add(.get, "/v1/conversations/{conversationId}/explain/{eventId}", on: router, use: explain)
        table.add(.get, "/v1/audit/events", on: router, use: events)
        table.add(.get, "/v1/audit/conflicts", on: router, use: conflicts)
        table.add(.get, "/v1/audit/heads", on: router, use: heads)
        table.add(.get, "/v1/conversations/{conversationId}/verify", on: router, use: verify)
    }

    /// Who may read one conversation's audit (its history, a reply's explanation, its chain): people
    /// answering it (agent keys) too, as they read its events.
    static let conversationReaders: [Scope] = [.read, .admin, .agent]

    @Sendable func history(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> AuditResponse<WorkflowHistory> {
        let tenant = try requestContext.tenant(forAnyOf: Self.conversationReaders)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        return AuditResponse(value: try await Self.answer { try await trail(requestContext).workflowHistory(conversation, tenant: tenant) })
    }

    @Sendable func explain(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> AuditResponse<ReplyExplanation> {
        let tenant = try requestContext.tenant(forAnyOf: Self.conversationReaders)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        guard let raw = requestContext.pathParameter("eventId"), let id = UUID(uuidString: raw) else {
            throw APIError(.badRequest, "invalid_event_id", "an event id is a UUID")
        }
        return AuditResponse(value: try await Self.answer { try await trail(requestContext).explain(id, in: conversation, tenant: tenant) })
    }

    @Sendable func events(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> AuditResponse<AuditPage> {
        let query = request.uri.queryParameters
        // An agent reads one conversation's trail (its events' hashes, say), not the tenant's.
        let tenant = try requestContext.tenant(forAnyOf: query["conversation"] == nil ? [.read, .admin] : Self.conversationReaders)
        let known: Set<String> = ["type", "actor", "conversation", "visitor", "tool", "from", "to", "after", "limit", "order"]
        if let unknown = query.map({ String($0.key) }).first(where: { !known.contains($0) }) {
            throw APIError(.badRequest, "invalid_parameter", "unknown parameter '\(unknown)'; known: \(known.sorted().joined(separator: ", "))")
        }
        let filter = try await Self.answer {
            try AuditQueryParameters.filter(
                types: query.getAll("type").flatMap { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }, actor: query["actor"].map(String.init),
                conversation: query["conversation"].map(String.init), visitor: query["visitor"].map(String.init), tool: query["tool"].map(String.init),
                from: query["from"].map(String.init), to: query["to"].map(String.init), after: try Self.integer(query["after"].map(String.init), "after"),
                limit: try Self.integer(query["limit"].map(String.init), "limit").map(Int.init) ?? APILimits.defaultPageSize,
                order: query["order"].map(String.init) ?? "asc")
        }
        return AuditResponse(value: try await Self.answer { try await trail(requestContext).events(tenant: tenant, filter: filter) })
    }

    @Sendable func conflicts(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> AuditResponse<ConflictPage> {
        let query = request.uri.queryParameters
        let tenant = try requestContext.tenant(forAnyOf: query["conversation"] == nil ? [.read, .admin] : Self.conversationReaders)
        let filter = try await Self.answer {
            try AuditQueryParameters.filter(
                conversation: query["conversation"].map(String.init), after: try Self.integer(query["after"].map(String.init), "after"),
                limit: try Self.integer(query["limit"].map(String.init), "limit").map(Int.init) ?? APILimits.defaultPageSize)
        }
        return AuditResponse(value: try await Self.answer { try await trail(requestContext).conflicts(tenant: tenant, filter: filter) })
    }

    /// The hash chains of the conversation's two streams, recomputed now: whether its record was tampered with.
    @Sendable func verify(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> AuditResponse<ChainReport> {
        let tenant = try requestContext.tenant(forAnyOf: Self.conversationReaders)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        var report = ChainReport(streams: 0, events: 0, anchoredHeads: 0, issues: [], issueCount: 0)
        for stream in [conversation.messagesStream, conversation.workflowStream] {
            let part = try await context.store.verifyChains(tenant: tenant, stream: stream)
            report.streams += part.streams
            report.events += part.events
            report.issues += part.issues
            report.issueCount += part.issueCount
        }
        guard report.events > 0 else { throw ConversationRoutes.notFound(conversation) }
        return AuditResponse(value: report)
    }

    /// The stream heads of the caller's tenant, a page at a time (`?after=STREAM&limit=N`, `next` for the
    /// following page): together, an anchor to keep elsewhere (`convo audit verify --anchor`).
    @Sendable func heads(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> AuditResponse<HeadsPage> {
        let tenant = try requestContext.tenant(for: .admin)
        let query = request.uri.queryParameters
        let limit = try Self.integer(query["limit"].map(String.init), "limit") ?? Int64(APILimits.maxPageSize)
        guard (1...Int64(APILimits.maxPageSize)).contains(limit) else {
            throw APIError(.badRequest, "invalid_parameter", "limit is between 1 and \(APILimits.maxPageSize)")
        }
        let after = query["after"].map(String.init)
        if let after, after.isEmpty || after.utf8.count > 300 || after.unicodeScalars.contains("\u{0}") {
            throw APIError(.badRequest, "invalid_parameter", "after is a stream name (the previous page's next)")
        }
        let heads = try await context.store.streamHeads(tenant: tenant, after: after.map { (tenant.rawValue, $0) }, limit: Int(limit))
        let anchor = ChainAnchor(createdAt: Date(), tenant: tenant.rawValue, heads: heads)
        return AuditResponse(value: HeadsPage(anchor: anchor, next: heads.count == Int(limit) ? heads.last?.stream : nil))
    }

    private func trail(_ requestContext: ConvoRequestContext) -> AuditTrail {
        AuditTrail(store: context.store, logger: requestContext.logger)
    }

    /// Runs a query, answering its ``AuditError`` with the matching status.
    static func answer<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as AuditError {
            let status: HTTPResponse.Status
            switch error.code {
            case .conversationNotFound, .eventNotFound: status = .notFound
            case .notAReply: status = .unprocessableContent
            case .invalidFilter: status = .badRequest
            }
            throw APIError(status, error.code.rawValue, error.message)
        }
    }

    static func integer(_ raw: String?, _ name: String) throws -> Int64? {
        guard let raw else { return nil }
        guard let value = Int64(raw) else { throw APIError(.badRequest, "invalid_parameter", "\(name) is a whole number") }
        return value
    }
}

/// An audit answer as a response body: the same JSON as `convo audit … --json`.
struct AuditResponse<Value: Encodable & Sendable>: ResponseEncodable {
    var value: Value
    func encode(to encoder: any Encoder) throws { try value.encode(to: encoder) }
}

/// A page of stream heads: the anchor's fields, and `next` (the `after` of the following page) while there
/// may be more.
struct HeadsPage: Encodable, Sendable {
    var anchor: ChainAnchor
    var next: String?

    enum CodingKeys: String, CodingKey { case format, createdAt, tenant, heads, next }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(anchor.format, forKey: .format)
        try container.encode(anchor.createdAt, forKey: .createdAt)
        try container.encodeIfPresent(anchor.tenant, forKey: .tenant)
        try container.encode(anchor.heads, forKey: .heads)
        try container.encodeIfPresent(next, forKey: .next)
    }
}
