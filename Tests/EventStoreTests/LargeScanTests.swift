import ConvoTestSupport
import Dispatch
import EventStore
import Foundation
import PostgresNIO
import SharedTypes
import Synchronization
import Testing

/// Scans of a store larger than a page (a rebuild's, the verifier's), on a good day and across PostgreSQL
/// restarts and an outage. Each test on a PostgreSQL cluster of its own: a large write holds back the
/// readers of every database of its cluster while it runs, and these tests restart and stop theirs.
@Suite struct LargeScanTests {
    /// 25,000 events of about 300 bytes, straight into the table: two and a half pages of a scan, and each
    /// page a result of many socket reads.
    static let count = 25_000

    static func writeNotes(_ store: PostgresEventStore) async throws {
        try await store.client.query(
            """
            INSERT INTO events (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
            SELECT n, gen_random_uuid(), 'scan', 'notes-' || (n % 100), n / 100 + 1, 'NoteTaken',
                   jsonb_build_object('text', repeat('x', 300)), '{}', now(), sha256(convert_to(n::text, 'UTF8'))
            FROM generate_series(1, \(Self.count)) n
            """, logger: TestDatabase.logger)
    }

    /// A scan of the whole store does not hold the whole store: it reads page by page as the body takes the
    /// batches. While the body holds the first batch, another session locks the table; once the body lets go,
    /// a later page's read waits for that lock (seen in `pg_stat_activity`), and only then goes on; a scan
    /// that read every row first would finish without waiting. A scan on the caller's connection (the
    /// verifier's, time travel's) hands out every event through its position once and in order across page
    /// boundaries, and only the given streams when asked.
    @Test(.timeLimit(.minutes(3))) func aLargeStoreIsScannedPageByPage() async throws {
        let server = try await PostgresServer()
        try await TestDatabase.withStore(url: try DatabaseURL(server.url)) { store in
            try await Self.writeNotes(store)

            let scan = await HeldScan.start(store, batchSize: 100)
            let waited = try await store.client.withOpenConnection { locker in
                try await locker.query("BEGIN", logger: TestDatabase.logger)
                try await locker.query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE", logger: TestDatabase.logger)
                scan.release()
                // Until a page of the scan waits for the lock, or 30 s pass.
                let deadline = ContinuousClock.now + .seconds(30)
                var seen = false
                while !seen, ContinuousClock.now < deadline {
                    let rows = try await store.client.queryOpen(
                        """
                        SELECT count(*) FROM pg_stat_activity
                        WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'SELECT global_position, event_id%'
                        """, logger: TestDatabase.logger)
                    for try await count in rows.decode(Int64.self) { seen = count > 0 }
                    if !seen { try await Task.sleep(for: .milliseconds(20)) }
                }
                try await locker.query("COMMIT", logger: TestDatabase.logger)
                return seen
            }
            #expect(waited, "the scan never read again after its first batch")
            #expect(try await scan.task.value == Self.count)
            #expect(scan.positions == Array(1...Int64(Self.count)))

            let through = Int64(PostgresEventStore.scanPageSize * 2 + 345)
            let streams = [try StreamName(category: "notes", id: "7"), try StreamName(category: "notes", id: "42")]
            let (all, some) = try await store.client.withOpenConnection { connection in
                var all: [Int64] = []
                try await store.scan(on: connection, through: through) { all.append($0.globalPosition) }
                var some: [Int64] = []
                var foreign = 0
                try await store.scan(on: connection, through: through, tenant: TenantID("scan"), streams: streams) { event in
                    if !streams.contains(event.stream) { foreign += 1 }
                    some.append(event.globalPosition)
                }
                return (all, foreign == 0 ? some : [])
            }
            #expect(all == Array(1...through))
            let expected: [Int64] = (1...through).filter { position in position % 100 == 7 || position % 100 == 42 }
            #expect(some == expected)
        }
        try await server.stop()
    }

    /// PostgreSQL restarted and stopped under scans and large reads. The process neither crashes nor hangs
    /// (a large result streamed through PostgresNIO's async row sequence and cut by the server stops the
    /// process: the third part did so before reads were gathered on the event loop), and:
    /// - a scan whose body folds a batch while PostgreSQL restarts goes on, its next page read again on a
    ///   new connection: every event once, in order;
    /// - a scan on a connection the restart closed fails with the store's error, having handed out part of
    ///   its first page, in order;
    /// - three readers of 10,000-event pages through three restarts: each read returns its whole page or
    ///   fails with the store's error;
    /// - a scan whose PostgreSQL stays down keeps trying for the configured outage (10 s here, well before
    ///   PostgresNIO's pool gives up at 60 s), then fails with the store's error.
    @Test(.timeLimit(.minutes(6))) func largeScansAcrossPostgresRestartsAndAnOutage() async throws {
        // Each part's time, the set-up's too, for a run that comes near the time limit (one run in a full
        // suite reached 4 minutes with its four parts at 41 s).
        let mark = Mutex(ContinuousClock.now)
        @Sendable func took(_ part: String) {
            let now = ContinuousClock.now
            print("fault: large scans, \(part): \(now - mark.withLock { $0 })")
            mark.withLock { $0 = now }
        }
        let server = try await PostgresServer()
        took("starting a cluster")
        let outage = Duration.seconds(10)
        try await TestDatabase.withStore(url: try DatabaseURL(server.url), configuration: .init(scanOutage: outage)) { store in
            took("migrating")
            try await Self.writeNotes(store)
            took("writing the notes")

            // 1. A scan across a restart goes on.
            do {
                let scan = await HeldScan.start(store, batchSize: 100)
                took("a scan holding its first batch (\(scan.positions.count) events)")
                let before = try #require(server.postmasterPID)
                try await server.restart()
                took("restarting")
                #expect(server.postmasterPID != before)
                // One clean CI run spent its remaining five minutes in this part: every 20 s until the scan
                // ends, how far it got.
                let watch = Task {
                    while !Task.isCancelled {
                        try await Task.sleep(for: .seconds(20))
                        print("fault: large scans, a scan across a restart: \(scan.positions.count) events handed out so far")
                    }
                }
                defer { watch.cancel() }
                scan.release()
                #expect(try await scan.task.value == Self.count)
                #expect(scan.positions == Array(1...Int64(Self.count)))
            }
            took("a scan across a restart")

            // 2. A scan on a connection the restart closed fails cleanly.
            do {
                let atFirst = AsyncStream<Void>.makeStream()
                let restarted = DispatchSemaphore(value: 0)
                let handed = Mutex<[Int64]>([])
                async let scanned: Void = store.client.withOpenConnection { connection in
                    try await store.scan(on: connection, through: Int64(Self.count)) { event in
                        handed.withLock { $0.append(event.globalPosition) }
                        if event.globalPosition == 1 {
                            atFirst.continuation.yield()
                            // The body is synchronous: hold this thread until the restart is done (bounded).
                            _ = restarted.wait(timeout: .now() + 60)
                        }
                    }
                }
                for await _ in atFirst.stream { break }
                try await server.restart()
                restarted.signal()
                var failure: (any Error)?
                do { try await scanned } catch { failure = error }
                #expect(failure is EventStoreError, "\(String(describing: failure))")
                // `withOpenConnection` fails as the connection closes, while the body may still be on the first page.
                let seen = handed.withLock { $0 }
                #expect(seen.count <= PostgresEventStore.scanPageSize && seen == Array(1...Int64(seen.count)))
            }
            took("a scan on a connection the restart closed")

            // 3. Large reads through repeated restarts.
            do {
                let outcomes = Outcomes()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for reader in 0..<3 {
                        group.addTask {
                            var after = Int64(reader * 5_000)
                            while !outcomes.state.withLock(\.stop) {
                                do {
                                    let page = try await store.readAll(.allTenants, after: after, maxCount: 10_000)
                                    let ok = page.map(\.globalPosition) == Array((after + 1)...(after + 10_000))
                                    outcomes.state.withLock {
                                        $0.pages += 1
                                        if !ok { $0.wrong.append("page after \(after): \(page.count) events") }
                                    }
                                } catch is EventStoreError {
                                    outcomes.state.withLock { $0.failures += 1 }
                                } catch {
                                    outcomes.state.withLock { $0.wrong.append("\(error)") }
                                }
                                after = (after + 5_000) % 15_000
                            }
                        }
                    }
                    for restart in 0..<3 {
                        let pages = outcomes.state.withLock(\.pages)
                        // Until reads go through again since the last restart (bounded).
                        let readAgain = try await eventually(timeout: .seconds(60)) { outcomes.state.withLock(\.pages) >= pages + 3 }
                        #expect(readAgain, "no page read within 60 s before restart \(restart + 1): \(outcomes.state.withLock { $0 })")
                        try await server.restart()
                    }
                    outcomes.state.withLock { $0.stop = true }
                    try await group.waitForAll()
                }
                let seen = outcomes.state.withLock { $0 }
                #expect(seen.wrong.isEmpty, "\(seen.wrong)")
                #expect(seen.pages >= 9)
            }
            took("reads through three restarts")

            // 4. An outage longer than the scan waits.
            do {
                let scan = await HeldScan.start(store, batchSize: 10_000)
                // The next page is asked for as the first batch is handed out: its outage counts from about here.
                let started = ContinuousClock.now
                try await server.stop()
                scan.release()
                var failure: (any Error)?
                do { _ = try await scan.task.value } catch { failure = error }
                let waited = ContinuousClock.now - started
                #expect((failure as? EventStoreError)?.code == .unavailable, "\(String(describing: failure))")
                #expect(waited >= outage - .seconds(1) && waited < outage * 4, "\(waited)")
                // What was read before the stop is handed out, in order, and nothing more: the first page, and
                // the second too when its read (asked for as the first batch was handed out) beat the stop.
                let handed = scan.positions
                #expect((handed == Array(1...10_000) || handed == Array(1...20_000)), "\(handed.count) positions, up to \(handed.last ?? 0)")
            }
            took("an outage")
        }
        if server.isRunning { try await server.stop() }
    }

    /// A page read that gets no answer (here it waits behind another session's lock on the table, as one
    /// waits on a frozen PostgreSQL) is given up once the scan's outage has passed: the scan fails with the
    /// store's error while the lock is still held, having handed out whole pages in order, instead of waiting
    /// for the read (which does not react to cancellation). The abandoned read ends when the lock goes, and
    /// the store scans in full again.
    @Test(.timeLimit(.minutes(3))) func aPageReadThatGetsNoAnswerIsGivenUpAtTheOutage() async throws {
        let server = try await PostgresServer()
        // Long enough for a page to be read on a crowded machine (the other reads must not be cut).
        let outage = Duration.seconds(10)
        try await TestDatabase.withStore(url: try DatabaseURL(server.url), configuration: .init(scanOutage: outage)) { store in
            try await Self.writeNotes(store)
            let scan = await HeldScan.start(store, batchSize: 100)
            let ended = Mutex(false)
            let watcher = Task {
                _ = try? await scan.task.value
                ended.withLock { $0 = true }
            }
            let (endedWhileLocked, waited) = try await store.client.withOpenConnection { locker in
                try await locker.query("BEGIN", logger: TestDatabase.logger)
                try await locker.query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE", logger: TestDatabase.logger)
                let locked = ContinuousClock.now
                scan.release()
                // Bounded: a scan that waited for its read would wait here until the lock goes, after 60 s.
                let endedWhileLocked = try await eventually(timeout: .seconds(60)) { ended.withLock { $0 } }
                let waited = ContinuousClock.now - locked
                try await locker.query("COMMIT", logger: TestDatabase.logger)
                return (endedWhileLocked, waited)
            }
            await watcher.value
            var failure: (any Error)?
            do { _ = try await scan.task.value } catch { failure = error }
            #expect(endedWhileLocked && waited < outage * 3, "the scan ended \(waited) after the lock was taken")
            #expect((failure as? EventStoreError)?.code == .unavailable, "\(String(describing: failure))")
            let handed = scan.positions
            #expect(handed == Array(1...10_000) || handed == Array(1...20_000), "\(handed.count) positions, up to \(handed.last ?? 0)")
            // The lock gone, the abandoned read ends, and the store reads again.
            let readEnded = try await eventually(timeout: .seconds(30)) {
                let rows = try await store.client.queryOpen(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'SELECT global_position, event_id%'",
                    logger: TestDatabase.logger)
                for try await count in rows.decode(Int64.self) { return count == 0 }
                return false
            }
            #expect(readEnded, "a read still waits on a lock")
            #expect(try await store.readAll(.allTenants, after: 24_990, maxCount: 100).map(\.globalPosition) == Array(24_991...25_000))
        }
        try await server.stop()
    }

    /// A scan of the whole store whose body holds its first batch until ``release()``: the moment a test
    /// locks, restarts or stops PostgreSQL while a rebuild folds.
    final class HeldScan: Sendable {
        let task: Task<Int, any Error>
        private let handed: Positions
        private let releasing: AsyncStream<Void>.Continuation

        private init(task: Task<Int, any Error>, handed: Positions, releasing: AsyncStream<Void>.Continuation) {
            self.task = task
            self.handed = handed
            self.releasing = releasing
        }

        /// Starts the scan and returns once its body holds the first batch, or once the scan has ended without
        /// handing one out (its task then holds why).
        static func start(_ store: PostgresEventStore, batchSize: Int) async -> HeldScan {
            let firstBatch = AsyncStream<Void>.makeStream()
            let release = AsyncStream<Void>.makeStream()
            let positions = Positions()
            let task = Task {
                // A scan that fails before its first batch (its first read refused) must not leave `start` waiting.
                defer { firstBatch.continuation.finish() }
                return try await store.scanAll(after: 0, batchSize: batchSize) { batch in
                    let first = positions.state.withLock { seen in
                        seen += batch.map(\.globalPosition)
                        return seen.count == batch.count
                    }
                    if first {
                        firstBatch.continuation.yield()
                        for await _ in release.stream { break }
                    }
                }
            }
            for await _ in firstBatch.stream { break }
            return HeldScan(task: task, handed: positions, releasing: release.continuation)
        }

        /// Lets the body go on.
        func release() { releasing.yield() }

        // A test that stopped early (a failed `#require`) must not leave the body waiting for ever.
        deinit { releasing.finish() }
        /// The positions handed out so far, in the order they were handed out.
        var positions: [Int64] { handed.state.withLock { $0 } }
    }

    final class Positions: Sendable {
        let state = Mutex<[Int64]>([])
    }

    final class Outcomes: Sendable {
        struct State {
            var pages = 0
            var failures = 0
            var wrong: [String] = []
            var stop = false
        }
        let state = Mutex(State())
    }
}
