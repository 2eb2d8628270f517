import Foundation
import Hummingbird
import SharedTypes

/// The console's sign-in: a key (an operator's, or an agent's own) is exchanged once for a session cookie,
/// so the page never keeps the key. `POST /console/session` signs in, `GET` says who is signed in (and
/// gives the page its CSRF token again after a reload), `DELETE` signs out.
///
/// The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends it),
/// `Path=/`, and `Secure` when the request came over HTTPS (`X-Forwarded-Proto: https` from a proxy that ends
/// TLS). With it, the `/v1` API takes the session in place of `Authorization`; a request that changes
/// something must also carry the session's token in `X-CSRF-Token` (see ``Authenticate``).
struct ConsoleRoutes: Sendable {
    let context: ServerContext

    func register(on router: Router<ConvoRequestContext>) {
        // (`/console/` too: the router takes a path with or without its trailing slash.)
        router.get("/console") { _, _ in Self.asset(PackageResources.index_html, type: "text/html; charset=utf-8") }
        router.get("/console/assets/shared.js") { _, _ in Self.asset(PackageResources.shared_js, type: "text/javascript; charset=utf-8") }
        router.get("/console/assets/graph.js") { _, _ in Self.asset(PackageResources.graph_js, type: "text/javascript; charset=utf-8") }
        router.get("/console/assets/console.js") { _, _ in Self.asset(PackageResources.console_js, type: "text/javascript; charset=utf-8") }
        router.get("/console/assets/console.css") { _, _ in Self.asset(PackageResources.console_css, type: "text/css; charset=utf-8") }
        router.post("/console/session", use: signIn)
        router.get("/console/session", use: current)
        router.delete("/console/session", use: signOut)
    }

    /// What every console file is sent with: its scripts, styles and requests come from this server only, no
    /// other site may frame it, and nothing is guessed from content.
    static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy:
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        .xContentTypeOptions: "nosniff",
        .init("Referrer-Policy")!: "no-referrer",
        .init("X-Frame-Options")!: "DENY",
        .cacheControl: "no-cache",
    ]

    static func asset(_ bytes: [UInt8], type: String) -> Response {
        var headers = securityHeaders
        headers[.contentType] = type
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    struct SignIn: Decodable {
        var key: String
    }

    struct SessionBody: ResponseEncodable {
        var keyId: String
        var tenant: String
        var scopes: [String]
        var csrfToken: String
        var expiresAt: Date
        /// The person an agent's key belongs to.
        var userId: UUID?

        init(_ session: ConsoleSession) {
            keyId = session.key.id
            tenant = session.key.tenant.rawValue
            scopes = session.key.scopes.map(\.rawValue).sorted()
            csrfToken = session.csrfToken
            expiresAt = session.expiresAt
            userId = session.key.userId
        }
    }

    @Sendable func signIn(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> Response {
        let body = try await request.decodeJSON(SignIn.self, context: requestContext)
        let key: APIKeyRecord
        switch try await context.keys.authenticate(body.key, from: requestContext.clientAddress) {
        case .valid(let record): key = record
        case .refused: throw APIError(.unauthorized, "invalid_key", "the key is unknown or revoked")
        case .limited(let wait):
            throw APIError.tooManyFailedAuthentications(retryAfter: wait, "key")
        }
        let (token, session) = try await context.sessions.store.create(for: key)
        var response = try SessionBody(session).response(from: request, context: requestContext)
        response.status = .created
        response.headers[.cacheControl] = "no-store"
        response.setCookie(Self.cookie(token, maxAge: Int(ConsoleSessionStore.lifetime.components.seconds), request: request))
        return response
    }

    @Sendable func current(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> Response {
        let session = try await context.sessions.session(of: request, requestContext)
        var response = try SessionBody(session).response(from: request, context: requestContext)
        response.headers[.cacheControl] = "no-store"
        return response
    }

    @Sendable func signOut(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> Response {
        let session = try await context.sessions.session(of: request, requestContext)
        try Authenticate.requireCSRF(request, session: session)
        if let token = request.cookies[ConsoleSessionStore.cookieName]?.value { _ = try await context.sessions.end(token) }
        var response = Response(status: .noContent)
        response.setCookie(Self.cookie("", maxAge: 0, request: request))
        return response
    }

    /// An HttpOnly, SameSite=Strict cookie, `Secure` when the request came over HTTPS (`X-Forwarded-Proto`).
    static func cookie(
        _ value: String, named name: String = ConsoleSessionStore.cookieName, path: String = "/", maxAge: Int, request: Request
    ) -> Cookie {
        let secure = request.headers[.init("X-Forwarded-Proto")!]?.lowercased() == "https"
        return Cookie(name: name, value: value, maxAge: maxAge, path: path, secure: secure, httpOnly: true, sameSite: .strict)
    }
}
