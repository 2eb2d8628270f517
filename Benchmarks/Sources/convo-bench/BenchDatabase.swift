import EventStore
import Foundation
import Logging
import PostgresNIO

/// A database made for one benchmark run on the server of `CONVO_DATABASE_URL`, migrated, and dropped after
/// (unless `CONVO_BENCH_KEEP_DATABASE=1`).
enum BenchDatabase {
    static let logger = Logger(label: "convo.bench", factory: { _ in SwiftLogNoOpLogHandler() })

    /// A master key for the run's own databases: data sealed with it is never read by anyone else.
    static let masterKey = MasterKeyring.generateKey()
    static let keyring = try! MasterKeyring(parsing: masterKey)

    static func serverURL() throws -> DatabaseURL {
        try DatabaseURL(ProcessInfo.processInfo.environment["CONVO_DATABASE_URL"] ?? "postgres://convo@127.0.0.1:55432/convo")
    }

    static func withDatabase<T: Sendable>(maximumConnections: Int, _ body: @Sendable (PostgresClient, DatabaseURL) async throws -> T) async throws -> T {
        let server = try serverURL()
        let name = "convo_bench_\(UUID().uuidString.prefix(8).lowercased())"
        try await withClient(server, maximumConnections: 1) { try await $0.query("CREATE DATABASE \(unescaped: name)") }
        let url = server.with(database: name)
        do {
            let result = try await withClient(url, maximumConnections: maximumConnections) { client in
                try await Migrator(client: client, logger: logger).migrate()
                return try await body(client, url)
            }
            // CONVO_BENCH_KEEP_DATABASE=1 keeps it, to look at its plans or time queries after the run.
            if ProcessInfo.processInfo.environment["CONVO_BENCH_KEEP_DATABASE"] == "1" {
                FileHandle.standardError.write(Data("kept the benchmark's database \(name)\n".utf8))
            } else {
                try await withClient(server, maximumConnections: 1) { try await $0.query("DROP DATABASE \(unescaped: name) WITH (FORCE)") }
            }
            return result
        } catch {
            try? await withClient(server, maximumConnections: 1) { try await $0.query("DROP DATABASE IF EXISTS \(unescaped: name) WITH (FORCE)") }
            throw error
        }
    }

    static func withClient<T: Sendable>(_ url: DatabaseURL, maximumConnections: Int, _ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let client = PostgresClient(configuration: url.clientConfiguration(maximumConnections: maximumConnections), backgroundLogger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }
}

extension BenchDatabase {
    /// Turns autovacuum off for every table of these databases, for a benchmark that compares sides: an
    /// autovacuum started by one side's writes otherwise runs in another side's time (``settle(_:)`` does
    /// that work between sides instead).
    static func withoutAutovacuum(_ clients: [PostgresClient]) async throws {
        for client in clients {
            try await client.query(
                """
                DO $$ DECLARE t regclass; BEGIN
                    FOR t IN SELECT oid FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace LOOP
                        EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = off)', t);
                    END LOOP;
                END $$
                """, logger: logger)
        }
    }

    /// What one side's writes leave to do in the background, done before the next side starts: every
    /// table vacuumed and analyzed, then a checkpoint (one falling inside a side costs that side alone its
    /// writes and the full-page images after it; needs a superuser or `pg_checkpoint`, else skipped).
    static func settle(_ clients: [PostgresClient]) async throws {
        for client in clients { try await client.query("VACUUM (ANALYZE)", logger: logger) }
        do {
            try await clients[0].query("CHECKPOINT", logger: logger)
        } catch {
            report("  (no CHECKPOINT: \(String(reflecting: error)))")
        }
    }
}

/// Prints a line at once, also when standard output is a pipe.
func report(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

extension Double {
    func formatted(_ digits: Int) -> String { String(format: "%.\(digits)f", self) }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
