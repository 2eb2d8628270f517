import EventStore
import Foundation
import Logging
import PostgresNIO
import SharedTypes
import Synchronization

/// Tenants' settings (`tenants.settings`), read by the responder through a short cache and written by the
/// API and the CLI. One read per tenant at a time: callers that miss the cache together share it.
public final class TenantSettingsStore: Sendable {
    let client: PostgresClient
    let logger: Logger
    /// How long a read setting is used before it is read again: a change reaches every instance within it.
    let ttl: Duration
    private let cache = Mutex<[String: (settings: TenantSettings, at: ContinuousClock.Instant)]>([:])
    /// The read of each tenant's settings under way, which callers join.
    private let reads = Mutex<[String: Task<TenantSettings, any Error>]>([:])
    /// Reads sent to PostgreSQL through the cache, for tests.
    let readsSent = Atomic<Int>(0)

    public init(client: PostgresClient, ttl: Duration = .seconds(5), logger: Logger) {
        self.client = client
        self.ttl = ttl
        self.logger = logger
    }

    /// The tenant's settings (the defaults for a tenant that chose nothing, or that does not exist).
    ///
    /// - Throws: ``EventStoreError`` when PostgreSQL fails.
    public func settings(for tenant: TenantID) async throws -> TenantSettings {
        if let cached = cache.withLock({ $0[tenant.rawValue] }), ContinuousClock.now - cached.at < ttl { return cached.settings }
        return try await reading(tenant).value
    }

    /// The tenant's settings without waiting, for callers that cannot: the last read, even when older than
    /// the cache's lifetime (a read is then started, for the next call); `nil` before the first read has
    /// ended (one is started: ``settings(for:)`` joins it).
    public func settingsAtHand(_ tenant: TenantID) -> TenantSettings? {
        let cached = cache.withLock { $0[tenant.rawValue] }
        if cached == nil || ContinuousClock.now - cached!.at >= ttl { _ = reading(tenant) }
        return cached?.settings
    }

    /// The read of the tenant's settings under way, or a new one. A read that fails leaves what was known in
    /// the cache for another lifetime (a PostgreSQL outage does not send a read per caller); with nothing
    /// known, the next caller tries again.
    private func reading(_ tenant: TenantID) -> Task<TenantSettings, any Error> {
        reads.withLock { reads in
            if let underway = reads[tenant.rawValue] { return underway }
            let read = Task {
                // Runs once the lock is let go: it cannot remove itself before it is recorded.
                defer { _ = self.reads.withLock { $0.removeValue(forKey: tenant.rawValue) } }
                self.readsSent.add(1, ordering: .relaxed)
                let now = ContinuousClock.now
                do {
                    let settings = try await self.read(tenant)
                    self.cache.withLock { cache in
                        if cache.count > 10_000 { cache.removeAll() }
                        cache[tenant.rawValue] = (settings, now)
                    }
                    return settings
                } catch {
                    self.cache.withLock { cache in
                        if let known = cache[tenant.rawValue] { cache[tenant.rawValue] = (known.settings, now) }
                    }
                    throw error
                }
            }
            reads[tenant.rawValue] = read
            return read
        }
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
