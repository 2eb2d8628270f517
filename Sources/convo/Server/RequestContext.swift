import Foundation
import Hummingbird
import SharedTypes

/// The context of one request: Hummingbird's, plus the API key that made it (set by ``Authenticate``).
struct ConvoRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    /// The caller's key; `nil` on the routes that need none (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`).
    var key: APIKeyRecord?
    /// The console session's token, when the request was authenticated by its cookie rather than a key.
    var sessionToken: String?

    /// The peer's IP address (or its description for other sockets): what failed authentications are
    /// limited by.
    let clientAddress: String

    init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.key = nil
        self.sessionToken = nil
        let remote = source.channel.remoteAddress
        self.clientAddress = remote?.ipAddress ?? remote.map { "\($0)" } ?? "unknown"
    }

    /// Bodies are small JSON documents; anything bigger is refused with 413 before it is read.
    var maxUploadSize: Int { APILimits.maxBodyBytes }

    /// A path parameter, percent-decoded (`shop%3A42` is `shop:42`, as `encodeURIComponent` writes it).
    /// `nil` when it is missing or its percent-encoding is malformed.
    func pathParameter(_ name: String) -> String? {
        // Foundation's decoding (through CoreFoundation here) cost every ingest about 1% of the server's
        // CPU for ids that hold no `%` at all.
        parameters.get(name).flatMap { $0.utf8.contains(UInt8(ascii: "%")) ? $0.removingPercentEncoding : String($0) }
    }

    /// The tenant of the caller's key, when the key has `scope`. An agent's key reads too (`read`): people
    /// answering conversations see them.
    ///
    /// - Throws: 401 without a key, 403 when the key lacks the scope.
    func tenant(for scope: Scope) throws -> TenantID {
        guard let key else { throw APIError(.unauthorized, "missing_key", "send Authorization: Bearer KEY") }
        guard key.scopes.contains(scope) || (scope == .read && key.scopes.contains(.agent)) else {
            throw APIError(.forbidden, "missing_scope", "this key has no '\(scope.rawValue)' scope")
        }
        return key.tenant
    }

    /// The tenant of the caller's key, when the key has one of `scopes`.
    ///
    /// - Throws: 401 without a key, 403 when the key has none of them.
    func tenant(forAnyOf scopes: [Scope]) throws -> TenantID {
        guard let key else { throw APIError(.unauthorized, "missing_key", "send Authorization: Bearer KEY") }
        guard scopes.contains(where: key.scopes.contains) else {
            throw APIError(.forbidden, "missing_scope", "this key has none of the scopes \(scopes.map { "'\($0.rawValue)'" }.joined(separator: ", "))")
        }
        return key.tenant
    }
}

/// The documented limits of the API.
enum APILimits {
    /// The largest request body, in bytes (64 KiB).
    static let maxBodyBytes = 64 * 1024
    /// The most items a page of events or messages holds.
    static let maxPageSize = 1000
    static let defaultPageSize = 100
}
