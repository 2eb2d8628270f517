import Hummingbird

/// Requires `Authorization: Bearer KEY` with a live key, and puts the key in the context. Failed
/// authentications are limited per client address (``FailureLimiter``): 429 with `Retry-After` past it. Which scope a
/// route needs is the route's to check (``ConvoRequestContext/tenant(for:)``).
struct Authenticate: RouterMiddleware {
    let keys: KeyAuthenticator

    func handle(_ request: Request, context: ConvoRequestContext, next: (Request, ConvoRequestContext) async throws -> Response) async throws -> Response {
        let challenge: HTTPFields = [.wwwAuthenticate: "Bearer"]
        guard let header = request.headers[.authorization] else {
            throw APIError(.unauthorized, "missing_key", "send Authorization: Bearer KEY", headers: challenge)
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            throw APIError(.unauthorized, "invalid_key", "the Authorization header is Bearer KEY", headers: challenge)
        }
        let key: APIKeyRecord
        switch try await keys.authenticate(String(parts[1]), from: context.clientAddress) {
        case .valid(let record):
            key = record
        case .refused:
            throw APIError(.unauthorized, "invalid_key", "the key is unknown or revoked", headers: challenge)
        case .limited(let wait):
            throw APIError(
                .tooManyRequests, "too_many_failed_authentications",
                "too many requests with an unknown or malformed key from this address; retry in \(wait) s", headers: [.retryAfter: "\(wait)"])
        }
        var context = context
        context.key = key
        context.logger[metadataKey: "convo.key"] = "\(key.id)"
        return try await next(request, context)
    }
}
