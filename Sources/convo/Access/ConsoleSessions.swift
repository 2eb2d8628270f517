import Crypto
import EventStore
import Foundation
import Logging
import Metrics
import PostgresNIO
import SharedTypes
import Synchronization

/// A signed-in console session: the key it was opened with (its tenant and scopes are the session's) and
/// the token the page sends with every request that changes something.
struct ConsoleSession: Sendable, Equatable {
    var key: APIKeyRecord
    var csrfToken: String
    var expiresAt: Date
}

/// The console's sessions in PostgreSQL (table `console_sessions`): `cvs_` + 32 random bytes (base64url) in
/// an HttpOnly cookie, of which only the SHA-256 is stored. A session is refused as soon as it ends, expires,
/// or its key is revoked (or its person disabled): every lookup joins the key.
struct ConsoleSessionStore: Sendable {
    let client: PostgresClient
    let logger: Logger

    static let prefix = "cvs_"
    static let cookieName = "convo_session"
    /// How long a session lasts without a sign-out.
    static let lifetime: Duration = .seconds(12 * 3600)

    /// How long an ended or expired session's row is kept (who was signed in, and when) before a sign-in
    /// prunes it.
    static let kept = "30 days"

    /// A new session for a live key: its token (for the cookie; never stored) and the session. Rows that
    /// expired more than ``kept`` ago go in the same statement, so the table does not grow for ever.
    func create(for key: APIKeyRecord, lifetime: Duration = Self.lifetime) async throws -> (token: String, session: ConsoleSession) {
        let token = Self.prefix + Self.randomToken()
        let csrf = Self.randomToken()
        let seconds = Double(lifetime.components.seconds)
        return try await mappingStoreErrors("open a console session") {
            let rows = try await client.query(
                """
                WITH pruned AS (DELETE FROM console_sessions WHERE expires_at < now() - \(Self.kept)::interval)
                INSERT INTO console_sessions (token_hash, key_id, csrf_token, expires_at)
                VALUES (\(Self.hash(token)), \(key.id), \(csrf), now() + make_interval(secs => \(seconds)))
                RETURNING expires_at
                """, logger: logger)
            var expires = Date().addingTimeInterval(seconds)
            for try await date in rows.decode(Date.self) { expires = date }
            return (token, ConsoleSession(key: key, csrfToken: csrf, expiresAt: expires))
        }
    }

    /// The live session `token` opens, or `nil` when it is malformed, unknown, ended, expired, or its key is
    /// no longer live.
    func session(_ token: String) async throws -> ConsoleSession? {
        guard Self.isWellFormed(token) else { return nil }
        return try await mappingStoreErrors("check a console session") {
            let rows = try await client.query(
                """
                SELECT k.id, k.tenant_id, k.scopes, k.name, k.created_at, k.user_id, s.csrf_token, s.expires_at
                FROM console_sessions s JOIN api_keys k ON k.id = s.key_id LEFT JOIN users u ON u.id = k.user_id
                WHERE s.token_hash = \(Self.hash(token)) AND s.ended_at IS NULL AND s.expires_at > now()
                  AND k.revoked_at IS NULL AND u.disabled_at IS NULL
                """, logger: logger)
            for try await (id, tenant, scopes, name, created, user, csrf, expires) in rows.decode(
                (String, String, [String], String, Date, UUID?, String, Date).self)
            {
                guard let tenant = TenantID(rawValue: tenant) else { return nil }
                let key = APIKeyRecord(
                    id: id, tenant: tenant, scopes: scopes.compactMap(Scope.init(rawValue:)), name: name, createdAt: created, revokedAt: nil, userId: user)
                return ConsoleSession(key: key, csrfToken: csrf, expiresAt: expires)
            }
            return nil
        }
    }

    /// Ends the session (sign-out). Whether a live one was ended.
    @discardableResult
    func end(_ token: String) async throws -> Bool {
        guard Self.isWellFormed(token) else { return false }
        return try await mappingStoreErrors("end a console session") {
            let rows = try await client.query(
                "UPDATE console_sessions SET ended_at = now() WHERE token_hash = \(Self.hash(token)) AND ended_at IS NULL RETURNING 1", logger: logger)
            var ended = false
            for try await _ in rows.decode(Int.self) { ended = true }
            return ended
        }
    }

    /// `cvs_` and 43 base64url characters (32 bytes).
    static func isWellFormed(_ token: String, prefix: String = prefix) -> Bool {
        guard token.hasPrefix(prefix) else { return false }
        let body = token.utf8.dropFirst(prefix.utf8.count)
        return body.count == 43 && body.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
        }
    }

    static func hash(_ token: String) -> Data { Data(SHA256.hash(data: Data(token.utf8))) }

    /// 32 random bytes, base64url without padding (43 characters).
    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }).base64URL
    }
}

/// Checks console session cookies for the HTTP server, as ``KeyAuthenticator`` checks keys: a live session is
/// remembered for `ttl` (so a page's requests cost one query per interval; an ended session or revoked key
/// stops working on every instance within `ttl`, and at once on the instance that ended it), refusals are never
/// cached, and failed attempts count against the same per-address budget as failed keys.
final class ConsoleSessions: Sendable {
    enum Outcome: Sendable {
        case valid(ConsoleSession)
        case refused
        case limited(retryAfter: Int)
    }

    let store: ConsoleSessionStore
    let ttl: Duration
    let limiter: FailureLimiter
    static let maxCached = 10_000

    private let cache = Mutex(ExpiringCache<Data, ConsoleSession>(capacity: ConsoleSessions.maxCached))
    private let lookups = Counter(label: "convo.console.session_lookups")

    init(store: ConsoleSessionStore, ttl: Duration, limiter: FailureLimiter) {
        self.store = store
        self.ttl = ttl
        self.limiter = limiter
    }

    func authenticate(_ token: String, from client: String) async throws -> Outcome {
        guard ConsoleSessionStore.isWellFormed(token) else { return refuse(client) }
        let digest = ConsoleSessionStore.hash(token)
        let now = ContinuousClock.now
        if let hit = cached(digest, at: now) { return .valid(hit) }
        if let wait = limiter.blocked(client) { return .limited(retryAfter: wait) }
        lookups.increment()
        guard let session = try await store.session(token) else {
            cache.withLock { $0.remove(digest) }
            return refuse(client)
        }
        cache.withLock { $0.insert(session, for: digest, until: now + ttl) }
        return .valid(session)
    }

    /// Whether the session is still live, asked again at most once per `ttl`: an event stream opened with the
    /// session checks it, so that signing out (or the key's revocation) ends the stream within `ttl`.
    func isLive(_ token: String) async throws -> Bool {
        let digest = ConsoleSessionStore.hash(token)
        let now = ContinuousClock.now
        if cached(digest, at: now) != nil { return true }
        guard let session = try await store.session(token) else {
            cache.withLock { $0.remove(digest) }
            return false
        }
        cache.withLock { $0.insert(session, for: digest, until: now + ttl) }
        return true
    }

    /// Ends the session in PostgreSQL and forgets it here at once.
    func end(_ token: String) async throws -> Bool {
        let ended = try await store.end(token)
        cache.withLock { $0.remove(ConsoleSessionStore.hash(token)) }
        return ended
    }

    /// The remembered session, unless the memory or the session itself expired.
    private func cached(_ digest: Data, at now: ContinuousClock.Instant) -> ConsoleSession? {
        guard let session = cache.withLock({ $0.value(for: digest, at: now) }), session.expiresAt > Date() else { return nil }
        return session
    }

    private func refuse(_ client: String) -> Outcome {
        if let wait = limiter.failed(client) { return .limited(retryAfter: wait) }
        return .refused
    }
}
