import Foundation
import HTTPTypes
import Hummingbird

/// Requires `Authorization: Bearer KEY` with a live key, or the console's session cookie with a live session,
/// and puts the key in the context. Failed authentications are limited per client address
/// (``FailureLimiter``): 429 with `Retry-After` past it. Which scope a route needs is the route's to check
/// (``ConvoRequestContext/tenant(for:)``).
///
/// A browser sends a cookie with requests other sites' pages make, so a request authenticated by the cookie
/// that changes something (any method but GET, HEAD, OPTIONS) must also carry the session's CSRF token in
/// `X-CSRF-Token`, which only the console's own page knows, and an `Origin`, when sent, must be this server's.
struct Authenticate: RouterMiddleware {
    let keys: KeyAuthenticator
    let sessions: ConsoleSessions

    func handle(_ request: Request, context: ConvoRequestContext, next: (Request, ConvoRequestContext) async throws -> Response) async throws -> Response {
        let challenge: HTTPFields = [.wwwAuthenticate: "Bearer"]
        let key: APIKeyRecord
        var sessionToken: String?
        if let header = request.headers[.authorization] {
            let parts = header.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "bearer" else {
                throw APIError(.unauthorized, "invalid_key", "the Authorization header is Bearer KEY", headers: challenge)
            }
            switch try await keys.authenticate(String(parts[1]), from: context.clientAddress) {
            case .valid(let record):
                key = record
            case .refused:
                throw APIError(.unauthorized, "invalid_key", "the key is unknown or revoked", headers: challenge)
            case .limited(let wait):
                throw APIError.tooManyFailedAuthentications(retryAfter: wait, "key")
            }
        } else if request.cookies[ConsoleSessionStore.cookieName] != nil {
            let session = try await sessions.session(of: request, context)
            if ![.get, .head, .options].contains(request.method) { try Self.requireCSRF(request, session: session) }
            key = session.key
            sessionToken = request.cookies[ConsoleSessionStore.cookieName]?.value
        } else {
            throw APIError(.unauthorized, "missing_key", "send Authorization: Bearer KEY", headers: challenge)
        }
        var context = context
        context.key = key
        context.sessionToken = sessionToken
        context.logger[metadataKey: "convo.key"] = "\(key.id)"
        return try await next(request, context)
    }

    static let csrfHeader = HTTPField.Name("X-CSRF-Token")!

    /// A request made with the session's cookie that changes something: its CSRF token must match, and its
    /// `Origin` (browsers send one with such requests) must be the host it was sent to.
    ///
    /// - Throws: 403 `csrf_failed` otherwise.
    static func requireCSRF(_ request: Request, session: ConsoleSession) throws {
        guard let sent = request.headers[csrfHeader], APIKeyStore.constantTimeEqual(Data(sent.utf8), Data(session.csrfToken.utf8)) else {
            throw APIError(.forbidden, "csrf_failed", "a request with the console's session changes something only with its X-CSRF-Token")
        }
        try requireSameOrigin(request)
    }

    /// A request whose `Origin` (browsers send one with every request that changes something) is not the
    /// host it was sent to came from another site's page.
    ///
    /// - Throws: 403 `csrf_failed` then.
    static func requireSameOrigin(_ request: Request) throws {
        // ("null", an opaque origin such as a sandboxed frame's, is another site too.)
        if let origin = request.headers[.origin] {
            let host = origin.split(separator: "://", maxSplits: 1).last.map(String.init) ?? origin
            guard let authority = request.head.authority, host.lowercased() == authority.lowercased() else {
                throw APIError(
                    .forbidden, "csrf_failed", "the request came from another site's page (Origin \(origin), sent to \(request.head.authority ?? "no Host"))")
            }
        }
    }
}

extension ConsoleSessions {
    /// The live session of the request's cookie.
    ///
    /// - Throws: 401 without one (or with one that ended, expired, or whose key was revoked), 429 past the
    ///   address's budget of failed attempts.
    func session(of request: Request, _ requestContext: ConvoRequestContext) async throws -> ConsoleSession {
        guard let token = request.cookies[ConsoleSessionStore.cookieName]?.value else {
            throw APIError(.unauthorized, "not_signed_in", "no console session: sign in with POST /console/session")
        }
        switch try await authenticate(token, from: requestContext.clientAddress) {
        case .valid(let session): return session
        case .refused: throw APIError(.unauthorized, "invalid_session", "the console session ended, expired or its key was revoked: sign in again")
        case .limited(let wait):
            throw APIError.tooManyFailedAuthentications(retryAfter: wait, "session")
        }
    }
}
