import ConvoTestSupport
import Foundation
import PostgresNIO
import Testing

@testable import EventStore

@Suite struct MigrationTests {
    @Test func everyFileInMigrationsIsCompiledInInOrder() throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Migrations").standardized
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".sql") }.sorted()
        #expect(Migration.all.map(\.fileName) == files)
        #expect(Migration.all.map(\.version) == Array(1...Migration.all.count))
        for migration in Migration.all {
            let onDisk = try Data(contentsOf: folder.appendingPathComponent(migration.fileName))
            #expect(String(decoding: onDisk, as: UTF8.self) == migration.sql, "\(migration.fileName) differs from the compiled copy")
        }
    }

    @Test func migratingTwiceAppliesEverythingOnceAndThenNothing() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withClient(url: url) { client in
                let migrator = Migrator(client: client, logger: TestDatabase.logger)
                #expect(try await migrator.pending().count == Migration.all.count)
                let first = try await migrator.migrate()
                #expect(first.applied.map(\.fileName) == Migration.all.map(\.fileName))
                let second = try await migrator.migrate()
                #expect(second.applied.isEmpty)
                #expect(try await migrator.pending().isEmpty)
                #expect(try await migrator.status().allSatisfy { $0.appliedAt != nil })
                let rows = try await client.query("SELECT count(*) FROM schema_migrations")
                for try await count in rows.decode(Int.self) { #expect(count == Migration.all.count) }
            }
        }
    }

    @Test func aChangedAppliedMigrationStopsTheMigratorAndNamesTheFile() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withClient(url: url) { client in
                try await Migrator(client: client, logger: TestDatabase.logger).migrate()
                var edited = Migration.all
                let original = edited[1]
                edited[1] = Migration(fileName: original.fileName, bytes: Array((original.sql + "\n-- edited\n").utf8))
                let migrator = Migrator(client: client, migrations: edited, logger: TestDatabase.logger)
                let error = try await #require(throws: EventStoreError.self) { try await migrator.migrate() }
                #expect(error.code == .migrationChecksumMismatch)
                #expect(error.message.contains(original.fileName))
                await #expect(throws: EventStoreError.self) { try await migrator.pending() }
            }
        }
    }

    @Test func aFailingMigrationLeavesNothingBehind() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withClient(url: url) { client in
                let broken = Migration(fileName: "0099_broken.sql", bytes: Array("CREATE TABLE half_done (a int);\nSELECT no_such_function();".utf8))
                let migrator = Migrator(client: client, migrations: Migration.all + [broken], logger: TestDatabase.logger)
                let error = try await #require(throws: EventStoreError.self) { try await migrator.migrate() }
                #expect(error.code == .migrationFailed)
                #expect(error.message.contains("0099_broken.sql"))
                let rows = try await client.query("SELECT to_regclass('half_done') IS NULL, (SELECT count(*) FROM schema_migrations WHERE version = 99)")
                for try await (absent, recorded) in rows.decode((Bool, Int).self) {
                    #expect(absent)
                    #expect(recorded == 0)
                }
                // The good migrations before it were applied and stay applied.
                #expect(try await Migrator(client: client, logger: TestDatabase.logger).pending().isEmpty)
            }
        }
    }

    @Test func concurrentMigratorsApplyEachMigrationExactlyOnce() async throws {
        try await TestDatabase.withFreshDatabase { url in
            let reports = try await withThrowingTaskGroup(of: Migrator.Report.self) { group in
                for _ in 0..<6 {
                    // Separate clients: separate sessions, as separate processes would have.
                    group.addTask {
                        try await TestDatabase.withClient(url: url, maximumConnections: 2) { client in
                            try await Migrator(client: client, logger: TestDatabase.logger).migrate()
                        }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(reports.map(\.applied.count).reduce(0, +) == Migration.all.count)
            #expect(reports.filter { !$0.applied.isEmpty }.count == 1)
        }
    }

    @Test func aMigrationLockHeldElsewhereIsWaitedForWithinABound() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withClient(url: url, maximumConnections: 2) { holder in
                try await holder.withConnection { session in
                    // Another process is migrating, and does not finish.
                    for try await _ in try await session.query("SELECT pg_advisory_lock(\(Migrator.lockKey))", logger: TestDatabase.logger) {}
                    let held = try await holder.query(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
                    for try await count in held.decode(Int.self) { #expect(count == 1) }
                    try await TestDatabase.withClient(url: url, maximumConnections: 2) { client in
                        var migrator = Migrator(client: client, logger: TestDatabase.logger)
                        migrator.lockWait = .seconds(1)
                        let started = ContinuousClock.now
                        let error = try await #require(throws: EventStoreError.self) { try await migrator.migrate() }
                        #expect(error.code == .migrationFailed && error.message.contains("migration lock"), "\(error)")
                        // Bounded, not forever (generous: the suite's other tests share the machine's two cores).
                        #expect(ContinuousClock.now - started < .seconds(30))
                        // The pooled session does not keep the bound: a later wait on a lock is unbounded again.
                        let rows = try await client.query("SHOW lock_timeout")
                        for try await value in rows.decode(String.self) { #expect(value == "0") }
                    }
                    for try await _ in try await session.query("SELECT pg_advisory_unlock(\(Migrator.lockKey))", logger: TestDatabase.logger) {}
                }
            }
        }
    }
}
