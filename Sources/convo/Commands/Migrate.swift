import ArgumentParser
import EventStore
import Logging
import PostgresNIO

extension Convo {
    /// `convo migrate`: applies the pending migrations compiled into this binary.
    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Apply pending database migrations (safe to run again, and from several processes at once).")

        @OptionGroup var options: GlobalOptions

        @Flag(help: "List the migrations and whether each is applied, and change nothing.")
        var status = false

        func run() async throws {
            let logger = try options.makeLogger()
            let url = try options.databaseURL()
            try await withPostgresClient(url: url, connectTimeout: try options.connectTimeout(), logger: logger) { client in
                let migrator = Migrator(client: client, logger: logger)
                do {
                    if status {
                        for entry in try await migrator.status() {
                            print("\(entry.migration.fileName)  \(entry.appliedAt.map { "applied \($0)" } ?? "pending")")
                        }
                        return
                    }
                    let report = try await migrator.migrate()
                    for migration in report.applied { print("applied \(migration.fileName)") }
                    if !report.unknownVersions.isEmpty {
                        print("note: the database has migrations this binary does not know: \(report.unknownVersions)")
                    }
                    print(report.applied.isEmpty ? "database \(url) is up to date" : "database \(url) migrated")
                } catch {
                    throw CommandFailure(error)
                }
            }
        }
    }
}

/// Runs `body` with a running `PostgresClient`, after checking within `connectTimeout` that PostgreSQL
/// answers, so a CLI command against an unreachable database fails in seconds with a clear message.
func withPostgresClient<T: Sendable>(
    url: DatabaseURL, maximumConnections: Int = 4, connectTimeout: Duration = .seconds(10), logger: Logger,
    _ body: @Sendable (PostgresClient) async throws -> T
) async throws -> T {
    var configuration = url.clientConfiguration(maximumConnections: maximumConnections)
    configuration.options.connectTimeout = connectTimeout
    let client = PostgresClient(configuration: configuration, backgroundLogger: backgroundLogger(logger))
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await client.run() }
        defer { group.cancelAll() }
        let reachable = await withTaskGroup(of: Bool.self) { probe in
            probe.addTask { (try? await client.query("SELECT 1")) != nil }
            probe.addTask {
                try? await Task.sleep(for: connectTimeout)
                return false
            }
            defer { probe.cancelAll() }
            return await probe.next() ?? false
        }
        guard reachable else { throw CommandFailure("cannot reach PostgreSQL at \(url) within \(connectTimeout)") }
        return try await body(client)
    }
}

/// PostgresNIO logs every failed connection attempt at info; show them only when debugging.
func backgroundLogger(_ logger: Logger) -> Logger {
    var background = logger
    if logger.logLevel > .debug { background.logLevel = .warning }
    return background
}
