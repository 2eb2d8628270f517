import Foundation
import Logging
import PostgresNIO

/// Applies the pending ``Migration``s, each in its own transaction, and records them in `schema_migrations`
/// with their checksums. Safe to run from several processes at once: they queue on an advisory lock.
public struct Migrator: Sendable {
    /// What ``migrate()`` did.
    public struct Report: Sendable {
        /// The migrations applied by this run, in order; empty when the database was up to date.
        public var applied: [Migration]
        /// Versions recorded in the database that this binary does not know (a newer binary migrated it).
        public var unknownVersions: [Int]
    }

    /// A migration and whether it is applied.
    public struct Status: Sendable {
        public var migration: Migration
        public var appliedAt: Date?
    }

    public let client: PostgresClient
    public let migrations: [Migration]
    let logger: Logger
    /// How long ``migrate()`` waits for another process's migration before giving up. Default: 60 s.
    public var lockWait: Duration = .seconds(60)

    /// An advisory lock key no other part of convo uses.
    static let lockKey: Int64 = 0x636F_6E76_6F6D_6967

    public init(client: PostgresClient, migrations: [Migration] = Migration.all, logger: Logger) {
        self.client = client
        self.migrations = migrations.sorted { $0.version < $1.version }
        self.logger = logger
    }

    /// Applies every pending migration.
    ///
    /// - Throws: ``EventStoreError`` with ``EventStoreError/Code/migrationChecksumMismatch`` (naming the file) when an
    ///   applied file changed, ``EventStoreError/Code/migrationFailed`` when a migration's SQL fails (nothing of it
    ///   stays), or ``EventStoreError/Code/unavailable``.
    @discardableResult
    public func migrate() async throws -> Report {
        do {
            let waitSeconds = max(1, lockWait.components.seconds)
            return try await client.withOpenConnection { connection in
                // A current schema needs no lock and no DDL: every process that starts (and every test) would
                // otherwise queue on the lock one after another, each creating a session's temporary function.
                let applied = try await self.appliedMigrations(on: connection)
                try self.verifyChecksums(applied)
                if self.migrations.allSatisfy({ applied[$0.version] != nil }) {
                    let known = Set(self.migrations.map(\.version))
                    return Report(applied: [], unknownVersions: applied.keys.filter { !known.contains($0) }.sorted())
                }
                // Another process migrating holds the lock: wait for it, but not for ever.
                try await connection.query("SELECT set_config('lock_timeout', \("\(waitSeconds)s"), false)", logger: logger)
                do {
                    // Read its row: a lock wait's error (the time-out) comes with the rows, not with the call.
                    for try await _ in try await connection.query("SELECT pg_advisory_lock(\(Self.lockKey))", logger: logger) {}
                } catch let error as PSQLError where error.serverInfo?[.sqlState] == "55P03" {
                    _ = try? await connection.query("SELECT set_config('lock_timeout', '0', false)", logger: logger)
                    throw EventStoreError(
                        code: .migrationFailed, message: "another process held the migration lock for more than \(waitSeconds) s; nothing was applied",
                        cause: error)
                }
                try await connection.query("SELECT set_config('lock_timeout', '0', false)", logger: logger)
                do {
                    let report = try await applyPending(on: connection)
                    try await connection.query("SELECT pg_advisory_unlock(\(Self.lockKey))", logger: logger)
                    return report
                } catch {
                    _ = try? await connection.query("SELECT pg_advisory_unlock(\(Self.lockKey))", logger: logger)
                    throw error
                }
            }
        } catch {
            throw PostgresEventStore.mapError(error, operation: "migrate")
        }
    }

    /// Every known migration with the time it was applied, if it was.
    public func status() async throws -> [Status] {
        do {
            let applied = try await client.withOpenConnection { try await self.appliedMigrations(on: $0) }
            return migrations.map { Status(migration: $0, appliedAt: applied[$0.version]?.appliedAt) }
        } catch {
            throw PostgresEventStore.mapError(error, operation: "read the migration status")
        }
    }

    /// The migrations not yet applied; empty when the schema is current.
    ///
    /// - Throws: ``EventStoreError`` with ``EventStoreError/Code/migrationChecksumMismatch`` when an applied file changed.
    public func pending() async throws -> [Migration] {
        do {
            let applied = try await client.withOpenConnection { try await self.appliedMigrations(on: $0) }
            try verifyChecksums(applied)
            return migrations.filter { applied[$0.version] == nil }
        } catch {
            throw PostgresEventStore.mapError(error, operation: "read the migration status")
        }
    }

    /// Fails unless every migration is applied: commands other than `migrate` call it first.
    ///
    /// - Throws: ``EventStoreError`` with ``EventStoreError/Code/schemaOutdated`` naming what is pending.
    public func requireCurrent() async throws {
        let pending = try await pending()
        guard pending.isEmpty else {
            throw EventStoreError(
                code: .schemaOutdated,
                message: "the database is missing \(pending.count) migration\(pending.count == 1 ? "" : "s") (\(pending.map(\.fileName).joined(separator: ", "))): run convo migrate")
        }
    }

    private struct Applied {
        var checksum: String
        var appliedAt: Date
    }

    private func appliedMigrations(on connection: PostgresConnection) async throws -> [Int: Applied] {
        let exists = try await connection.query("SELECT to_regclass('schema_migrations') IS NOT NULL", logger: logger)
        for try await present in exists.decode(Bool.self) where !present { return [:] }
        var applied: [Int: Applied] = [:]
        let rows = try await connection.query("SELECT version, checksum, applied_at FROM schema_migrations", logger: logger)
        for try await (version, checksum, at) in rows.decode((Int, String, Date).self) {
            applied[version] = Applied(checksum: checksum, appliedAt: at)
        }
        return applied
    }

    private func verifyChecksums(_ applied: [Int: Applied]) throws {
        for migration in migrations {
            if let recorded = applied[migration.version], recorded.checksum != migration.checksum {
                throw EventStoreError(
                    code: .migrationChecksumMismatch,
                    message: "migration \(migration.fileName) changed after it was applied (recorded checksum \(recorded.checksum.prefix(12))…, "
                        + "file \(migration.checksum.prefix(12))…); migrations are forward-only: add a new file instead")
            }
        }
    }

    private func applyPending(on connection: PostgresConnection) async throws -> Report {
        try await connection.query(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer     PRIMARY KEY,
                file_name  text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """, logger: logger)
        // PostgresNIO speaks the extended protocol, one statement per query; EXECUTE in PL/pgSQL runs a whole file.
        try await connection.query(
            "CREATE OR REPLACE FUNCTION pg_temp.convo_run_sql(body text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE body; END $$",
            logger: logger)
        let applied = try await appliedMigrations(on: connection)
        try verifyChecksums(applied)
        let known = Set(migrations.map(\.version))
        var report = Report(applied: [], unknownVersions: applied.keys.filter { !known.contains($0) }.sorted())
        for migration in migrations where applied[migration.version] == nil {
            logger.info("applying migration", metadata: ["convo.migration": "\(migration.fileName)"])
            do {
                try await connection.withTransaction(logger: logger) { connection in
                    try await connection.query("SELECT pg_temp.convo_run_sql(\(migration.sql))", logger: logger)
                    try await connection.query(
                        "INSERT INTO schema_migrations (version, file_name, checksum) VALUES (\(migration.version), \(migration.fileName), \(migration.checksum))",
                        logger: logger)
                }
            } catch let error as PostgresTransactionError {
                let cause = error.closureError ?? error.commitError ?? error.beginError
                let message = (cause as? PSQLError)?.serverInfo?[.message] ?? "\(cause.map { "\($0)" } ?? "unknown error")"
                throw EventStoreError(code: .migrationFailed, message: "migration \(migration.fileName) failed: \(message)", cause: error)
            }
            report.applied.append(migration)
        }
        return report
    }
}
