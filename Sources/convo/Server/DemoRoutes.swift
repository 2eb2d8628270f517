import Crypto
import Foundation
import Hummingbird
import Responder
import SharedTypes

/// `/demo` (`convo serve --demo-tenant T`, off by default): a visitor chat widget beside the live event log of
/// its conversation, so a new user sees the whole loop (message, events, reply; an agent taking over) in the
/// first minute.
///
/// No key is needed: whoever can reach the server writes into the demo tenant's conversations. A browser is
/// a visitor by a random token in an `HttpOnly`, `SameSite=Strict` cookie; its visitor id and conversation id
/// are derived from the token's SHA-256, so neither the console nor the log shows the token, and a visitor
/// reads and writes its own conversation only. The event log shows everything the conversation holds,
/// internal notes and tool calls included: it is a tour for the operator, not a widget for real visitors.
struct DemoRoutes: Sendable {
    let context: ServerContext
    let tenant: TenantID

    static let cookieName = "convo_demo"
    static let prefix = "cvd_"

    func register(on router: Router<ConvoRequestContext>) {
        router.get("/demo") { _, _ in ConsoleRoutes.asset(PackageResources.demo_html, type: "text/html; charset=utf-8") }
        router.get("/demo/assets/demo.js") { _, _ in ConsoleRoutes.asset(PackageResources.demo_js, type: "text/javascript; charset=utf-8") }
        router.post("/demo/visitor", use: visitor)
        router.post("/demo/messages", use: message)
        router.get("/demo/stream", use: stream)
    }

    struct Visitor: ResponseEncodable {
        var visitorUid: String
        var conversationId: String
        var tenant: String
    }

    /// The browser's visitor: the cookie's, or a new one (and its cookie).
    @Sendable func visitor(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> Response {
        try Authenticate.requireSameOrigin(request)
        let existing = (request.cookies[Self.cookieName]?.value).flatMap { ConsoleSessionStore.isWellFormed($0, prefix: Self.prefix) ? $0 : nil }
        let token = existing ?? Self.prefix + ConsoleSessionStore.randomToken()
        let (visitor, conversation) = Self.identity(of: token)
        var response = try Visitor(visitorUid: visitor.rawValue, conversationId: conversation.rawValue, tenant: tenant.rawValue)
            .response(from: request, context: requestContext)
        response.headers[.cacheControl] = "no-store"
        if existing == nil {
            response.setCookie(ConsoleRoutes.cookie(token, named: Self.cookieName, path: "/demo", maxAge: 86400, request: request))
        }
        return response
    }

    struct DemoMessage: Decodable {
        var messageId: String
        var text: String
    }

    /// The visitor's message, stored as `POST /v1/conversations/{id}/messages` stores one.
    @Sendable func message(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<MessageAccepted> {
        try Authenticate.requireSameOrigin(request)
        let (visitor, conversation) = try Self.identity(of: request)
        let body = try await request.decodeJSON(DemoMessage.self, context: requestContext)
        return try await ConversationRoutes(context: context).accept(
            IncomingMessage(tenant: tenant, conversationId: conversation, visitorUid: visitor, messageId: body.messageId, text: body.text, sentAt: Date()))
    }

    /// The visitor's conversation's events (`Last-Event-ID` resumes), as the `/v1` stream gives them.
    @Sendable func stream(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> Response {
        let (_, conversation) = try Self.identity(of: request)
        return try StreamRoute.events(
            of: conversation, tenant: tenant, after: try StreamRoute.resumePosition(request) ?? 0, context: context, isLive: nil)
    }

    static func identity(of request: Request) throws -> (VisitorUID, ConversationID) {
        guard let token = request.cookies[cookieName]?.value, ConsoleSessionStore.isWellFormed(token, prefix: prefix) else {
            throw APIError(.unauthorized, "no_demo_visitor", "no demo visitor: POST /demo/visitor first (the page does)")
        }
        return identity(of: token)
    }

    static func identity(of token: String) -> (VisitorUID, ConversationID) {
        let digest = SHA256.hash(data: Data(token.utf8)).prefix(10).map { String(format: "%02x", $0) }.joined()
        let id = "demo-" + digest
        return (VisitorUID(rawValue: id)!, ConversationID(rawValue: id)!)
    }
}
