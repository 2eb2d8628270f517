import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
import Projections
import SharedTypes
import Testing

/// The runner against a database of its own: the projections' tables are global, so these tests must not
/// share them.
@Suite struct RunnerTests {
    static let fast = ProjectionRunner.Configuration(standbyPoll: .milliseconds(100), retryDelay: .milliseconds(100), failureRecheck: .milliseconds(200))

    static func runners(_ store: PostgresEventStore, _ projections: [any Projection] = ProjectionRegistry.standard) -> [ProjectionRunner] {
        projections.map { ProjectionRunner(projection: $0, store: store, configuration: fast, logger: TestDatabase.logger) }
    }

    /// Runs `runners` until `body` returns.
    static func running<T: Sendable>(_ runners: [ProjectionRunner], _ body: () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for runner in runners { group.addTask { try await runner.run() } }
            defer { group.cancelAll() }
            return try await body()
        }
    }

    /// Whether the runners have stored every event appended so far. Waits for the last append's position,
    /// not for the head readers see: the head lags behind while other tests' transactions are open.
    static func caughtUp(_ runners: [ProjectionRunner], _ store: PostgresEventStore) async throws -> Bool {
        let rows = try await store.client.query("SELECT max(global_position) FROM events")
        var last: Int64 = 0
        for try await value in rows.decode(Int64?.self) { last = value ?? 0 }
        if try await eventually(timeout: .seconds(90), { runners.allSatisfy { $0.state == .running && $0.checkpoint >= last } }) { return true }
        // A slow CI machine gets time. On failure, say what held them back: their states, what a reader may
        // see, and the oldest writing transaction in the cluster (readers withhold events behind it, across
        // databases).
        let visible = try await store.headPosition()
        let oldest = try await store.client.query(
            """
            SELECT coalesce(max(now() - xact_start)::text, 'none') || ' ' || coalesce(max(datname), '') || ' ' || coalesce(max(left(query, 120)), '')
            FROM (SELECT * FROM pg_stat_activity WHERE backend_xid IS NOT NULL ORDER BY xact_start LIMIT 1) oldest
            """)
        var transaction = ""
        for try await text in oldest.decode(String.self) { transaction = text }
        Issue.record(
            """
            not caught up with \(last) (visible head \(visible)): \(runners.map { "\($0.projection.name) \($0.state) at \($0.checkpoint)" }); \
            oldest writing transaction: \(transaction)
            """)
        return false
    }

    static func verifyClean(_ store: PostgresEventStore, _ projections: [any Projection] = ProjectionRegistry.standard) async throws {
        for projection in projections {
            let report = try await ProjectionVerifier(store: store, logger: TestDatabase.logger).verify(projection)
            #expect(report.isClean, "\(projection.name): \(report.differences)")
            #expect(report.rowsCompared > 0)
        }
    }

    @Test func aRunnerStoppedMidStreamAndRestartedAppliesEveryEventOnce() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.run(turns: 30, conversations: 10)
                // Stop the first runners while appends are still arriving, once each has stored something.
                let first = Self.runners(store)
                let stoppedAt = try await withThrowingTaskGroup(of: [Int64]?.self) { group in
                    group.addTask {
                        try await traffic.run(turns: 200, conversations: 10, prefix: "d")
                        return nil
                    }
                    group.addTask {
                        try await Self.running(first) {
                            _ = try await eventually { first.allSatisfy { $0.state == .running && $0.checkpoint > 0 } }
                            return first.map(\.checkpoint)
                        }
                    }
                    var stopped: [Int64] = []
                    for try await result in group { if let result { stopped = result } }
                    return stopped
                }
                let appended = await traffic.lastPosition
                #expect(stoppedAt.count == 3 && stoppedAt.allSatisfy { $0 > 0 && $0 < appended }, "stopped at \(stoppedAt), appended up to \(appended)")
                try await traffic.run(turns: 20, conversations: 5, prefix: "e")
                let restarted = Self.runners(store)
                try await Self.running(restarted) {
                    let caughtUp = try await Self.caughtUp(restarted, store)
                    #expect(caughtUp)
                }
                try await Self.verifyClean(store)
                // Each visitor message counted exactly once.
                let rows = try await store.client.query("SELECT conversation_id, visitor_messages FROM conversations")
                var counts: [String: Int64] = [:]
                for try await (id, count) in rows.decode((String, Int64).self) { counts[id] = count }
                let turns = await traffic.turns
                #expect(counts.count == turns.count)
                for (conversation, expected) in turns { #expect(counts[conversation] == Int64(expected), "\(conversation)") }
            }
        }
    }

    @Test func twoRunnersOneActiveTheOtherTakesOver() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                try await TestDatabase.withStore(url: url) { other in
                    let traffic = Traffic(store: store)
                    try await traffic.run(turns: 10, conversations: 3)
                    let projection = ConversationsProjection()
                    let first = ProjectionRunner(projection: projection, store: store, configuration: Self.fast, logger: TestDatabase.logger)
                    let second = ProjectionRunner(projection: projection, store: other, configuration: Self.fast, logger: TestDatabase.logger)
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await first.run() }
                        #expect(try await eventually { first.state == .running })
                        group.addTask { try await second.run() }
                        #expect(try await eventually { second.state == .standby })
                        let status = try #require(try await ProjectionStatus.read([projection], store: store, logger: TestDatabase.logger).first)
                        #expect(status.state == "running" && status.standby == 1, "\(status)")
                        #expect(first.state == .running)

                        // The active runner goes away (its session ends); the standby takes over and applies what follows.
                        group.cancelAll()
                        try? await group.waitForAll()
                    }
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await second.run() }
                        #expect(try await eventually { second.state == .running })
                        try await traffic.run(turns: 10, conversations: 3, prefix: "x")
                        #expect(try await Self.caughtUp([second], store))
                        group.cancelAll()
                    }
                    try await Self.verifyClean(store, [projection])
                }
            }
        }
    }

    @Test func onlyOneOfManyRacingRunnersIsActive() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                try await Traffic(store: store).run(turns: 5, conversations: 2)
                let runners = (0..<6).map { _ in
                    ProjectionRunner(projection: VisitorsProjection(), store: store, configuration: Self.fast, logger: TestDatabase.logger)
                }
                try await Self.running(runners) {
                    #expect(try await eventually { runners.filter { $0.state == .running }.count == 1 && runners.filter { $0.state == .standby }.count == 5 })
                    // What PostgreSQL says, not what the runners believe: one session holds the runner lock.
                    let status = try #require(try await ProjectionStatus.read([VisitorsProjection()], store: store, logger: TestDatabase.logger).first)
                    #expect(status.activeRunners == 1 && status.standby == 5, "\(status)")
                    #expect(runners.filter { $0.state == .running }.count == 1)
                    // And where: the runner's leased session is named for this process.
                    #expect(status.runningIn == ["\(ProcessInfo.processInfo.processIdentifier)@\(ProcessInstance.host)"], "\(status)")
                }
            }
        }
    }

    /// A runner given no lease has a session without a name: counted, and shown as such.
    @Test func aRunnerWithoutALeaseIsRunningInAnUnnamedSession() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                var configuration = Self.fast
                configuration.sessionLease = nil
                let runner = ProjectionRunner(projection: VisitorsProjection(), store: store, configuration: configuration, logger: TestDatabase.logger)
                try await Self.running([runner]) {
                    #expect(try await eventually { runner.state == .running })
                    let status = try #require(try await ProjectionStatus.read([VisitorsProjection()], store: store, logger: TestDatabase.logger).first)
                    #expect(status.activeRunners == 1 && status.runningIn == ["unnamed"], "\(status)")
                }
            }
        }
    }

    @Test func anEventTheFoldCannotApplyStopsTheProjectionWhereEveryoneCanSeeIt() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.run(turns: 4, conversations: 2)
                let stream = ConversationID(rawValue: "c0")!.workflowStream
                let version = try await store.streamVersion(stream, tenant: traffic.tenant)
                let bad = try await store.append(
                    [NewEvent(type: "SomethingUnheardOf", data: .init(string: "{}"))], to: stream, tenant: traffic.tenant, expectedVersion: .exact(version))
                try await traffic.run(turns: 2, conversations: 1, prefix: "after")
                let projection = WorkflowStateProjection()
                let runner = ProjectionRunner(projection: projection, store: store, configuration: Self.fast, logger: TestDatabase.logger)
                try await Self.running([runner]) {
                    #expect(try await eventually { if case .failed = runner.state { true } else { false } })
                    guard case .failed(let position, let error) = runner.state else { return }
                    #expect(position == bad.lastPosition)
                    #expect(error.contains("SomethingUnheardOf"))
                    // Everything before the bad event is stored, nothing after it.
                    #expect(runner.checkpoint < bad.lastPosition)
                    let status = try #require(try await ProjectionStatus.read([projection], store: store, logger: TestDatabase.logger).first)
                    #expect(status.state == "failed" && status.failedPosition == bad.lastPosition)
                    #expect(status.checkpoint < bad.lastPosition)
                    // The bad event and the turns after it are lag (counted once other tests' open transactions let readers see them).
                    let lagging = try await eventually {
                        try await ProjectionStatus.read([projection], store: store, logger: TestDatabase.logger).first?.lag ?? 0 >= 15
                    }
                    #expect(lagging)
                    #expect(status.error?.contains("SomethingUnheardOf") == true)
                }
                // A rebuild meets the same event and leaves the live table as it was.
                await #expect(throws: ProjectionError.self) {
                    try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild([projection], reason: "test")
                }
                let status = try #require(try await ProjectionStatus.read([projection], store: store, logger: TestDatabase.logger).first)
                #expect(status.state == "failed" && status.lastRebuild?.outcome == "failed", "\(status)")
            }
        }
    }

    @Test func aProjectionWhoseVersionChangedIsRebuiltAtStartUp() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                try await Traffic(store: store).run(turns: 6, conversations: 2)
                let v1 = Self.runners(store, [ConversationsProjection(version: 2)])
                try await Self.running(v1) {
                    let caughtUp = try await Self.caughtUp(v1, store)
                    #expect(caughtUp)
                }
                let v2 = Self.runners(store, [ConversationsProjection(version: 3)])
                try await Self.running(v2) {
                    let caughtUp = try await Self.caughtUp(v2, store)
                    #expect(caughtUp)
                }
                let status = try #require(try await ProjectionStatus.read([ConversationsProjection(version: 3)], store: store, logger: TestDatabase.logger).first)
                #expect(status.storedVersion == 3 && status.state == "stopped", "\(status)")
                #expect(status.lastRebuild?.reason == "version 2 → 3" && status.lastRebuild?.outcome == "swapped")
                // An older binary's runner leaves the newer rows alone instead of rebuilding them back.
                try await Self.running(v1) {
                    let superseded = try await eventually { v1.allSatisfy { $0.state == .superseded(storedVersion: 3) } }
                    #expect(superseded)
                }
                let after = try #require(try await ProjectionStatus.read([ConversationsProjection(version: 3)], store: store, logger: TestDatabase.logger).first)
                #expect(after.storedVersion == 3 && after.lastRebuild?.reason == "version 2 → 3")
            }
        }
    }
}
