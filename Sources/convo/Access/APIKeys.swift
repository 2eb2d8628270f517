import Crypto
import EventStore
import Foundation
import Logging
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
        var generator = SystemRandomNumberGenerator()
        let id = (0..<8).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
        let secret = Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }).base64URL
        let key = "\(Self.prefix)\(id)_\(secret)"
        let sorted = scopes.sorted()
        let created = try await mapped("create a key") {
            try await client.withOpenTransaction(logger: logger) { connection in
                try await connection.query("INSERT INTO tenants (id) VALUES (\(tenant.rawValue)) ON CONFLICT DO NOTHING", logger: logger)
                let rows = try await connection.query(
                    """
                    INSERT INTO api_keys (id, tenant_id, secret_hash, scopes, name)
                    VALUES (\(id), \(tenant.rawValue), \(Self.hash(key)), \(sorted.map(\.rawValue)), \(name))
                    RETURNING created_at
                    """, logger: logger)
                for try await date in rows.decode(Date.self) { return date }
                return Date()
            }
        }
        return (key, APIKeyRecord(id: id, tenant: tenant, scopes: sorted, name: name, createdAt: created, revokedAt: nil))
    }

    /// Every key, or those of `tenant`, oldest first.
    func list(tenant: TenantID? = nil) async throws -> [APIKeyRecord] {
        try await mapped("list keys") {
            try await Self.records(
                client.queryOpen(
                    """
                    SELECT id, tenant_id, scopes, name, created_at, revoked_at FROM api_keys
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
        return try await mapped("revoke a key") {
            try await Self.records(
                client.queryOpen(
                    """
                    UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = \(id)
                    RETURNING id, tenant_id, scopes, name, created_at, revoked_at
                    """, logger: logger)
            ).first
        }
    }

    private static func records(_ rows: some AsyncSequence<PostgresRow, any Error>) async throws -> [APIKeyRecord] {
        var records: [APIKeyRecord] = []
        for try await (id, tenant, scopes, name, created, revoked) in rows.decode((String, String, [String], String, Date, Date?).self) {
            records.append(
                APIKeyRecord(
                    id: id, tenant: TenantID(rawValue: tenant) ?? .default, scopes: scopes.compactMap(Scope.init(rawValue:)), name: name,
                    createdAt: created, revokedAt: revoked))
        }
        return records
    }

    /// The live key `presented` is, or `nil` when it is malformed, unknown, revoked or its secret is wrong.
    func authenticate(_ presented: String) async throws -> APIKeyRecord? {
        guard let (id, _) = Self.parse(presented) else { return nil }
        return try await mapped("check a key") {
            let rows = try await client.queryOpen(
                "SELECT tenant_id, secret_hash, scopes, name, created_at FROM api_keys WHERE id = \(id) AND revoked_at IS NULL", logger: logger)
            for try await (tenant, stored, scopes, name, created) in rows.decode((String, Data, [String], String, Date).self) {
                guard Self.constantTimeEqual(stored, Self.hash(presented)), let tenant = TenantID(rawValue: tenant) else { return nil }
                return APIKeyRecord(
                    id: id, tenant: tenant, scopes: scopes.compactMap(Scope.init(rawValue:)), name: name, createdAt: created, revokedAt: nil)
            }
            return nil
        }
    }

    /// `cvk_ID_SECRET` → its parts.
    static func parse(_ key: String) -> (id: String, secret: String)? {
        guard key.hasPrefix(prefix) else { return nil }
        let rest = key.dropFirst(prefix.count)
        guard let separator = rest.firstIndex(of: "_") else { return nil }
        let id = String(rest[..<separator])
        let secret = String(rest[rest.index(after: separator)...])
        guard id.count == 16, id.allSatisfy(\.isHexDigit), (32...64).contains(secret.count) else { return nil }
        return (id, secret)
    }

    static func hash(_ key: String) -> Data { Data(SHA256.hash(data: Data(key.utf8))) }

    static func constantTimeEqual(_ a: Data, _ b: Data) -> Bool {
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    private func mapped<T>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw PostgresEventStore.mapError(error, operation: operation)
        }
    }
}

/// Checks bearer keys for the HTTP server, remembering answers for a few seconds so a busy client costs one
/// query per interval, not one per request. A revoked key stops working on every instance within `ttl`.
final class KeyAuthenticator: Sendable {
    let store: APIKeyStore
    let ttl: Duration
    private let cache = Mutex<[Data: (record: APIKeyRecord?, expires: ContinuousClock.Instant)]>([:])
    private static let maxEntries = 10_000

    init(store: APIKeyStore, ttl: Duration = .seconds(5)) {
        self.store = store
        self.ttl = ttl
    }

    func authenticate(_ presented: String) async throws -> APIKeyRecord? {
        let digest = APIKeyStore.hash(presented)
        let now = ContinuousClock.now
        if let hit = cache.withLock({ $0[digest] }), hit.expires > now { return hit.record }
        let record = try await store.authenticate(presented)
        cache.withLock { entries in
            if entries.count >= Self.maxEntries { entries.removeAll(keepingCapacity: true) }
            entries[digest] = (record, now + ttl)
        }
        return record
    }
}

extension Data {
    /// Base64url without padding (RFC 4648 §5).
    var base64URL: String {
        base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }
}
