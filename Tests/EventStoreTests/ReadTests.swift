import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
import SharedTypes
import Synchronization
import Testing

@Suite struct ReadTests {
    @Test func readsAreScopedToTheirTenantStreamAndCategory() async throws {
        try await TestDatabase.withStore { store in
            let tenantA = TestDatabase.uniqueTenant()
            let tenantB = TestDatabase.uniqueTenant()
            let shared = TestDatabase.uniqueStream("messages")
            let workflow = try StreamName(category: "workflow", id: shared.id)
            try await store.append([note("a1"), note("a2")], to: shared, tenant: tenantA, expectedVersion: .noStream)
            try await store.append([note("b1")], to: shared, tenant: tenantB, expectedVersion: .noStream)
            try await store.append([note("w1")], to: workflow, tenant: tenantA, expectedVersion: .noStream)

            let streamA = try await store.readStream(shared, tenant: tenantA, fromVersion: 2, maxCount: 10)
            #expect(try streamA.map { try $0.decode(Note.self).text } == ["a2"])
            let allA = try await readAllSettled(store, .tenant(tenantA), count: 3)
            #expect(try allA.map { try $0.decode(Note.self).text } == ["a1", "a2", "w1"])
            let categoryA = try await store.readCategory("messages", tenant: tenantA, after: 0, maxCount: 100)
            #expect(try categoryA.map { try $0.decode(Note.self).text } == ["a1", "a2"])
            let allB = try await readAllSettled(store, .tenant(tenantB), count: 1)
            #expect(try allB.map { try $0.decode(Note.self).text } == ["b1"])
            #expect(try await store.headPosition(.tenant(tenantA)) == allA.last?.globalPosition)
            try #require(allA.count == 3)

            let page = try await store.readAll(.tenant(tenantA), after: allA[0].globalPosition, maxCount: 1)
            #expect(page.map(\.eventId) == [allA[1].eventId])
            let everything = try await store.readAll(.allTenants, after: allA[0].globalPosition - 1, maxCount: 10_000)
            #expect(everything.contains { $0.eventId == allB[0].eventId })
        }
    }

    /// Several streams in one query: each from its own version to its end, past the page of 1,000 events,
    /// another tenant's stream of the same name never among them.
    @Test func severalStreamsAreReadToTheirEndsInOneCall() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant(), other = TestDatabase.uniqueTenant()
            let long = TestDatabase.uniqueStream("messages")
            let short = try StreamName(category: "workflow", id: long.id)
            let empty = TestDatabase.uniqueStream("messages")
            for start in stride(from: 0, to: 1_205, by: 241) {
                try await store.append((start..<(start + 241)).map { note("l\($0)") }, to: long, tenant: tenant, expectedVersion: .any)
            }
            try await store.append((0..<5).map { note("s\($0)") }, to: short, tenant: tenant, expectedVersion: .noStream)
            try await store.append([note("foreign")], to: short, tenant: other, expectedVersion: .noStream)

            let read = try await store.readStreamsToEnd([(short, 3), (long, 2), (empty, 1)], tenant: tenant)
            #expect(read.count == 3)
            #expect(try read[0].map { try $0.decode(Note.self).text } == ["s2", "s3", "s4"])
            #expect(read[1].count == 1_204 && read[1].map(\.streamVersion) == Array(2...1_205))
            #expect(try read[1].last?.decode(Note.self).text == "l1204")
            #expect(read[2].isEmpty)
            // Past the end: nothing, and the same as one stream at a time.
            #expect(try await store.readStreamsToEnd([(long, 1_206), (short, 6)], tenant: tenant).allSatisfy(\.isEmpty))
            #expect(try await store.readStreamsToEnd([(short, 1)], tenant: tenant)[0].map(\.eventId)
                == (try await store.readStreamToEnd(short, tenant: tenant)).map(\.eventId))
            await #expect(throws: EventStoreError.self) { _ = try await store.readStreamsToEnd([(short, 1), (short, 2)], tenant: tenant) }
        }
    }

    /// On a cluster of its own: the open append withholds the events of every reader of the cluster (readers
    /// cannot tell databases apart), so on the shared one it would stall every other test while it runs.
    @Test(.timeLimit(.minutes(2))) func readAllWithholdsEventsThatCommitBeforeAnOlderOpenAppend() async throws {
        let server = try await PostgresServer()
        try await TestDatabase.withStore(url: try DatabaseURL(server.url)) { store in
            let tenant = TestDatabase.uniqueTenant()
            let lateID = UUID()
            try await store.client.withConnection { connection in
                try await connection.query("BEGIN", logger: TestDatabase.logger)
                // This append draws its position first and stays uncommitted.
                let late = try await connection.query(
                    """
                    SELECT global_position FROM convo_append(\(tenant.rawValue), 'test-late', -1, ARRAY[\(lateID)]::uuid[],
                        ARRAY['NoteTaken'], ARRAY['{"text":"late"}'::jsonb], ARRAY['{}'::jsonb])
                    """, logger: TestDatabase.logger)
                var latePosition: Int64 = 0
                for try await position in late.decode(Int64.self) { latePosition = position }

                let early = try await store.append([note("early")], to: TestDatabase.uniqueStream(), tenant: tenant, expectedVersion: .any)
                #expect(early.lastPosition > latePosition)
                // Handing out the committed event now would let a reader move past the open one's position.
                #expect(try await store.readAll(.tenant(tenant), after: 0, maxCount: 100).isEmpty)
                #expect(try await store.readAll(.allTenants, after: latePosition - 1, maxCount: 100).allSatisfy { $0.globalPosition < latePosition })

                try await connection.query("COMMIT", logger: TestDatabase.logger)
                let events = try await readAllSettled(store, .tenant(tenant), count: 2)
                #expect(events.map(\.globalPosition) == [latePosition, early.lastPosition])
                #expect(events.first?.eventId == lateID)
            }
        }
        try await server.stop()
    }

    @Test func aReaderFollowingConcurrentAppendsSeesEveryEventOnceInOrder() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let writers = 16
            let appendsPerWriter = 40
            let total = writers * appendsPerWriter
            async let appended: Set<UUID> = withThrowingTaskGroup(of: [UUID].self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        var ids: [UUID] = []
                        for index in 0..<appendsPerWriter {
                            let event = note("\(writer).\(index)")
                            ids.append(event.eventId)
                            let stream = try StreamName(category: "race", id: "\(writer % 4)")
                            try await store.append([event], to: stream, tenant: tenant, expectedVersion: .any)
                        }
                        return ids
                    }
                }
                return try await group.reduce(into: Set<UUID>()) { $0.formUnion($1) }
            }
            var seen: [RecordedEvent] = []
            var checkpoint: Int64 = 0
            let deadline = ContinuousClock.now + .seconds(60)
            while seen.count < total && ContinuousClock.now < deadline {
                let page = try await store.readAll(.tenant(tenant), after: checkpoint, maxCount: 7)
                seen += page
                checkpoint = page.last?.globalPosition ?? checkpoint
            }
            let expected = try await appended
            #expect(seen.count == total)
            #expect(Set(seen.map(\.eventId)) == expected)
            let positions = seen.map(\.globalPosition)
            #expect(zip(positions, positions.dropFirst()).allSatisfy { $0 < $1 })
        }
    }

    /// A process frozen inside a transaction holds back every reader of the cluster, until PostgreSQL ends its
    /// session after `idle_in_transaction_session_timeout` (`convo serve --idle-transaction-timeout`).
    @Test(.timeLimit(.minutes(2))) func aSessionIdleInATransactionHoldsReadersBackUntilPostgreSQLEndsIt() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let url = try TestDatabase.url
            // A connection of its own, with the startup parameters `convo serve` sends.
            let settings = url.clientConfiguration(maximumConnections: 1, sessionTimeouts: .seconds(300), idleInTransaction: .seconds(3))
            var configuration = PostgresConnection.Configuration(
                host: url.host, port: url.port, username: url.username, password: url.password, database: url.database, tls: .disable)
            configuration.options.additionalStartupParameters = settings.options.additionalStartupParameters
            let frozen = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: TestDatabase.logger)
            defer { Task { try? await frozen.close() } }
            try await frozen.query("BEGIN", logger: TestDatabase.logger)
            // A transaction id taken and kept: what a batch that wrote and then froze leaves behind.
            try await frozen.query("SELECT txid_current()", logger: TestDatabase.logger)
            try await store.append([note("after the freeze")], to: TestDatabase.uniqueStream(), tenant: tenant, expectedVersion: .any)
            let heldBack = try await store.readAll(.tenant(tenant), after: 0, maxCount: 10)
            #expect(heldBack.isEmpty, "the reader did not wait for the open transaction")
            #expect(try await eventually(timeout: .seconds(60)) { try await store.readAll(.tenant(tenant), after: 0, maxCount: 10).count == 1 })
            // PostgreSQL ended the idle session: the frozen one's next statement fails (asked through whileOpen:
            // a bare query on a connection the server closed while it was idle never returns).
            await #expect(throws: (any Error).self) {
                try await frozen.whileOpen { try await $0.query("SELECT 1", logger: TestDatabase.logger) }
            }
        }
    }

    @Test func pageSizesOutOfRangeAreRefused() async throws {
        try await TestDatabase.withStore { store in
            for size in [0, -1, 10_001] {
                let error = try await #require(throws: EventStoreError.self) {
                    try await store.readAll(.allTenants, after: 0, maxCount: size)
                }
                #expect(error.code == .invalidArgument)
            }
        }
    }
}

@Suite struct SubscriptionTests {
    @Test func aSubscriberIsWokenByAnotherConnectionsAppendLongBeforeAPoll() async throws {
        // A poll interval far beyond the deadline: only LISTEN/NOTIFY can deliver in time.
        let slowPolling = PostgresEventStore.Configuration(pollInterval: .seconds(120))
        try await TestDatabase.withStore(configuration: slowPolling) { subscriber in
            try await TestDatabase.withStore(configuration: slowPolling) { writer in
                let tenant = TestDatabase.uniqueTenant()
                let start = try await subscriber.headPosition(.allTenants)
                #expect(try await eventually(timeout: .seconds(30)) { subscriber.isListening })
                let delivered = try await withThrowingTaskGroup(of: (RecordedEvent, Duration)?.self) { group in
                    group.addTask {
                        for try await event in subscriber.subscribe(.tenant(tenant), after: start) {
                            return (event, .zero)
                        }
                        return nil
                    }
                    // The subscriber has read what there was and waits for a wake-up.
                    #expect(try await eventually(timeout: .seconds(30)) { subscriber.waitingSubscriptions > 0 })
                    let clock = ContinuousClock()
                    let appendedAt = clock.now
                    try await writer.append([note("hello")], to: TestDatabase.uniqueStream(), tenant: tenant, expectedVersion: .any)
                    group.addTask {
                        try await Task.sleep(for: .seconds(20))
                        return nil
                    }
                    let first = try await group.next() ?? nil
                    group.cancelAll()
                    return first.map { ($0.0, clock.now - appendedAt) }
                }
                let (event, latency) = try #require(delivered)
                #expect(try event.decode(Note.self).text == "hello")
                // Polling would take 120 s: anything far below can only be the notification. (Not a speed
                // check: beside the two-server test on two cores, a wake-up has taken over a second.)
                #expect(latency < .seconds(10))
            }
        }
    }

    @Test func aSubscriptionResumesAfterItsPositionAndKeepsOrder() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let stream = TestDatabase.uniqueStream()
            let first = try await store.append([note("1"), note("2")], to: stream, tenant: tenant, expectedVersion: .noStream)
            let texts = try await withThrowingTaskGroup(of: [String].self) { group in
                group.addTask {
                    var texts: [String] = []
                    for try await event in store.subscribe(.tenant(tenant), after: first.events[0].globalPosition) {
                        texts.append(try event.decode(Note.self).text)
                        if texts.count == 4 { break }
                    }
                    return texts
                }
                for text in ["3", "4", "5"] {
                    try await store.append([note(text)], to: stream, tenant: tenant, expectedVersion: .any)
                }
                return try await group.next() ?? []
            }
            #expect(texts == ["2", "3", "4", "5"])
        }
    }

    @Test func aSubscriptionToSomeTypesIsSentOnlyThoseInOrder() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let stream = TestDatabase.uniqueStream()
            func other(_ text: String) -> NewEvent {
                try! NewEvent(type: "OtherThing", encoding: Note(text: text), metadata: EventMetadata(actorId: "test"))
            }
            // Pages of 2 wanted events among many others: the LIMIT counts the wanted ones.
            let start = try await store.append([other("a")], to: stream, tenant: tenant, expectedVersion: .noStream)
            let texts = try await withThrowingTaskGroup(of: [String].self) { group in
                group.addTask {
                    var texts: [String] = []
                    for try await event in store.subscribe(.tenant(tenant), after: start.lastPosition, types: ["NoteTaken"], opening: .all) {
                        #expect(event.type == "NoteTaken")
                        texts.append(try event.decode(Note.self).text)
                        if texts.count == 5 { break }
                    }
                    return texts
                }
                for text in ["1", "2", "3", "4", "5"] {
                    try await store.append([other("x\(text)"), note(text), other("y\(text)")], to: stream, tenant: tenant, expectedVersion: .any)
                }
                return try await group.next() ?? []
            }
            #expect(texts == ["1", "2", "3", "4", "5"])
            // readAll with types: a full page of wanted ones, past the others.
            let page = try await store.readAll(.tenant(tenant), after: start.lastPosition, maxCount: 2, types: ["NoteTaken"], opening: .all)
            #expect(page.map(\.type) == ["NoteTaken", "NoteTaken"])
            let all = try await readAllSettled(store, .tenant(tenant), count: 16)
            #expect(all.filter { $0.type == "NoteTaken" }.count == 5 && all.count == 16)
        }
    }
}

@Suite struct ImmutabilityTests {
    @Test func updateDeleteAndTruncateOnEventsAreRefused() async throws {
        // A database of its own: TRUNCATE waits for every open transaction on the table, and other suites
        // keep one open on purpose.
        try await TestDatabase.withFreshDatabase { url in try await self.refuseChanges(url: url) }
    }

    private func refuseChanges(url: DatabaseURL) async throws {
        try await TestDatabase.withStore(url: url) { store in
            let tenant = TestDatabase.uniqueTenant()
            let stream = TestDatabase.uniqueStream()
            try await store.append([note("fact")], to: stream, tenant: tenant, expectedVersion: .noStream)
            let statements: [PostgresQuery] = [
                "UPDATE events SET event_type = 'Changed' WHERE tenant_id = \(tenant.rawValue)",
                "UPDATE events SET data = '{}' WHERE tenant_id = \(tenant.rawValue)",
                "DELETE FROM events WHERE tenant_id = \(tenant.rawValue)",
                "TRUNCATE events",
            ]
            for statement in statements {
                let error = try await #require(throws: PSQLError.self) { try await store.client.query(statement) }
                #expect(error.serverInfo?[.sqlState] == "CV003")
            }
            let events = try await store.readStream(stream, tenant: tenant, fromVersion: 1, maxCount: 10)
            #expect(events.count == 1)
            #expect(events.first?.type == "NoteTaken")
        }
    }
}
