import EventStore
import Foundation
import Logging
import PostgresNIO
import SharedTypes

/// The PostgreSQL that `./scripts/test` starts, found through `CONVO_DATABASE_URL`.
public enum TestDatabase {
    public static let logger = Logger(label: "convo.test", factory: { _ in SwiftLogNoOpLogHandler() })

    /// The master keys `./scripts/test` gives every process (`CONVO_MASTER_KEY_FILE` or `CONVO_MASTER_KEY`);
    /// without them, a new key, exported so that the servers the tests start share it.
    public static let keyring: MasterKeyring = {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["CONVO_MASTER_KEY_FILE"], let text = try? String(contentsOfFile: path, encoding: .utf8),
            let keyring = try? MasterKeyring(parsing: text)
        {
            return keyring
        }
        if let text = environment["CONVO_MASTER_KEY"], let keyring = try? MasterKeyring(parsing: text) { return keyring }
        let key = MasterKeyring.generateKey()
        setenv("CONVO_MASTER_KEY", key, 1)
        return try! MasterKeyring(parsing: key)
    }()

    /// The Redis that `./scripts/test` starts, found through `CONVO_REDIS_URL`.
    public static var redisURL: String {
        get throws {
            guard let raw = ProcessInfo.processInfo.environment["CONVO_REDIS_URL"] else {
                throw EventStoreError(code: .invalidArgument, message: "CONVO_REDIS_URL is not set: run the tests through ./scripts/test")
            }
            return raw
        }
    }

    public static var url: DatabaseURL {
        get throws {
            guard let raw = ProcessInfo.processInfo.environment["CONVO_DATABASE_URL"] else {
                throw EventStoreError(code: .invalidArgument, message: "CONVO_DATABASE_URL is not set: run the tests through ./scripts/test")
            }
            return try DatabaseURL(raw)
        }
    }

    /// Runs `body` with a migrated store on the shared test database, its client and its service running.
    ///
    /// The pool is small: every test runs at once, and the suite's connections together must stay well under
    /// the test cluster's `max_connections` (past it, PostgreSQL refuses connections and unrelated tests fail;
    /// the suite peaked near 300, and `./scripts/test` allows 1,000).
    /// A test racing more tasks than connections still races: its tasks take turns on the pool's connections.
    public static func withStore<T: Sendable>(
        url databaseURL: DatabaseURL? = nil, configuration: PostgresEventStore.Configuration = .init(),
        maximumConnections: Int = defaultPoolSize, _ body: @Sendable (PostgresEventStore) async throws -> T
    ) async throws -> T {
        try await withClient(url: try databaseURL ?? url, maximumConnections: maximumConnections) { client in
            try await Migrator(client: client, logger: logger).migrate()
            let store = PostgresEventStore(client: client, configuration: configuration, keyring: TestDatabase.keyring, logger: logger)
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await store.run() }
                defer { group.cancelAll() }
                return try await body(store)
            }
        }
    }

    /// Runs `body` with a client of `url` whose pool is running.
    @discardableResult
    public static func withClient<T: Sendable>(
        url: DatabaseURL, maximumConnections: Int = defaultPoolSize, _ body: @Sendable (PostgresClient) async throws -> T
    ) async throws -> T {
        let client = PostgresClient(configuration: url.clientConfiguration(maximumConnections: maximumConnections), backgroundLogger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }

    /// Runs `body` against a new, empty database.
    ///
    /// The database is left behind: `DROP DATABASE` holds a transaction id for seconds, and readers of every
    /// database in the cluster withhold events behind it (they cannot tell databases apart), which would
    /// stall the other tests running meanwhile. `./scripts/test` drops the leftovers before the next run.
    public static func withFreshDatabase<T: Sendable>(_ body: @Sendable (DatabaseURL) async throws -> T) async throws -> T {
        let base = try url
        let name = "\(freshPrefix)\(UUID().uuidString.prefix(8).lowercased())"
        try await withClient(url: base, maximumConnections: 2) { client in
            try await client.query("CREATE DATABASE \(unescaped: name)")
        }
        return try await body(base.with(database: name))
    }

    /// The pool size of a test's client unless it asks for another.
    public static let defaultPoolSize = 12

    /// The name every fresh test database starts with.
    public static let freshPrefix = "convo_test_"

    /// A stream name no other test uses.
    public static func uniqueStream(_ category: String = "test") -> StreamName {
        try! StreamName(category: category, id: UUID().uuidString.lowercased())
    }

    /// A tenant no other test uses.
    public static func uniqueTenant() -> TenantID {
        TenantID("t-\(UUID().uuidString.prefix(13).lowercased())")
    }
}

/// Waits (up to `timeout`) until readers may see every stored event: none is withheld behind a transaction
/// still open anywhere in the cluster, which the tests share; a transaction begun later cannot hide them again.
public func settled(_ store: PostgresEventStore, timeout: Duration = .seconds(30)) async throws -> Bool {
    let rows = try await store.client.query("SELECT coalesce(max(global_position), 0) FROM events")
    var last: Int64 = 0
    for try await value in rows.decode(Int64.self) { last = value }
    return try await eventually(timeout: timeout) { try await store.headPosition() >= last }
}
