import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
@testable import Responder
import SharedTypes
import Testing

/// The tenant-settings cache while PostgreSQL is stopped (a cluster of the test's own): the responder's
/// callers keep the tenant's last known settings, the cache sends no read per caller meanwhile, and once
/// PostgreSQL is back a changed setting is read again.
@Suite(.serialized, .timeLimit(.minutes(3))) struct TenantSettingsOutageTests {
    @Test func withPostgresStoppedTheKnownSettingsAreKeptWithoutAReadPerCallerAndAChangeIsSeenAfterItsReturn() async throws {
        let postgres = try await PostgresServer()
        let url = try DatabaseURL(postgres.url)
        let tenant = TenantID(rawValue: "outage")!
        try await TestDatabase.withStore(url: url) { store in
            let writer = TenantSettingsStore(client: store.client, logger: TestDatabase.logger)
            _ = try await writer.write(TenantSettings(answerAfterQuietSeconds: 1), for: tenant)
        }
        // Connections as `convo serve` makes them: an attempt gives up after its connect timeout.
        var configuration = url.clientConfiguration(maximumConnections: 4)
        configuration.options.connectTimeout = .seconds(1)
        let client = PostgresClient(configuration: configuration, backgroundLogger: TestDatabase.logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            let settings = TenantSettingsStore(client: client, ttl: .milliseconds(300), logger: TestDatabase.logger)
            #expect(try await settings.settings(for: tenant).answerAfterQuietSeconds == 1)
            try await postgres.stop()
            let (reads, answers, _) = try await Self.callers(of: settings, tenant, expecting: 1)
            // At most one read in flight at a time (here the first waits for PostgreSQL's return, as PostgresNIO's
            // pool does), each started after the known value's lifetime: a few at most, not one per caller.
            #expect(reads >= 1 && reads <= 8, "\(reads) reads for \(answers) callers")

            try await postgres.start()
            try await TestDatabase.withStore(url: url) { store in
                _ = try await TenantSettingsStore(client: store.client, logger: TestDatabase.logger).write(TenantSettings(answerAfterQuietSeconds: 3), for: tenant)
            }
            #expect(try await eventually(timeout: .seconds(30)) { settings.settingsAtHand(tenant)?.answerAfterQuietSeconds == 3 })
            #expect(try await settings.settings(for: tenant).answerAfterQuietSeconds == 3)
        }
    }

    /// Reads that fail at once (here the table renamed away, on a database of the test's own) rather than wait:
    /// each failure keeps the known value for another lifetime, so callers are not each sent to PostgreSQL.
    @Test func readsThatFailKeepTheKnownSettingsForALifetimeEachInsteadOfAReadPerCaller() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let tenant = TenantID(rawValue: "failing")!
                let settings = TenantSettingsStore(client: store.client, ttl: .milliseconds(300), logger: TestDatabase.logger)
                _ = try await settings.write(TenantSettings(answerAfterQuietSeconds: 2), for: tenant)
                #expect(try await settings.settings(for: tenant).answerAfterQuietSeconds == 2)
                try await store.client.query("ALTER TABLE tenants RENAME TO tenants_away")
                await #expect(throws: (any Error).self) { try await settings.read(tenant) }
                // Callers for 2 s, and on until a second read was sent (a loaded run once sent one in 2 s: the
                // machine slow enough for a failing read to take most of that).
                let (reads, answers, elapsed) = try await Self.callers(of: settings, tenant, expecting: 2, untilReads: 2)
                // About one per 300 ms lifetime. Without the kept value every loop that finds it old after a failure
                // starts another read (84 in 2 s in a run with that line removed).
                let lifetimes = Int(elapsed / .milliseconds(300))
                #expect(reads >= 2 && reads <= lifetimes + 4, "\(reads) reads for \(answers) callers in \(elapsed)")
                try await store.client.query("ALTER TABLE tenants_away RENAME TO tenants")
                _ = try await settings.write(TenantSettings(answerAfterQuietSeconds: 4), for: tenant)
                #expect(try await eventually(timeout: .seconds(10)) { settings.settingsAtHand(tenant)?.answerAfterQuietSeconds == 4 })
            }
        }
    }

    /// Callers over 2 s, several lifetimes of the cache (50 every 20 ms), and on (up to 30 s) until the cache
    /// sent `minimum` reads: each must get `expected` at once.
    /// - Returns: the reads the cache sent meanwhile, the callers, and how long they went on.
    static func callers(
        of settings: TenantSettingsStore, _ tenant: TenantID, expecting expected: Double, untilReads minimum: Int = 0
    ) async throws -> (reads: Int, answers: Int, elapsed: Duration) {
        let readsBefore = settings.readsSent.load(ordering: .relaxed)
        let started = ContinuousClock.now
        var answers = 0
        func reads() -> Int { settings.readsSent.load(ordering: .relaxed) - readsBefore }
        while case let elapsed = ContinuousClock.now - started, elapsed < .seconds(2) || (reads() < minimum && elapsed < .seconds(30)) {
            for _ in 0..<50 {
                #expect(settings.settingsAtHand(tenant)?.answerAfterQuietSeconds == expected)
                answers += 1
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return (reads(), answers, ContinuousClock.now - started)
    }
}
