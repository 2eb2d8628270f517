import EventStore
import Foundation
import Hummingbird
import Logging
import PostgresNIO
import Projections
import Responder
import ServiceLifecycle
import SharedTypes

/// Everything the HTTP routes use, built once per process.
struct ServerContext: Sendable {
    let client: PostgresClient
    let store: PostgresEventStore
    let redis: RedisClient
    let migrator: Migrator
    let ingestor: MessageIngestor
    let processor: ConversationProcessor
    let responder: ResponderService
    /// One runner per projection; each is active in one process at a time.
    let runners: [ProjectionRunner]

    /// The context of one `convo serve` process.
    static func make(
        client: PostgresClient, redis: RedisClient, provider: any AIProvider = RuleProvider(),
        processing: ConversationProcessor.Configuration = .init(), runners: ProjectionRunner.Configuration = .init(), logger: Logger
    ) -> ServerContext {
        let store = PostgresEventStore(client: client, logger: logger)
        let processor = ConversationProcessor(
            store: store, redis: redis, workflows: WorkflowRepository(client: client, logger: logger), provider: provider,
            configuration: processing, logger: logger)
        return ServerContext(
            client: client, store: store, redis: redis, migrator: Migrator(client: client, logger: logger),
            ingestor: MessageIngestor(store: store, logger: logger), processor: processor,
            responder: ResponderService(processor: processor, store: store, logger: logger),
            runners: ProjectionRegistry.standard.map { ProjectionRunner(projection: $0, store: store, configuration: runners, logger: logger) })
    }
}

/// The routes of `convo serve`.
///
/// `background: false` leaves the projection runners out of `/readyz` (they do not run).
func buildRouter(_ context: ServerContext, background: Bool = true) -> Router<BasicRequestContext> {
    let router = Router()
    router.add(middleware: LogRequestsMiddleware(.debug))
    router.get("healthz") { _, _ in
        HealthResponse(status: "ok")
    }
    router.get("readyz") { _, _ in
        let report = await ReadinessCheck(migrator: context.migrator, redis: context.redis, runners: background ? context.runners : []).run()
        let failed = report.checks.filter { $0.value != "ok" }.sorted { $0.key < $1.key }
        let body = ReadinessResponse(
            status: report.ready ? "ready" : "unavailable", checks: report.checks,
            error: report.ready
                ? nil
                : .init(code: "not_ready", message: failed.map { "\($0.key): \($0.value)" }.joined(separator: "; ")))
        return EditedResponse(status: report.ready ? .ok : .serviceUnavailable, response: body)
    }
    router.get("v1/tools") { _, _ in
        ToolsResponse(tools: ToolCatalogue.all)
    }
    router.post("v1/conversations/:conversation/messages") { request, requestContext -> EditedResponse<MessageAccepted> in
        guard let conversation = requestContext.parameters.get("conversation").flatMap(ConversationID.init(rawValue:)) else {
            throw APIError(.badRequest, "invalid_conversation", "a conversation id has 1 to 128 characters of A-Z a-z 0-9 _ . : -")
        }
        let body: IngestRequest
        do {
            body = try await request.decode(as: IngestRequest.self, context: requestContext)
        } catch {
            throw APIError(.badRequest, "invalid_body", "the body is JSON with visitorUid, messageId and text")
        }
        guard let visitor = VisitorUID(rawValue: body.visitorUid) else {
            throw APIError(.badRequest, "invalid_visitor", "a visitor id has 1 to 128 characters of A-Z a-z 0-9 _ . : -")
        }
        do {
            let result = try await context.ingestor.ingest(
                IncomingMessage(
                    tenant: .default, conversationId: conversation, visitorUid: visitor, messageId: body.messageId, text: body.text,
                    sentAt: body.sentAt ?? Date()))
            // The responder service is woken by the store's subscription; scheduling here only saves the hop.
            context.responder.messageIngested(tenant: .default, visitor: visitor, conversation: conversation)
            return EditedResponse(
                status: result.isDuplicate ? .ok : .accepted,
                response: MessageAccepted(
                    conversationId: conversation.rawValue, messageId: body.messageId, streamVersion: result.streamVersion,
                    position: result.globalPosition, duplicate: result.isDuplicate))
        } catch let error as ResponderError where error.code == .invalidMessage {
            throw APIError(.badRequest, "invalid_message", error.message)
        } catch let error as ResponderError where error.code == .conversationOwnedByAnotherVisitor {
            throw APIError(.conflict, "conversation_owned_by_another_visitor", error.message)
        } catch let error as EventStoreError where error.code == .unavailable {
            throw APIError(.serviceUnavailable, "database_unavailable", "PostgreSQL is unavailable; retry with the same messageId")
        }
    }
    router.get("v1/conversations/:conversation/state") { _, requestContext -> WorkflowStateResponse in
        guard let conversation = requestContext.parameters.get("conversation").flatMap(ConversationID.init(rawValue:)) else {
            throw APIError(.badRequest, "invalid_conversation", "a conversation id has 1 to 128 characters of A-Z a-z 0-9 _ . : -")
        }
        let state = try await WorkflowStateProjection().current(conversation, tenant: .default, store: context.store, logger: requestContext.logger)
        let messages = try await context.store.streamVersion(conversation.messagesStream, tenant: .default)
        guard state.version > 0 || messages > 0 else {
            throw APIError(.notFound, "conversation_not_found", "no conversation \(conversation)")
        }
        return WorkflowStateResponse(conversationId: conversation.rawValue, state: state)
    }
    return router
}

/// An error answered as `{"error": {"code", "message"}}` with its status.
struct APIError: HTTPResponseError {
    var status: HTTPResponse.Status
    var body: ErrorBody

    init(_ status: HTTPResponse.Status, _ code: String, _ message: String) {
        self.status = status
        self.body = ErrorBody(code: code, message: message)
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        let data = try JSONEncoder().encode(["error": body])
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

struct ToolsResponse: ResponseCodable {
    var tools: [ToolDefinition]
}

struct IngestRequest: Decodable {
    var visitorUid: String
    var messageId: String
    var text: String
    var sentAt: Date?
}

struct MessageAccepted: ResponseCodable {
    var conversationId: String
    var messageId: String
    var streamVersion: Int64
    var position: Int64
    var duplicate: Bool
}

struct WorkflowStateResponse: ResponseCodable {
    var conversationId: String
    var state: WorkflowState
}

/// The `convo serve` application: the HTTP server with the PostgreSQL client and the event store as services
/// of one ServiceGroup (started in that order, shut down in reverse).
///
/// `background: false` leaves the responder service and the projection runners out (route tests that share
/// a database with others).
func buildApplication(_ context: ServerContext, host: String, port: Int, background: Bool = true, logger: Logger) -> some ApplicationProtocol {
    Application(
        router: buildRouter(context, background: background),
        configuration: .init(address: .hostname(host, port: port), serverName: "convo"),
        services: background ? [context.client, context.store] + context.runners + [context.responder] : [context.client, context.store],
        logger: logger
    )
}

struct HealthResponse: ResponseCodable {
    var status: String
}

struct ReadinessResponse: ResponseCodable {
    var status: String
    var checks: [String: String]
    var error: ErrorBody?
}

/// The body of every error convo returns: `{"error": {"code": "…", "message": "…"}}`.
struct ErrorBody: Codable, Sendable {
    var code: String
    var message: String
}
