import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
import Testing

/// `asLease`: PostgreSQL ends a leased session idle for its timeout, so a live process's heartbeat must keep
/// it (and the advisory lock it holds) however long its work leaves it idle, and the setting must not stay
/// on the session when it goes back to the pool. (That a frozen process loses its session and lock is shown
/// with real processes by `FrozenInstanceTests`.)
@Suite(.serialized) struct LeaseTests {
    @Test(.timeLimit(.minutes(1))) func aLeasedSessionIdleThreeTimesItsTimeoutKeepsItsSessionAndLock() async throws {
        try await TestDatabase.withStore { store in
            let key = Int64.random(in: 1...Int64(Int32.max))
            try await store.client.withOpenConnection { connection in
                let pid = try await Self.backendPid(connection)
                try await connection.asLease(timeout: .seconds(2), role: "test", logger: TestDatabase.logger) {
                    let taken = try await connection.collect("SELECT pg_try_advisory_lock(\(key))", logger: TestDatabase.logger)
                    #expect(try await taken.decodeFirst(Bool.self) == true)
                    #expect(try await Self.setting(connection) == "2s")
                    #expect(try await Self.applicationName(connection) == ProcessInstance.sessionName("test"))
                    // Idle, as a runner waiting for events is: three lease lengths without a query of its own.
                    try await Task.sleep(for: .seconds(6))
                    #expect(try await Self.backendPid(connection) == pid, "the session was ended")
                    // The lock is still this session's: another one cannot take it.
                    let elsewhere = try await store.client.queryOpen("SELECT pg_try_advisory_lock(\(key))", logger: TestDatabase.logger)
                    #expect(try await elsewhere.decodeFirst(Bool.self) == false)
                    _ = try await connection.collect("SELECT pg_advisory_unlock(\(key))", logger: TestDatabase.logger)
                }
                #expect(try await Self.setting(connection) == "0", "the lease's timeout stayed on a pooled session")
                #expect(try await Self.applicationName(connection) == "", "the lease's name stayed on a pooled session")
            }
        }
    }

    /// A process whose concurrency pool is taken (CPU-bound work, blocking calls) for longer than the lease is
    /// alive all the same: its heartbeat must not wait for a pool thread. Every thread of the pool is held
    /// for 1.6 leases by a blocking call; a heartbeat scheduled as a task would send nothing for that long.
    /// (Held asleep, not spinning: spinning threads also took the CPU from the event loop and from PostgreSQL,
    /// which on a loaded machine made a live beat late, a failure of the test rather than of the lease.) The
    /// lease is 2 s: with 1 s, beats 250 ms apart, a stall of this machine of 750 ms (the suite's start, when
    /// test clusters run initdb beside it) ended a live session once. Not longer: holding the pool stalls every
    /// test running in this process meanwhile (held 4.8 s for a 3-second lease, it let a 4-second visitor
    /// lock expire between its renewals in another test).
    @Test(.timeLimit(.minutes(1))) func aLeaseOutlivesAConcurrencyPoolBusyForLongerThanItsTimeout() async throws {
        try await TestDatabase.withStore { store in
            try await store.client.withOpenConnection { connection in
                let pid = try await Self.backendPid(connection)
                try await connection.asLease(timeout: .seconds(2), logger: TestDatabase.logger) {
                    // A beat has certainly run (a quarter of the lease) before the pool is taken.
                    try await Task.sleep(for: .milliseconds(800))
                    let until = ContinuousClock.now + .milliseconds(3200)
                    // More tasks than the pool has threads, each blocked in usleep until one deadline: every
                    // thread is held until then, whatever the pool's width.
                    await withTaskGroup(of: Void.self) { group in
                        for _ in 0..<64 {
                            group.addTask {
                                while case let left = until - ContinuousClock.now, left > .zero {
                                    usleep(UInt32(max(1, left.components.attoseconds / 1_000_000_000_000 + left.components.seconds * 1_000_000)))
                                }
                            }
                        }
                    }
                    #expect(try await Self.backendPid(connection) == pid, "the session was ended")
                }
                #expect(try await Self.setting(connection) == "0")
            }
        }
    }

    @Test func whatTheBodyThrowsIsThrownAndTheSettingIsResetAllTheSame() async throws {
        struct Refused: Error {}
        try await TestDatabase.withStore { store in
            try await store.client.withOpenConnection { connection in
                await #expect(throws: Refused.self) {
                    try await connection.asLease(timeout: .seconds(5), role: "test", logger: TestDatabase.logger) { () async throws -> Int in throw Refused() }
                }
                #expect(try await Self.setting(connection) == "0")
                #expect(try await Self.applicationName(connection) == "")
                // Without a timeout the body runs on the session as it is.
                let value = try await connection.asLease(timeout: nil, logger: TestDatabase.logger) { try await Self.setting(connection) }
                #expect(value == "0")
            }
        }
    }

    static func backendPid(_ connection: PostgresConnection) async throws -> Int32? {
        try await connection.whileOpen { try await $0.collect("SELECT pg_backend_pid()", logger: TestDatabase.logger).decodeFirst(Int32.self) }
    }

    static func applicationName(_ connection: PostgresConnection) async throws -> String? {
        try await connection.collect("SHOW application_name", logger: TestDatabase.logger).decodeFirst(String.self)
    }

    static func setting(_ connection: PostgresConnection) async throws -> String? {
        try await connection.collect("SHOW idle_session_timeout", logger: TestDatabase.logger).decodeFirst(String.self)
    }
}

extension CollectedRows {
    func decodeFirst<T: PostgresDecodable>(_ type: T.Type) async throws -> T? {
        for try await value in decode(T.self) { return value }
        return nil
    }
}
