import EventStore
import Foundation
import Logging
import PostgresNIO
import SharedTypes
import Synchronization

/// Tenants' settings (`tenants.settings`), read by the responder through a short cache and written by the
/// API and the CLI.
public final class TenantSettingsStore: Sendable {
    let client: PostgresClient
    let logger: Logger
    /// How long a read setting is used before it is read again: a change reaches every instance within it.
    let ttl: Duration
    private let cache = Mutex<[String: (settings: TenantSettings, at: ContinuousClock.Instant)]>([:])

    public init(client: PostgresClient, ttl: Duration = .seconds(5), logger: Logger) {
        self.client = client
        self.ttl = ttl
        self.logger = logger
    }

    /// The tenant's settings (the defaults for a tenant that chose nothing, or that does not exist).
    ///
    /// - Throws: ``EventStoreError`` when PostgreSQL fails.
    public func settings(for tenant: TenantID) async throws -> TenantSettings {
        let now = ContinuousClock.now
        if let cached = cache.withLock({ $0[tenant.rawValue] }), now - cached.at < ttl { return cached.settings }
        let settings = try await read(tenant)
        cache.withLock { cache in
            if cache.count > 10_000 { cache.removeAll() }
            cache[tenant.rawValue] = (settings, now)
        }
        return settings
    }

    /// Reads the settings now, without the cache.
    public func read(_ tenant: TenantID) async throws -> TenantSettings {
        do {
            let rows = try await client.queryOpen("SELECT settings::text FROM tenants WHERE id = \(tenant.rawValue)", logger: logger)
            for try await json in rows.decode(String.self) {
                return try JSONDecoder().decode(TenantSettings.self, from: Data(json.utf8))
            }
            return TenantSettings()
        } catch let error as DecodingError {
            throw EventStoreError(code: .storageFailure, message: "tenant \(tenant)'s settings do not decode", cause: error)
        } catch {
            throw PostgresEventStore.mapError(error, operation: "read tenant settings")
        }
    }

    /// Stores the settings (and the tenant, when it is new); keys of `settings` it does not know are kept.
    public func write(_ settings: TenantSettings, for tenant: TenantID) async throws -> TenantSettings {
        let json = String(decoding: try JSONEncoder().encode(settings), as: UTF8.self)
        do {
            _ = try await client.queryOpen(
                """
                INSERT INTO tenants (id, settings) VALUES (\(tenant.rawValue), \(json)::jsonb)
                ON CONFLICT (id) DO UPDATE SET settings = tenants.settings || excluded.settings
                """, logger: logger)
        } catch {
            throw PostgresEventStore.mapError(error, operation: "write tenant settings")
        }
        cache.withLock { _ = $0.removeValue(forKey: tenant.rawValue) }
        return try await read(tenant)
    }
}
