import Crypto
import EventStore
import Foundation
import Logging
import Metrics
import PostgresNIO
import SharedTypes
import Synchronization

/// What a key may do.
enum Scope: String, CaseIterable, Codable, Sendable, Comparable {
    /// Post visitor messages.
    case ingest
    /// Read conversations, transcripts, events and workflows.
    case read
    /// Publish workflows and read the audit trail.
    case admin
    /// A person's key (``APIKeyRecord/userId``): take over, answer, hand back and resolve conversations.
    /// Made by `convo agents create`, never by `convo keys create`.
    case agent

    /// The scopes of a tenant's keys (`convo keys create`); `agent` keys belong to people.
    static let tenantScopes: [Scope] = [.ingest, .read, .admin]

    static func < (lhs: Scope, rhs: Scope) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }

    /// `ingest,read` → the scopes, or `nil` when a name is unknown or the list is empty.
    static func parseList(_ raw: String) -> Set<Scope>? {
        let names = raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let scopes = names.compactMap(Scope.init(rawValue:))
        guard !scopes.isEmpty, scopes.count == names.count else { return nil }
        return Set(scopes)
    }
}

/// A stored API key, without its secret.
struct APIKeyRecord: Sendable, Equatable, Codable {
    var id: String
    var tenant: TenantID
    var scopes: [Scope]
    var name: String
    var createdAt: Date
    var revokedAt: Date?
    /// The person an `agent` key belongs to.
    var userId: UUID?
}

/// API keys: `cvk_` + a public id (16 hex digits) + `_` + a secret (32 random bytes, base64url). The id finds
/// the row; SHA-256 of the whole key, compared in constant time, proves it. The key itself is never stored.
struct APIKeyStore: Sendable {
    let client: PostgresClient
    let logger: Logger

    static let prefix = "cvk_"

    /// Creates a key for `tenant` (and the tenant when it is new).
    ///
    /// - Returns: the key, to be shown once, and its record.
    func create(tenant: TenantID, scopes: Set<Scope>, name: String) async throws -> (key: String, record: APIKeyRecord) {
        let sorted = scopes.sorted()
        return try await mappingStoreErrors("create a key") {
            try await client.withOpenTransaction(logger: logger) { connection in
                try await connection.query("INSERT INTO tenants (id) VALUES (\(tenant.rawValue)) ON CONFLICT DO NOTHING", logger: logger)
                return try await Self.insert(tenant: tenant, scopes: sorted, name: name, userId: nil, on: connection, logger: logger)
            }
        }
    }

    /// A new key: `cvk_` + 16 hex digits + `_` + 32 random bytes (base64url), and its public id.
    static func generate() -> (id: String, key: String) {
        var generator = SystemRandomNumberGenerator()
        let id = (0..<8).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
        let secret = Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }).base64URL
        return (id, "\(prefix)\(id)_\(secret)")
    }

    /// Inserts a new key in the caller's transaction (the tenant exists).
    static func insert(
        tenant: TenantID, scopes: [Scope], name: String, userId: UUID?, on connection: PostgresConnection, logger: Logger
    ) async throws -> (key: String, record: APIKeyRecord) {
        let (id, key) = generate()
        let rows = try await connection.query(
            """
            INSERT INTO api_keys (id, tenant_id, secret_hash, scopes, name, user_id)
            VALUES (\(id), \(tenant.rawValue), \(hash(key)), \(scopes.map(\.rawValue)), \(name), \(userId))
            RETURNING created_at
            """, logger: logger)
        var created = Date()
        for try await date in rows.decode(Date.self) { created = date }
        return (key, APIKeyRecord(id: id, tenant: tenant, scopes: scopes, name: name, createdAt: created, revokedAt: nil, userId: userId))
    }

    /// Every key, or those of `tenant`, oldest first.
    func list(tenant: TenantID? = nil) async throws -> [APIKeyRecord] {
        try await mappingStoreErrors("list keys") {
            try await Self.records(
                client.queryOpen(
                    """
                    SELECT id, tenant_id, scopes, name, created_at, revoked_at, user_id FROM api_keys
                    WHERE \(tenant?.rawValue)::text IS NULL OR tenant_id = \(tenant?.rawValue)
                    ORDER BY created_at, id
                    """, logger: logger))
        }
    }

    /// Revokes a key by its id (the part after `cvk_`, or the whole key).
    ///
    /// - Returns: the record, or `nil` when there is no such key. Revoking twice keeps the first time.
    func revoke(_ idOrKey: String) async throws -> APIKeyRecord? {
        let id = Self.parse(idOrKey)?.id ?? idOrKey
        return try await mappingStoreErrors("revoke a key") {
            try await Self.records(
                client.queryOpen(
                    """
                    UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = \(id)
                    RETURNING id, tenant_id, scopes, name, created_at, revoked_at, user_id
                    """, logger: logger)
            ).first
        }
    }

    private static func records(_ rows: some AsyncSequence<PostgresRow, any Error>) async throws -> [APIKeyRecord] {
        var records: [APIKeyRecord] = []
        for try await (id, tenant, scopes, name, created, revoked, user) in rows.decode((String, String, [String], String, Date, Date?, UUID?).self) {
            records.append(
                APIKeyRecord(
                    id: id, tenant: TenantID(rawValue: tenant) ?? .default, scopes: scopes.compactMap(Scope.init(rawValue:)), name: name,
                    createdAt: created, revokedAt: revoked, userId: user))
        }
        return records
    }

    /// The live key `presented` is, or `nil` when it is malformed, unknown, revoked or its secret is wrong.
    func authenticate(_ presented: String) async throws -> APIKeyRecord? {
        guard let (id, _) = Self.parse(presented) else { return nil }
        return try await mappingStoreErrors("check a key") {
            // A disabled person's keys are revoked with them; the join refuses them even before that commits.
            let rows = try await client.queryOpen(
                """
                SELECT k.tenant_id, k.secret_hash, k.scopes, k.name, k.created_at, k.user_id FROM api_keys k
                LEFT JOIN users u ON u.id = k.user_id
                WHERE k.id = \(id) AND k.revoked_at IS NULL AND u.disabled_at IS NULL
                """, logger: logger)
            for try await (tenant, stored, scopes, name, created, user) in rows.decode((String, Data, [String], String, Date, UUID?).self) {
                guard Self.constantTimeEqual(stored, Self.hash(presented)), let tenant = TenantID(rawValue: tenant) else { return nil }
                return APIKeyRecord(
                    id: id, tenant: tenant, scopes: scopes.compactMap(Scope.init(rawValue:)), name: name, createdAt: created, revokedAt: nil,
                    userId: user)
            }
            return nil
        }
    }

    /// Whether the key with this id exists and is not revoked.
    func isLive(_ id: String) async throws -> Bool {
        try await mappingStoreErrors("check a key") {
            let rows = try await client.queryOpen(
                """
                SELECT 1 FROM api_keys k LEFT JOIN users u ON u.id = k.user_id
                WHERE k.id = \(id) AND k.revoked_at IS NULL AND u.disabled_at IS NULL
                """, logger: logger)
            return rows.rows.count == 1
        }
    }

    /// `cvk_ID_SECRET` → its parts: `ID` 16 hex digits, `SECRET` 32 to 64 characters. Read byte by byte (every
    /// request's key: a walk by `Character` cost each request about 1 % of the server's CPU); a key that is not
    /// ASCII is no key of ours (refused here, without a lookup).
    static func parse(_ key: String) -> (id: String, secret: String)? {
        let utf8 = key.utf8
        guard utf8.allSatisfy({ $0 < 0x80 }), utf8.starts(with: prefix.utf8) else { return nil }
        let rest = utf8.dropFirst(prefix.utf8.count)
        guard let separator = rest.firstIndex(of: UInt8(ascii: "_")) else { return nil }
        let id = rest[..<separator]
        let secret = rest[rest.index(after: separator)...]
        guard id.count == 16, id.allSatisfy(\.isASCIIHexDigit), (32...64).contains(secret.count) else { return nil }
        return (String(Substring(id)), String(Substring(secret)))
    }

    static func hash(_ key: String) -> Data { Data(SHA256.hash(data: Data(key.utf8))) }

    static func constantTimeEqual(_ a: Data, _ b: Data) -> Bool {
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

}

/// Runs `body`, turning PostgresNIO's errors into the store's (``PostgresEventStore/mapError(_:operation:)``).
func mappingStoreErrors<T>(_ operation: String, _ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch {
        throw PostgresEventStore.mapError(error, operation: operation)
    }
}

/// Checks bearer keys for the HTTP server.
///
/// - A malformed token is refused without a lookup.
/// - A live key is remembered for `ttl` (so a busy client costs one query per interval, and a revoked key
///   stops working on every instance within `ttl`), in a cache of at most ``maxCachedKeys`` live keys, the
///   least recently used evicted first. Refusals are never cached: a flood of unknown keys cannot evict
///   the valid ones.
/// - Failed authentications are limited per client address (``FailureLimiter``): past the limit, a key
///   that is not already cached is refused with 429 before any lookup.
final class KeyAuthenticator: Sendable {
    enum Outcome: Sendable {
        case valid(APIKeyRecord)
        case refused
        /// Too many failed authentications from this address: retry after this many seconds.
        case limited(retryAfter: Int)
    }

    let store: APIKeyStore
    let ttl: Duration
    let limiter: FailureLimiter
    static let maxCachedKeys = 10_000

    private struct Cache {
        var records = ExpiringCache<Data, APIKeyRecord>(capacity: KeyAuthenticator.maxCachedKeys)
        /// Live key ids, checked for open event streams.
        var liveIDs = ExpiringCache<String, Void>(capacity: KeyAuthenticator.maxCachedKeys)
    }

    private let cache = Mutex(Cache())
    /// Keys looked up in PostgreSQL (cache misses), and requests refused for too many failures.
    private let lookups = Counter(label: "convo.auth.lookups")
    private let limited = Counter(label: "convo.auth.limited")

    init(store: APIKeyStore, ttl: Duration = .seconds(5), limiter: FailureLimiter = FailureLimiter()) {
        self.store = store
        self.ttl = ttl
        self.limiter = limiter
    }

    var cachedKeys: Int { cache.withLock { $0.records.count } }

    func authenticate(_ presented: String, from client: String) async throws -> Outcome {
        guard APIKeyStore.parse(presented) != nil else {
            // Costs nothing to refuse, but still counts: a client sending garbage is limited like one guessing.
            if let wait = limiter.failed(client) {
                limited.increment()
                return .limited(retryAfter: wait)
            }
            return .refused
        }
        let digest = APIKeyStore.hash(presented)
        let now = ContinuousClock.now
        if let hit = cache.withLock({ $0.records.value(for: digest, at: now) }) { return .valid(hit) }
        if let wait = limiter.blocked(client) {
            limited.increment()
            return .limited(retryAfter: wait)
        }
        lookups.increment()
        guard let record = try await store.authenticate(presented) else {
            cache.withLock { $0.records.remove(digest) }
            if let wait = limiter.failed(client) {
                limited.increment()
                return .limited(retryAfter: wait)
            }
            return .refused
        }
        cache.withLock { $0.records.insert(record, for: digest, until: now + ttl) }
        return .valid(record)
    }

    /// Whether the key with this id is still live (not revoked), asked again at most once per `ttl`: open
    /// event streams check their key with it, so a revoked key's streams end within `ttl` too.
    func isLive(_ id: String) async throws -> Bool {
        let now = ContinuousClock.now
        if cache.withLock({ $0.liveIDs.value(for: id, at: now) }) != nil { return true }
        let live = try await store.isLive(id)
        cache.withLock { cache in
            if live {
                cache.liveIDs.insert((), for: id, until: now + ttl)
            } else {
                cache.liveIDs.remove(id)
                // Its cached record goes too, so new requests with it are refused now rather than at expiry.
                cache.records.removeAll { $0.id == id }
            }
        }
        return live
    }
}

/// Failed authentications per client address, as a token bucket: `burst` failures at once, then `perSecond`.
/// An address past its budget is refused before any lookup until its bucket refills. Bounded: past
/// ``maxAddresses`` tracked addresses, those with a full bucket (nothing to remember) are dropped, and if
/// none are, all are (an attack from that many addresses is beyond what one process's memory should hold).
final class FailureLimiter: Sendable {
    let burst: Double
    let perSecond: Double
    static let maxAddresses = 100_000

    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    private let buckets = Mutex<[String: Bucket]>([:])

    init(burst: Int = 20, perSecond: Double = 2) {
        self.burst = Double(max(1, burst))
        self.perSecond = max(0.01, perSecond)
    }

    /// Counts a failure; the seconds to wait when the address is now past its budget.
    func failed(_ address: String) -> Int? {
        let now = ContinuousClock.now
        return buckets.withLock { buckets -> Int? in
            var bucket = refilled(buckets[address], now: now)
            if bucket.tokens < 1 { return wait(bucket) }
            bucket.tokens -= 1
            if buckets[address] == nil && buckets.count >= Self.maxAddresses { prune(&buckets, now: now) }
            buckets[address] = bucket
            return nil
        }
    }

    /// The seconds to wait when the address has no failure left to spend, else `nil`.
    ///
    /// Checked before a lookup and spent after it fails, so lookups already under way when the budget runs
    /// out still count: an address gets at most its budget plus the requests it has in flight. (Spending up
    /// front would close that gap, but then a burst of valid keys not yet cached would be refused too.)
    func blocked(_ address: String) -> Int? {
        let now = ContinuousClock.now
        return buckets.withLock { buckets in
            guard let bucket = buckets[address] else { return nil }
            let current = refilled(bucket, now: now)
            return current.tokens < 1 ? wait(current) : nil
        }
    }

    private func refilled(_ bucket: Bucket?, now: ContinuousClock.Instant) -> Bucket {
        guard let bucket else { return Bucket(tokens: burst, updated: now) }
        let elapsed = (now - bucket.updated).inSeconds
        return Bucket(tokens: min(burst, bucket.tokens + elapsed * perSecond), updated: now)
    }

    private func wait(_ bucket: Bucket) -> Int { max(1, Int(((1 - bucket.tokens) / perSecond).rounded(.up))) }

    private func prune(_ buckets: inout [String: Bucket], now: ContinuousClock.Instant) {
        buckets = buckets.filter { refilled($0.value, now: now).tokens < burst }
        if buckets.count >= Self.maxAddresses { buckets.removeAll(keepingCapacity: true) }
    }
}

extension Data {
    /// Base64url without padding (RFC 4648 §5).
    var base64URL: String {
        base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }
}
