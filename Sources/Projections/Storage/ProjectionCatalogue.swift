import EventStore
import Foundation
import Logging
import PostgresNIO

/// The `projections` and `projection_rebuilds` tables (`Migrations/0007_projections.sql`), and the
/// advisory locks that say who runs or rebuilds a projection.
enum ProjectionCatalogue {
    /// A projection's row in `projections`.
    struct Entry: Sendable, Equatable {
        var version: Int
        var checkpoint: Int64
        var failedPosition: Int64?
        var failedEvent: String?
        var error: String?
    }

    /// The advisory locks' class id ("CONV"); the object id is `hashtext` of the role and the name.
    static let lockClass: Int32 = 0x434F_4E56

    enum Role: String {
        /// Held (exclusive, session) by the one runner that applies events.
        case runner
        /// Held (shared, session) by every runner waiting to take over.
        case standby
        /// Held (exclusive, session) by a rebuild.
        case rebuild
    }

    static func lockName(_ role: Role, _ projection: String) -> String { "convo.projection.\(role.rawValue).\(projection)" }

    static func tryLock(_ role: Role, _ projection: String, shared: Bool = false, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        let name = lockName(role, projection)
        let rows =
            shared
            ? try await connection.query("SELECT pg_try_advisory_lock_shared(\(lockClass), hashtext(\(name)))", logger: logger)
            : try await connection.query("SELECT pg_try_advisory_lock(\(lockClass), hashtext(\(name)))", logger: logger)
        for try await locked in rows.decode(Bool.self) { return locked }
        return false
    }

    static func unlock(_ role: Role, _ projection: String, shared: Bool = false, on connection: PostgresConnection, logger: Logger) async throws {
        let name = lockName(role, projection)
        if shared {
            try await connection.query("SELECT pg_advisory_unlock_shared(\(lockClass), hashtext(\(name)))", logger: logger)
        } else {
            try await connection.query("SELECT pg_advisory_unlock(\(lockClass), hashtext(\(name)))", logger: logger)
        }
    }

    /// Releases a session lock on the way out of a scope, even when the task was cancelled: if the unlock
    /// cannot run, the connection is closed (which releases every lock of its session), so a pooled
    /// connection never goes back to the pool still holding a projection's lock.
    static func release(_ role: Role, _ projection: String, shared: Bool = false, on connection: PostgresConnection, logger: Logger) async {
        do {
            try await unlock(role, projection, shared: shared, on: connection, logger: logger)
        } catch {
            logger.debug("could not release a projection lock; closing its session", metadata: ["convo.projection": "\(projection)", "convo.error": "\(error)"])
            try? await connection.close()
        }
    }

    /// Runs `body`, then releases `locks` (held by this session) whether `body` returned or threw.
    static func releasing<T>(
        _ locks: [(role: Role, projection: String)], shared: Bool = false, on connection: PostgresConnection, logger: Logger, _ body: () async throws -> T
    ) async throws -> T {
        do {
            let result = try await body()
            for lock in locks { await release(lock.role, lock.projection, shared: shared, on: connection, logger: logger) }
            return result
        } catch {
            for lock in locks { await release(lock.role, lock.projection, shared: shared, on: connection, logger: logger) }
            throw error
        }
    }

    /// The sessions holding each of the projection's locks, in any process (advisory locks belong to one
    /// database), in one query: each session's `application_name` (`""` for one with none), by role. A
    /// leased session's name says whose it is (``ProcessInstance/sessionName(_:)``).
    static func holders(_ projection: String, on connection: PostgresConnection, logger: Logger) async throws -> [Role: [String]] {
        let roles: [Role] = [.runner, .standby, .rebuild]
        let rows = try await connection.query(
            """
            SELECT lock.name, coalesce(a.application_name, '')
            FROM unnest(\(roles.map { lockName($0, projection) })::text[]) AS lock(name)
            JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = \(Int64(lockClass))::bigint::oid
              AND l.objid = (hashtext(lock.name)::bigint & 4294967295)::oid AND l.objsubid = 2
            LEFT JOIN pg_stat_activity a ON a.pid = l.pid
            ORDER BY 2
            """, logger: logger)
        var holders: [Role: [String]] = [:]
        for try await (name, session) in rows.decode((String, String).self) {
            guard let role = roles.first(where: { lockName($0, projection) == name }) else { continue }
            holders[role, default: []].append(session)
        }
        return holders
    }

    static func entry(_ name: String, forUpdate: Bool = false, on connection: PostgresConnection, logger: Logger) async throws -> Entry? {
        let rows =
            forUpdate
            ? try await connection.query(
                "SELECT version, checkpoint, failed_position, failed_event, error FROM projections WHERE name = \(name) FOR UPDATE", logger: logger)
            : try await connection.query(
                "SELECT version, checkpoint, failed_position, failed_event, error FROM projections WHERE name = \(name)", logger: logger)
        for try await (version, checkpoint, position, event, error) in rows.decode((Int, Int64, Int64?, String?, String?).self) {
            return Entry(version: version, checkpoint: checkpoint, failedPosition: position, failedEvent: event, error: error)
        }
        return nil
    }

    static func advance(_ name: String, to checkpoint: Int64, on connection: PostgresConnection, logger: Logger) async throws {
        try await connection.query(
            "UPDATE projections SET checkpoint = \(checkpoint), updated_at = now() WHERE name = \(name)", logger: logger)
    }

    static func recordFailure(_ name: String, _ failure: FoldError, on connection: PostgresConnection, logger: Logger) async throws {
        try await connection.query(
            """
            UPDATE projections SET failed_position = \(failure.position), failed_event = \(failure.eventType), error = \(failure.reason),
                updated_at = now()
            WHERE name = \(name)
            """, logger: logger)
    }

    /// Records the failure only if the projection is still at `checkpoint` of `version`: a runner whose rows
    /// were replaced by a rebuild meanwhile folded events into rows that already held them, and its
    /// "failure" is not the projection's.
    ///
    /// - Returns: whether it was recorded.
    static func recordFailure(
        _ name: String, _ failure: FoldError, ifAt checkpoint: Int64, version: Int, on connection: PostgresConnection, logger: Logger
    ) async throws -> Bool {
        try await connection.withTransaction(logger: logger) { transaction in
            guard let entry = try await entry(name, forUpdate: true, on: transaction, logger: logger), entry.checkpoint == checkpoint, entry.version == version
            else { return false }
            try await recordFailure(name, failure, on: transaction, logger: logger)
            return true
        }
    }

    /// Makes the rebuilt rows the live ones: in the caller's transaction.
    static func install(_ name: String, version: Int, checkpoint: Int64, on connection: PostgresConnection, logger: Logger) async throws {
        try await connection.query(
            """
            INSERT INTO projections (name, version, checkpoint) VALUES (\(name), \(version), \(checkpoint))
            ON CONFLICT (name) DO UPDATE SET version = excluded.version, checkpoint = excluded.checkpoint, failed_position = NULL,
                failed_event = NULL, error = NULL, updated_at = now()
            """, logger: logger)
    }

    static func tableExists(_ table: String, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        let rows = try await connection.query("SELECT to_regclass(\(table)) IS NOT NULL", logger: logger)
        for try await exists in rows.decode(Bool.self) { return exists }
        return false
    }
}
