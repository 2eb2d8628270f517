import ConvoTestSupport
import Crypto
import Foundation
import NIOCore
import PostgresNIO
import SharedTypes
import Synchronization
import Testing

@testable import EventStore

/// Visitors' personal data sealed with their own key at the store's boundary: ciphertext at rest, plaintext
/// to readers, erased for good when the key is destroyed, with the hash chain unchanged.
@Suite struct PersonalDataTests {
    static func message(_ text: String, visitor: VisitorUID, id: String = UUID().uuidString, mayCreateKey: Bool = true) throws -> NewEvent {
        try NewEvent(
            type: VisitorMessageReceived.eventType, encoding: VisitorMessageReceived(messageId: id, visitorUid: visitor, text: text, sentAt: Date()),
            metadata: EventMetadata(actorId: visitor.actorID), subject: PersonalDataSubject(visitor: visitor, mayCreateKey: mayCreateKey))
    }

    static func storedText(_ store: PostgresEventStore, _ id: UUID) async throws -> String {
        for try await text in try await store.client.queryOpen("SELECT data ->> 'text' FROM events WHERE event_id = \(id)", logger: TestDatabase.logger)
            .decode(String.self)
        {
            return text
        }
        return ""
    }

    static func visitor() -> VisitorUID { VisitorUID(rawValue: "v-\(UUID().uuidString.prefix(8).lowercased())")! }

    /// The shapes of a batch, one for each way appendMany stores new visitors' keys with their events: one
    /// event per append and two (a new conversation's pair), both by the batch statement, and the same
    /// stream appended twice in the call, by `convo_append_many_keyed`.
    enum BatchShape: String, CaseIterable, Sendable {
        case oneEach, pairs, streamTwice

        var eventsPerAppend: Int { self == .pairs ? 2 : 1 }

        /// An append of `events` to a new stream each, and for `streamTwice` one more event to the first one's.
        func requests(_ events: [[NewEvent]], tenant: TenantID, visitor: VisitorUID) throws -> [AppendRequest] {
            var requests = events.map { AppendRequest($0, to: TestDatabase.uniqueStream("messages"), tenant: tenant, expectedVersion: .noStream) }
            if self == .streamTwice, let first = requests.first {
                requests.append(AppendRequest([try PersonalDataTests.message("again", visitor: visitor)], to: first.stream, tenant: tenant, expectedVersion: .any))
            }
            return requests
        }
    }

    @Test func aPersonalTextIsCiphertextAtRestAndPlaintextToReaders() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let visitor = Self.visitor()
            let stream = try StreamName(category: "messages", id: "pd-\(UUID().uuidString.prefix(8).lowercased())")
            let text = "my card is 4111 \"quoted\" \\ é \(UUID().uuidString)"
            let event = try Self.message(text, visitor: visitor)
            try await store.append([event], to: stream, tenant: tenant, expectedVersion: .noStream)
            let stored = try await Self.storedText(store, event.eventId)
            #expect(stored.hasPrefix("pd1:") && !stored.contains(text) && !stored.contains("4111"))
            let read = try #require(try await store.readStream(stream, tenant: tenant).first)
            #expect(try read.decode(VisitorMessageReceived.self).text == text && !read.isErased)
            // The metadata names whose it is, in the short form (the type's own field sealed).
            #expect(try read.metadata()["pd"]?.stringValue == "1 \(visitor.rawValue)" && read.metadata()["personalData"] == nil)
            let subject = try PersonalDataVault.sealInfo(of: read.metadataJSON, type: read.type)?.subject
            #expect(subject == visitor.rawValue)
            // The other members stay as they were: structure is not personal.
            #expect(try read.decode(VisitorMessageReceived.self).visitorUid == visitor)
        }
    }

    /// Appends racing to make keys for the same new visitors, each in its own order: every append is
    /// stored, and each visitor gets one key (the inserts once deadlocked: `SQLSTATE 40P01`).
    @Test func appendsRacingToMakeTheSameVisitorsKeysAllSucceedWithOneKeyEach() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            for round in 0..<15 {
                let visitors = (0..<40).map { _ in Self.visitor() }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for writer in 0..<8 {
                        group.addTask {
                            let events = try visitors.shuffled().map { try Self.message("from \($0.rawValue)", visitor: $0) }
                            let stream = try StreamName(category: "messages", id: "race-\(round)-\(writer)-\(UUID().uuidString.prefix(6).lowercased())")
                            try await store.append(events, to: stream, tenant: tenant, expectedVersion: .noStream)
                        }
                    }
                    try await group.waitForAll()
                }
                let keys = try await store.client.query(
                    "SELECT count(*)::int, count(DISTINCT subject)::int FROM personal_data_keys WHERE tenant_id = \(tenant.rawValue) AND subject = ANY(\(visitors.map(\.rawValue)))",
                    logger: TestDatabase.logger
                ).collect().map { try $0.decode((Int, Int).self) }
                #expect(keys.first.map { [$0.0, $0.1] } == [40, 40], "round \(round): \(keys)")
            }
        }
    }

    /// The key rows of `visitors`: each one's generation and the transaction that stored it (`xmin`).
    static func keyRows(_ client: PostgresClient, tenant: TenantID, _ visitors: [VisitorUID]) async throws -> [String: [(generation: Int, transaction: Int64)]] {
        var rows: [String: [(Int, Int64)]] = [:]
        let query = try await client.query(
            """
            SELECT subject, generation, xmin::text::bigint FROM personal_data_keys
            WHERE tenant_id = \(tenant.rawValue) AND subject = ANY(\(visitors.map(\.rawValue))) ORDER BY subject, generation
            """, logger: TestDatabase.logger)
        for try await (subject, generation, transaction) in query.decode((String, Int, Int64).self) { rows[subject, default: []].append((generation, transaction)) }
        return rows
    }

    /// The transaction that stored an event (a position is the transaction's id shifted by 16 bits), as `xmin`
    /// shows it (32 bits).
    static func transaction(ofPosition position: Int64) -> Int64 { (position >> 16) & 0xFFFF_FFFF }

    /// A batch of new visitors' first messages stores their keys in its own transaction (one commit for the
    /// keys and the events), and a returning visitor's key stays the one stored before: in every shape of batch.
    @Test(arguments: BatchShape.allCases) func aBatchStoresItsNewVisitorsKeysInItsOwnTransaction(shape: BatchShape) async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let returning = Self.visitor()
            try await store.append(
                [try Self.message("hello", visitor: returning)], to: TestDatabase.uniqueStream("messages"), tenant: tenant, expectedVersion: .noStream)
            let newcomers = (0..<3).map { _ in Self.visitor() }
            let visitors = newcomers + [returning]
            let texts = visitors.map { "words of \($0.rawValue)" }
            let requests = try shape.requests(
                try zip(texts, visitors).map { text, visitor in try (0..<shape.eventsPerAppend).map { try Self.message($0 == 0 ? text : "more", visitor: visitor) } },
                tenant: tenant, visitor: visitors[0])
            let results = try await store.appendMany(requests)
            let positions = try results.map { try $0.get().events[0].globalPosition }
            let keys = try await Self.keyRows(store.client, tenant: tenant, visitors)
            for (visitor, position) in zip(newcomers, positions) {
                let rows = keys[visitor.rawValue] ?? []
                #expect(rows.map(\.generation) == [1] && rows.first?.transaction == Self.transaction(ofPosition: position), "\(visitor): \(rows)")
            }
            let returningRows = keys[returning.rawValue] ?? []
            #expect(returningRows.count == 1 && returningRows.first?.transaction != Self.transaction(ofPosition: positions[3]), "\(returningRows)")
            // Each opens to what was sent, read by a process that did not make the keys.
            try await TestDatabase.withClient(url: try TestDatabase.url, maximumConnections: 2) { client in
                let reader = PostgresEventStore(client: client, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
                for (text, result) in zip(texts, results) {
                    let stored = try #require(try await reader.readStream(try result.get().stream, tenant: tenant).first)
                    #expect(try stored.decode(VisitorMessageReceived.self).text == text && !stored.isErased)
                }
            }
        }
    }

    /// Ingest reads its visitors' keys ahead (beside its other reads): a visitor found without one gets one
    /// made at the append without asking PostgreSQL again, stored with the events; a returning visitor's key
    /// read ahead is the one used.
    /// On a channel of its own: an erasure heard (another test's) makes a process keep nothing read before it.
    @Test func aVisitorFoundWithoutAKeyGetsOneAtTheAppendWithoutAnotherRead() async throws {
        let channel = "convo_events_\(UUID().uuidString.prefix(8).lowercased())"
        try await TestDatabase.withStore(configuration: .init(notificationChannel: channel)) { store in
            let tenant = TestDatabase.uniqueTenant()
            let (newcomer, returning) = (Self.visitor(), Self.visitor())
            try await TestDatabase.withClient(url: try TestDatabase.url, maximumConnections: 2) { client in
                // The returning visitor's key made by another process: not in this one's memory.
                let other = PostgresEventStore(client: client, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
                try await other.append(
                    [try Self.message("earlier", visitor: returning)], to: TestDatabase.uniqueStream("messages"), tenant: tenant, expectedVersion: .noStream)
            }
            // Once listening: the LISTEN starting drops the keys in memory (erasures may have been missed).
            #expect(try await eventually(timeout: .seconds(30)) { store.isListening })
            let reads = store.vault.keyReads.load(ordering: .relaxed)
            await store.vault.readKeys(store.vault.keysToRead(for: [(tenant, newcomer), (tenant, returning)]))
            #expect(store.vault.keyReads.load(ordering: .relaxed) == reads + 1)
            let results = try await store.appendMany(
                try [newcomer, returning].map {
                    AppendRequest([try Self.message("words of \($0.rawValue)", visitor: $0)], to: TestDatabase.uniqueStream("messages"), tenant: tenant, expectedVersion: .noStream)
                })
            #expect(store.vault.keyReads.load(ordering: .relaxed) == reads + 1)
            let keys = try await Self.keyRows(store.client, tenant: tenant, [newcomer, returning])
            #expect(keys[newcomer.rawValue]?.map(\.generation) == [1] && keys[returning.rawValue]?.count == 1, "\(keys)")
            try await TestDatabase.withClient(url: try TestDatabase.url, maximumConnections: 2) { client in
                let reader = PostgresEventStore(client: client, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
                for (visitor, result) in zip([newcomer, returning], results) {
                    let stored = try #require(try await reader.readStream(try result.get().stream, tenant: tenant).first)
                    #expect(try stored.decode(VisitorMessageReceived.self).text == "words of \(visitor.rawValue)" && !stored.isErased)
                }
            }
        }
    }

    /// A visitor found without a key who gets one from another process before this one's append: the append's
    /// statement refuses the key it made, and the message is stored sealed with the other's, which opens.
    /// On a channel of its own, so that the finding is kept (as in the test above).
    @Test(arguments: BatchShape.allCases) func aKeyStoredElsewhereAfterTheVisitorWasFoundWithoutOneIsTheOneUsed(shape: BatchShape) async throws {
        let channel = "convo_events_\(UUID().uuidString.prefix(8).lowercased())"
        try await TestDatabase.withStore(configuration: .init(notificationChannel: channel)) { store in
            let tenant = TestDatabase.uniqueTenant()
            let visitor = Self.visitor()
            #expect(try await eventually(timeout: .seconds(30)) { store.isListening })
            await store.vault.readKeys(store.vault.keysToRead(for: [(tenant, visitor)]))
            try await TestDatabase.withClient(url: try TestDatabase.url, maximumConnections: 2) { client in
                let other = PostgresEventStore(client: client, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
                try await other.append(
                    [try Self.message("elsewhere", visitor: visitor)], to: TestDatabase.uniqueStream("messages"), tenant: tenant, expectedVersion: .noStream)
                let texts = (0..<shape.eventsPerAppend).map { "here \($0)" }
                let results = try await store.appendMany(
                    try shape.requests([try texts.map { try Self.message($0, visitor: visitor) }], tenant: tenant, visitor: visitor))
                let keys = try await Self.keyRows(store.client, tenant: tenant, [visitor])
                #expect(keys[visitor.rawValue]?.map(\.generation) == [1], "\(keys)")
                let reader = PostgresEventStore(client: client, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
                let stored = try await reader.readStream(try results[0].get().stream, tenant: tenant)
                #expect(try stored.map { try $0.decode(VisitorMessageReceived.self).text } == texts + (shape == .streamTwice ? ["again"] : []))
                #expect(stored.allSatisfy { !$0.isErased })
            }
        }
    }

    /// A new visitor whose append is refused while it is sealed (a payload that is not an object) gets no key
    /// row: only the batch's other new visitor, whose message is stored, does.
    @Test(arguments: BatchShape.allCases) func aKeyIsStoredOnlyForAVisitorWhoseAppendIsStored(shape: BatchShape) async throws {
        let eventsPerAppend = shape.eventsPerAppend
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let (refused, stored) = (Self.visitor(), Self.visitor())
            let notAnObject = NewEvent(
                type: VisitorMessageReceived.eventType, data: ByteBuffer(string: "[\"not an object\"]"), metadata: EventMetadata(actorId: refused.actorID),
                subject: PersonalDataSubject(visitor: refused, mayCreateKey: true))
            let requests = [
                AppendRequest(
                    try (0..<eventsPerAppend).map { $0 == 0 ? notAnObject : try Self.message("more", visitor: refused) }, to: TestDatabase.uniqueStream("messages"),
                    tenant: tenant, expectedVersion: .noStream),
            ] + (try shape.requests([try (0..<eventsPerAppend).map { _ in try Self.message("kept", visitor: stored) }], tenant: tenant, visitor: stored))
            let results = try await store.appendMany(requests)
            #expect(throws: EventStoreError.self) { try results[0].get() }
            #expect(try results[1].get().events.count == eventsPerAppend)
            let keys = try await Self.keyRows(store.client, tenant: tenant, [refused, stored])
            #expect(keys[refused.rawValue] == nil, "\(keys)")
            #expect(keys[stored.rawValue]?.map(\.generation) == [1], "\(keys)")
        }
    }

    /// Another writer stores a key for a batch's new visitor while the batch is being written (its insert waits
    /// for that writer's transaction): the batch writes no event sealed with its own key, which lost, and its
    /// appends are stored sealed with the winner's; the batch's other new visitor keeps one key too. In every
    /// shape of batch.
    /// On a cluster of its own: the held transaction would withhold every other test's events meanwhile.
    /// Both shapes on one cluster, one after the other (a cluster each, in parallel, loaded the suite's start).
    @Test(.timeLimit(.minutes(2))) func aKeyAnotherWriterStoresFirstIsTheOneTheBatchIsStoredWith() async throws {
        let server = try await PostgresServer()
        for shape in BatchShape.allCases { try await TestDatabase.withStore(url: try DatabaseURL(server.url)) { store in
            let eventsPerAppend = shape.eventsPerAppend
            let tenant = TestDatabase.uniqueTenant()
            let (contested, free) = (Self.visitor(), Self.visitor())
            let winner = SymmetricKey(size: .bits256)
            let (masterKeyId, wrapped) = try store.vault.wrap(
                winner, PersonalDataVault.GenerationKey(tenant: tenant.rawValue, subject: contested.rawValue, generation: 1))
            let texts = ["contested words", "free words"]
            let events = try zip(texts, [contested, free]).map { text, visitor in
                try (0..<eventsPerAppend).map { try Self.message($0 == 0 ? text : "more", visitor: visitor) }
            }
            try await TestDatabase.withClient(url: try DatabaseURL(server.url), maximumConnections: 2) { other in
                try await other.withConnection { connection in
                    try await connection.query("BEGIN", logger: TestDatabase.logger)
                    try await connection.query(
                        """
                        INSERT INTO personal_data_keys (tenant_id, subject, generation, master_key_id, wrapped)
                        VALUES (\(tenant.rawValue), \(contested.rawValue), 1, \(masterKeyId), \(wrapped))
                        """, logger: TestDatabase.logger)
                    async let appended = store.appendMany(try shape.requests(events, tenant: tenant, visitor: contested))
                    // The batch's statement waits for this transaction's key.
                    let waiting = try await eventually(timeout: .seconds(20)) {
                        let rows = try await store.client.query(
                            """
                            SELECT count(*)::int FROM pg_stat_activity
                            WHERE wait_event_type = 'Lock' AND (query LIKE 'WITH input AS%' OR query LIKE 'WITH RECURSIVE appends AS%' OR query LIKE '%convo_append_many_keyed%')
                            """, logger: TestDatabase.logger)
                        for try await count in rows.decode(Int.self) { return count > 0 }
                        return false
                    }
                    let activity = try await store.client.query(
                        "SELECT coalesce(wait_event_type, '') || ' ' || coalesce(wait_event, '') || ' ' || state || ' ' || left(query, 80) FROM pg_stat_activity WHERE backend_type = 'client backend'",
                        logger: TestDatabase.logger
                    ).collect().map { try $0.decode(String.self) }
                    #expect(waiting, "\(activity)")
                    try await connection.query("COMMIT", logger: TestDatabase.logger)
                    let results = try await appended
                    let keys = try await Self.keyRows(store.client, tenant: tenant, [contested, free])
                    #expect(keys[contested.rawValue]?.map(\.generation) == [1] && keys[free.rawValue]?.map(\.generation) == [1], "\(keys)")
                    let reader = PostgresEventStore(client: other, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
                    for (text, result) in zip(texts, results) {
                        let stored = try #require(try await reader.readStream(try result.get().stream, tenant: tenant).first)
                        #expect(try stored.decode(VisitorMessageReceived.self).text == text && !stored.isErased)
                    }
                    // The one key stored for the contested visitor is the winner's.
                    let row = try await store.client.query(
                        "SELECT master_key_id, wrapped FROM personal_data_keys WHERE tenant_id = \(tenant.rawValue) AND subject = \(contested.rawValue)",
                        logger: TestDatabase.logger
                    ).collect().first.map { try $0.decode((String, ByteBuffer).self) }
                    let id = PersonalDataVault.GenerationKey(tenant: tenant.rawValue, subject: contested.rawValue, generation: 1)
                    #expect(try row.map { try store.vault.unwrap($0.1, masterKeyId: $0.0, id) } == winner)
                }
            }
        } }
        try await server.stop()
    }

    /// PostgreSQL crashes (a backend killed with SIGKILL in a batch: the server ends every session and
    /// recovers) while writers append batches of new and returning visitors' messages, each retrying a failed
    /// batch as it was (a client's retry, the same ids). Afterwards every stored message opens, read by a
    /// process that never held the keys, every acknowledged one is stored with its text, and the chains
    /// verify: no event is stored sealed with a key that was not, and no key is kept in memory before its
    /// batch committed.
    @Test(.timeLimit(.minutes(3))) func messagesOfNewVisitorsWrittenThroughAPostgresCrashAllOpen() async throws {
        let server = try await PostgresServer()
        let url = try DatabaseURL(server.url)
        // A commit is acknowledged once its WAL is written (this cluster runs without synchronous commit).
        try await TestDatabase.withClient(url: url, maximumConnections: 1) { try await $0.query("ALTER DATABASE convo SET synchronous_commit = on") }
        final class Writers: Sendable {
            struct Log {
                var visitors: [VisitorUID] = []
                var acknowledged: [UUID: String] = [:]
                var batches = 0
                var sent = 0
                var failures = 0
                var refusals: [String] = []
            }
            let log = Mutex(Log())
            let stopping = Atomic<Bool>(false)
        }
        try await TestDatabase.withStore(url: url) { store in
            let tenant = TestDatabase.uniqueTenant()
            let writers = Writers()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<6 {
                    group.addTask {
                        while !writers.stopping.load(ordering: .relaxed) {
                            let newcomers = (0..<4).map { _ in Self.visitor() }
                            let returning: [VisitorUID] = writers.log.withLock { log in
                                defer { log.visitors += newcomers }
                                return log.visitors.isEmpty ? [] : (0..<4).map { _ in log.visitors.randomElement()! }
                            }
                            let visitors = newcomers + returning
                            // A third of the writers start each new visitor's stream with two events, as a new
                            // conversation starts, a third write one event per append (both by the batch
                            // statement), and a third also append to the first new visitor's stream again
                            // (`convo_append_many_keyed`).
                            let shape = BatchShape.allCases[writer % 3]
                            var texts = try visitors.enumerated().map { place, visitor in
                                (0..<(place < newcomers.count ? shape.eventsPerAppend : 1)).map { "words \($0) of \(visitor.rawValue) \(UUID().uuidString)" }
                            }
                            var events = try zip(texts, visitors).map { texts, visitor in try texts.map { try Self.message($0, visitor: visitor) } }
                            var requests = events.map { AppendRequest($0, to: TestDatabase.uniqueStream("messages"), tenant: tenant, expectedVersion: .noStream) }
                            if shape == .streamTwice {
                                let again = "again of \(newcomers[0].rawValue) \(UUID().uuidString)"
                                texts.append([again])
                                events.append([try Self.message(again, visitor: newcomers[0])])
                                requests.append(AppendRequest(events[events.count - 1], to: requests[0].stream, tenant: tenant, expectedVersion: .any))
                            }
                            while true {
                                do {
                                    let results = try await store.appendMany(requests)
                                    writers.log.withLock { log in
                                        for (events, (texts, result)) in zip(events, zip(texts, results)) {
                                            switch result {
                                            case .success: for (event, text) in zip(events, texts) { log.acknowledged[event.eventId] = text }
                                            case .failure(let error): log.refusals.append("\(error)")
                                            }
                                        }
                                        log.batches += 1
                                        log.sent += events.joined().count
                                    }
                                    break
                                } catch {
                                    writers.log.withLock { $0.failures += 1 }
                                    // PostgreSQL is recovering: the same batch again, paced.
                                    try await Task.sleep(for: .milliseconds(20))
                                }
                            }
                        }
                    }
                }
                defer { writers.stopping.store(true, ordering: .relaxed) }
                #expect(try await eventually(timeout: .seconds(60)) { writers.log.withLock { $0.batches } >= 30 })
                // A backend in the middle of a batch, killed: PostgreSQL ends every session and recovers. Again
                // (up to five crashes) until a writer's call fails: a statement can end between the choice of its
                // backend and the signal, and a call between statements waits for the pool's new connection.
                var kills: [Int32] = []
                var hit = false
                while !hit && kills.count < 5 {
                    var victim: Int32?
                    _ = try await eventually(timeout: .seconds(20)) {
                        let rows = try await store.client.query(
                            """
                            SELECT pid FROM pg_stat_activity
                            WHERE datname = 'convo' AND state = 'active' AND (query LIKE 'WITH input AS%' OR query LIKE 'WITH RECURSIVE appends AS%' OR query LIKE '%convo_append_many%')
                              AND pid <> pg_backend_pid() LIMIT 1
                            """, logger: TestDatabase.logger)
                        for try await pid in rows.decode(Int32.self) { victim = pid }
                        return victim != nil
                    }
                    let pid = try #require(victim)
                    #expect(kill(pid, SIGKILL) == 0)
                    kills.append(pid)
                    hit = try await eventually(timeout: .seconds(5)) { writers.log.withLock { $0.failures } > 0 }
                }
                let serverLog = (try? String(contentsOf: server.directory.appendingPathComponent("server.log"), encoding: .utf8)) ?? ""
                #expect(hit, "killed \(kills): \(serverLog.suffix(3000))")
                let crashed = writers.log.withLock { $0.batches }
                #expect(try await eventually(timeout: .seconds(60)) { writers.log.withLock { $0.batches } >= crashed + 30 })
                writers.stopping.store(true, ordering: .relaxed)
                try await group.waitForAll()
            }
            let (acknowledged, sent, refusals) = writers.log.withLock { ($0.acknowledged, $0.sent, $0.refusals) }
            #expect(refusals.isEmpty && acknowledged.count == sent, "\(acknowledged.count) acknowledged of \(sent): \(refusals.prefix(3))")

            try await TestDatabase.withClient(url: url, maximumConnections: 2) { client in
                let reader = PostgresEventStore(client: client, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
                var stored: [UUID: String] = [:]
                var position: Int64 = 0
                while true {
                    let page = try await reader.readAll(.tenant(tenant), after: position, maxCount: 1000)
                    guard let last = page.last else { break }
                    for event in page {
                        #expect(!event.isErased)
                        stored[event.eventId] = try event.decode(VisitorMessageReceived.self).text
                    }
                    position = last.globalPosition
                }
                let missing = acknowledged.filter { stored[$0.key] != $0.value }
                #expect(missing.isEmpty, "\(missing.count) of \(acknowledged.count) acknowledged messages not stored as sent")
                #expect(stored.count >= acknowledged.count)
                let chains = try await reader.verifyChains(tenant: tenant)
                #expect(chains.issues.isEmpty && chains.events == stored.count, "\(chains.issues.prefix(3))")
            }
        }
        try await server.stop()
    }

    /// Members other than the type's own are sealed with the long record, which names them; both forms open
    /// and both are erased by the visitor's forgetting.
    @Test func sealedMembersOtherThanTheTypesOwnAreNamedInTheLongRecord() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let visitor = Self.visitor()
            let stream = try StreamName(category: "messages", id: "pd-\(UUID().uuidString.prefix(8).lowercased())")
            var custom = NewEvent(
                type: "ProfileCaptured", data: ByteBuffer(string: #"{"text": "Ada Lovelace", "phone": "+44 20 7946 0000", "source": "form"}"#),
                subject: PersonalDataSubject(visitor: visitor, mayCreateKey: true))
            custom.personalFields = ["phone", "text"]
            try await store.append([try Self.message("hello there", visitor: visitor), custom], to: stream, tenant: tenant, expectedVersion: .noStream)
            let stored = try await store.client.query(
                "SELECT metadata::text, data::text FROM events WHERE event_id = \(custom.eventId)", logger: TestDatabase.logger
            ).collect().map { try $0.decode((String, String).self) }
            let (metadata, data) = try #require(stored.first)
            #expect(metadata.contains(#""personalData": {"key": 1, "fields": ["text", "phone"], "subject": "\#(visitor.rawValue)"}"#), "\(metadata)")
            #expect(!metadata.contains(#""pd""#) && !data.contains("Ada") && !data.contains("7946") && data.contains(#""source": "form""#), "\(data)")
            let read = try await store.readStream(stream, tenant: tenant)
            #expect(read.map { String(buffer: $0.data).contains("pd1:") } == [false, false])
            #expect(String(buffer: read[1].data).contains("Ada Lovelace") && String(buffer: read[1].data).contains("+44 20 7946 0000"))
            #expect(try read[0].decode(VisitorMessageReceived.self).text == "hello there")
            _ = try await store.vault.destroyKeys(tenant: tenant, subject: visitor)
            let erased = try await store.readStream(stream, tenant: tenant)
            #expect(erased.map(\.isErased) == [true, true])
            #expect(try erased[0].decode(VisitorMessageReceived.self).text == PersonalData.erasedPlaceholder)
            let after = String(buffer: erased[1].data)
            #expect(!after.contains("Ada") && !after.contains("7946") && after.contains(#""source": "form""#), "\(after)")
        }
    }

    @Test func aScanOpensOnlyTheEventTypesAskedForAndLeavesTheOthersSealedWithoutTheirKeys() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let tenant = TestDatabase.uniqueTenant()
                let (kept, forgotten) = (Self.visitor(), Self.visitor())
                var last: Int64 = 0
                for visitor in [kept, forgotten] {
                    let subject = PersonalDataSubject(visitor: visitor, mayCreateKey: true)
                    let stream = try StreamName(category: "messages", id: "pd-\(visitor.rawValue)")
                    last = try await store.append(
                        [
                            try Self.message("said by \(visitor.rawValue)", visitor: visitor),
                            try NewEvent(
                                type: WorkflowVariableSet.eventType,
                                encoding: WorkflowVariableSet(name: "email", value: .string("\(visitor.rawValue)@example.com"), nodeId: "ask"), subject: subject),
                        ], to: stream, tenant: tenant, expectedVersion: .noStream
                    ).lastPosition
                }
                _ = try await store.vault.destroyKeys(tenant: tenant, subject: forgotten)
                // A scan reads only what no open transaction of the cluster can still precede.
                #expect(try await eventually { try await store.headPosition() >= last })
                func scanned(_ store: PostgresEventStore, _ opening: PersonalDataOpening) async throws -> [String: (text: String, value: String, erased: [Bool])] {
                    var found: [String: (text: String, value: String, erased: [Bool])] = [:]
                    try await store.scanAll(after: 0, batchSize: 1, opening: opening) { batch in
                        for event in batch where event.tenant == tenant {
                            let visitor = try PersonalDataVault.sealInfo(of: event.metadataJSON, type: event.type)?.subject ?? "?"
                            var entry = found[visitor] ?? ("", "", [])
                            if event.type == VisitorMessageReceived.eventType {
                                entry.text = try event.decode(VisitorMessageReceived.self).text
                            } else {
                                entry.value = try event.decode(WorkflowVariableSet.self).value.stringValue ?? "?"
                            }
                            entry.erased.append(event.isErased)
                            found[visitor] = entry
                        }
                    }
                    return found
                }
                let erased = PersonalData.erasedPlaceholder
                // A member not opened is passed on as stored: its envelope, no plaintext in it.
                func sealed(_ member: String?) -> Bool {
                    guard let member, member.hasPrefix("pd1:") else { return false }
                    return Data(base64Encoded: String(member.dropFirst(4))).map { $0.count >= 28 } ?? false
                }
                let all = try await scanned(store, .all)
                #expect(all[kept.rawValue]?.text == "said by \(kept.rawValue)" && all[kept.rawValue]?.value == "\(kept.rawValue)@example.com")
                #expect(all[forgotten.rawValue]?.text == erased && all[forgotten.rawValue]?.value == erased && all[forgotten.rawValue]?.erased == [true, true])
                // Only the variables: the texts are not decrypted, and stay sealed whether or not their key lives.
                let variables = try await scanned(store, .only([WorkflowVariableSet.eventType]))
                #expect(sealed(variables[kept.rawValue]?.text) && variables[kept.rawValue]?.value == "\(kept.rawValue)@example.com")
                #expect(sealed(variables[forgotten.rawValue]?.text) && variables[forgotten.rawValue]?.value == erased)
                #expect(variables[forgotten.rawValue]?.erased == [false, true])
                // Nothing opened needs no key: a store without the master key scans it all, and fails to open any.
                let keyless = PostgresEventStore(client: store.client, keyring: nil, logger: TestDatabase.logger)
                let none = try await scanned(keyless, .only([]))
                #expect(none.values.allSatisfy { sealed($0.text) && sealed($0.value) } && none.count == 2)
                // What was not opened is exactly what is stored.
                #expect(none[kept.rawValue]?.text == variables[kept.rawValue]?.text && none[forgotten.rawValue]?.text == variables[forgotten.rawValue]?.text)
                await #expect(throws: EventStoreError.self) { _ = try await scanned(keyless, .only([VisitorMessageReceived.eventType])) }
            }
        }
    }

    @Test func personalDataWithoutASubjectIsRefusedAndNothingIsWritten() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let stream = try StreamName(category: "messages", id: "pd-\(UUID().uuidString.prefix(8).lowercased())")
            var event = try Self.message("hello", visitor: Self.visitor())
            event.personalDataSubject = nil
            await #expect(throws: EventStoreError.self) { try await store.append([event], to: stream, tenant: tenant, expectedVersion: .any) }
            #expect(try await store.streamVersion(stream, tenant: tenant) == 0)
            let outcome = try await store.appendMany([AppendRequest([event], to: stream, tenant: tenant, expectedVersion: .any)])
            guard case .failure(let error) = outcome.first else { Issue.record("a batch append stored it"); return }
            #expect(error.code == .invalidArgument)
        }
    }

    @Test func destroyingTheKeyErasesEveryReadKeepsTheChainAndFencesDerivedWrites() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let visitor = Self.visitor()
            let other = Self.visitor()
            let stream = try StreamName(category: "messages", id: "pd-\(UUID().uuidString.prefix(8).lowercased())")
            let otherStream = try StreamName(category: "messages", id: "pd-\(UUID().uuidString.prefix(8).lowercased())")
            // Through the batch path too, several visitors at once.
            let results = try await store.appendMany([
                AppendRequest([try Self.message("first secret", visitor: visitor)], to: stream, tenant: tenant, expectedVersion: .noStream),
                AppendRequest([try Self.message("other's words", visitor: other)], to: otherStream, tenant: tenant, expectedVersion: .noStream),
            ])
            #expect(results.allSatisfy { if case .success = $0 { true } else { false } })
            try await store.append([try Self.message("second secret", visitor: visitor)], to: stream, tenant: tenant, expectedVersion: .exact(1))
            let before = try await store.verifyChains(tenant: tenant)
            #expect(before.issues.isEmpty && before.events == 3)

            #expect(try await store.vault.destroyKeys(tenant: tenant, subject: visitor) == [1])
            #expect(try await store.vault.destroyKeys(tenant: tenant, subject: visitor) == [])
            let erased = try await store.readStream(stream, tenant: tenant)
            #expect(erased.count == 2 && erased.allSatisfy(\.isErased))
            #expect(try erased.map { try $0.decode(VisitorMessageReceived.self).text } == [PersonalData.erasedPlaceholder, PersonalData.erasedPlaceholder])
            let untouched = try #require(try await store.readStream(otherStream, tenant: tenant).first)
            #expect(try untouched.decode(VisitorMessageReceived.self).text == "other's words" && !untouched.isErased)
            let after = try await store.verifyChains(tenant: tenant)
            #expect(after.issues.isEmpty && after.events == 3)

            // What the responder derived from the erased words has no key to be sealed with.
            await #expect(throws: EventStoreError.self) {
                try await store.append([try Self.message("derived", visitor: visitor, mayCreateKey: false)], to: stream, tenant: tenant, expectedVersion: .exact(2))
            }
            #expect(try await store.streamVersion(stream, tenant: tenant) == 2)
            // The visitor's new words get a new key; the old ones stay erased.
            try await store.append([try Self.message("back again", visitor: visitor)], to: stream, tenant: tenant, expectedVersion: .exact(2))
            let now = try await store.readStream(stream, tenant: tenant)
            #expect(try now.map { try $0.decode(VisitorMessageReceived.self).text } == [PersonalData.erasedPlaceholder, PersonalData.erasedPlaceholder, "back again"])
            #expect(try await store.vault.generations(tenant: tenant, subject: visitor).map(\.live) == [false, true])
        }
    }

    @Test func aSealedMemberBoundToAnotherEventDoesNotOpen() throws {
        let key = SymmetricKeyBox.random()
        var event = try Self.message("bound", visitor: VisitorUID(rawValue: "v-1")!)
        try PersonalDataVault.seal(&event, tenant: TenantID(rawValue: "t1")!, generation: 1, key: key)
        let info = PersonalDataVault.SealInfo.Personal(subject: "v-1", key: 1, fields: ["text"])
        func recorded(_ id: UUID) -> RecordedEvent {
            RecordedEvent(
                globalPosition: 1, eventId: id, tenant: TenantID(rawValue: "t1")!, stream: StreamName(unchecked: "messages-c"), streamVersion: 1,
                type: event.type, data: event.data, metadataJSON: ByteBuffer(string: "{}"), recordedAt: Date())
        }
        let opened = try PersonalDataVault.open(recorded(event.eventId), info: info, key: .live(key))
        #expect(try opened.decode(VisitorMessageReceived.self).text == "bound")
        #expect(throws: EventStoreError.self) { try PersonalDataVault.open(recorded(UUID()), info: info, key: .live(key)) }
        #expect(throws: EventStoreError.self) { try PersonalDataVault.open(recorded(event.eventId), info: info, key: .live(SymmetricKeyBox.random())) }
        let erased = try PersonalDataVault.open(recorded(event.eventId), info: info, key: .erased)
        #expect(try erased.isErased && erased.decode(VisitorMessageReceived.self).text == PersonalData.erasedPlaceholder)
    }

    @Test func anErasureReachesAnotherProcessesCacheAtOnce() async throws {
        try await TestDatabase.withStore { writer in
            // A second store with its own pool and LISTEN, whose cache would keep keys for an hour.
            try await TestDatabase.withClient(url: try TestDatabase.url, maximumConnections: 3) { client in
                let reader = PostgresEventStore(
                    client: client, keyring: TestDatabase.keyring, vaultConfiguration: .init(cacheLifetime: .seconds(3600)), logger: TestDatabase.logger)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await reader.run() }
                    defer { group.cancelAll() }
                    #expect(try await eventually { reader.isListening })
                    let tenant = TestDatabase.uniqueTenant()
                    let visitor = Self.visitor()
                    let stream = try StreamName(category: "messages", id: "pd-\(UUID().uuidString.prefix(8).lowercased())")
                    try await writer.append([try Self.message("cached words", visitor: visitor)], to: stream, tenant: tenant, expectedVersion: .noStream)
                    #expect(try await reader.readStream(stream, tenant: tenant).first?.decode(VisitorMessageReceived.self).text == "cached words")
                    _ = try await writer.vault.destroyKeys(tenant: tenant, subject: visitor)
                    #expect(try await eventually(timeout: .seconds(5)) { try await reader.readStream(stream, tenant: tenant).first?.isErased == true })
                }
            }
        }
    }

    /// (It hung once in a full run, not reproduced in 24 runs alone nor in 120 runs three at a time: a watch
    /// says in which step it is if it ever takes 90 s. It only says so: a clean CI run took 94 s through
    /// every step, each slow on a crowded machine, and the time limit is what fails a hang.)
    @Test(.timeLimit(.minutes(3))) func rotatingTheMasterKeyUnderLoadLosesNothing() async throws {
        let step = Step("creating the database")
        let watch = Task {
            try await Task.sleep(for: .seconds(90))
            print("rotatingTheMasterKeyUnderLoadLosesNothing: still \(step.name.withLock { $0 }) after 90 s; before: \(step.report)")
        }
        defer { watch.cancel() }
        try await TestDatabase.withFreshDatabase { url in
            step.enter("migrating")
            let old = try MasterKeyring(parsing: MasterKeyring.generateKey())
            let newKey = MasterKeyring.generateKey()
            let both = try MasterKeyring(parsing: newKey + "\n" + Self.encoded(old))
            let onlyNew = try MasterKeyring(parsing: newKey)
            try await TestDatabase.withClient(url: url, maximumConnections: 6) { client in
                try await Migrator(client: client, logger: TestDatabase.logger).migrate()
                step.enter("writing with the old key")
                let tenant = TestDatabase.uniqueTenant()
                let before = PostgresEventStore(client: client, keyring: old, logger: TestDatabase.logger)
                var written: [String: String] = [:]
                for index in 0..<120 {
                    let stream = try StreamName(category: "messages", id: "rot-\(index)")
                    let text = "old \(index) \(UUID().uuidString)"
                    try await before.append([try Self.message(text, visitor: VisitorUID(rawValue: "v\(index)")!)], to: stream, tenant: tenant, expectedVersion: .noStream)
                    written[stream.description] = text
                }
                // Servers given both keys keep writing (old visitors and new ones) while the keys are rewrapped.
                let during = PostgresEventStore(client: client, keyring: both, logger: TestDatabase.logger)
                let load = Written()
                step.enter("rewrapping under load")
                let rewrapped = try await withThrowingTaskGroup(of: Int.self) { group in
                    for writer in 0..<4 {
                        group.addTask {
                            for round in 0..<40 {
                                let index = (writer * 40 + round) % 200
                                let stream = try StreamName(category: "messages", id: "rot-load-\(writer)-\(round)")
                                let text = "during \(writer)/\(round) \(UUID().uuidString)"
                                try await during.append(
                                    [try Self.message(text, visitor: VisitorUID(rawValue: "v\(index)")!)], to: stream, tenant: tenant, expectedVersion: .noStream)
                                load.texts.withLock { $0[stream.description] = text }
                            }
                            return 0
                        }
                    }
                    group.addTask { try await during.vault.rewrapAll(batchSize: 7) }
                    return try await group.reduce(0, +)
                }
                #expect(rewrapped >= 120)
                step.enter("reading with the new key alone")
                written.merge(load.texts.withLock { $0 }) { $1 }
                let counts = try await during.vault.keysByMasterKey()
                #expect(counts.keys.sorted() == [onlyNew.current.id], "\(counts)")
                // The old key is gone: everything still reads, with only the new one.
                let after = PostgresEventStore(client: client, keyring: onlyNew, logger: TestDatabase.logger)
                for (stream, text) in written {
                    let read = try await after.readStream(StreamName(unchecked: stream), tenant: tenant)
                    #expect(try read.map { try $0.decode(VisitorMessageReceived.self).text } == [text])
                }
                #expect(written.count == 120 + 160)
                step.enter("closing the client")
            }
        }
        step.enter("done")
        // In the suite's log, for a slow run to say where its time went (one took 124 s of its 120 in a full
        // run, where it takes 5-7 s alone).
        print("rotatingTheMasterKeyUnderLoadLosesNothing: \(step.report)")
    }

    static func encoded(_ keyring: MasterKeyring) -> String {
        keyring.current.key.withUnsafeBytes { Data($0).base64EncodedString() }
    }
}

final class Written: Sendable {
    let texts = Mutex<[String: String]>([:])
}

/// The step a long test is in, for a watch to report, and how long each step took.
final class Step: Sendable {
    let name: Mutex<String>
    private let timeline = Mutex<(since: ContinuousClock.Instant, taken: [String])>((.now, []))

    init(_ name: String) { self.name = Mutex(name) }

    /// Moves on to `next`, noting how long the step before took.
    func enter(_ next: String) {
        let previous = name.withLock { name in
            defer { name = next }
            return name
        }
        timeline.withLock { timeline in
            let now = ContinuousClock.now
            timeline.taken.append("\(previous) \(((now - timeline.since) / .milliseconds(1)).rounded()) ms")
            timeline.since = now
        }
    }

    /// Each step so far and how long it took.
    var report: String { timeline.withLock { $0.taken.joined(separator: ", ") } }
}

/// Random data keys for the I/O-free tests.
enum SymmetricKeyBox {
    static func random() -> SymmetricKey { SymmetricKey(size: .bits256) }
}

@Suite struct Base64Tests {
    @Test func encodingAndDecodingAgreeWithFoundationAtEveryLength() throws {
        for length in 0..<70 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255) }
            var buffer = ByteBuffer()
            Base64.encode(bytes, into: &buffer)
            #expect(String(buffer: buffer) == Data(bytes).base64EncodedString())
            // Sealing hands it the `Data` of a sealed box, after what the buffer already holds.
            var after = ByteBuffer(string: "pd1:")
            Base64.encode(Data(bytes), into: &after)
            #expect(String(buffer: after) == "pd1:" + Data(bytes).base64EncodedString())
            var decoded: [UInt8] = [9, 9]
            #expect(buffer.withUnsafeReadableBytes { Base64.decode($0, into: &decoded) })
            #expect(decoded == bytes)
        }
        for bad in ["abc", "ab=c", "a===", "ab!d", "====", "YQ=a", "Y===", "YWJj====", "YW=j"] {
            var decoded: [UInt8] = []
            #expect(!Array(bad.utf8).withUnsafeBytes { Base64.decode($0, into: &decoded) }, "\(bad)")
        }
    }
}

/// The kept-context AES-GCM that seals and opens personal members, against swift-crypto's.
@Suite struct GCMCipherTests {
    static func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255) } }

    @Test func itOpensWhatSwiftCryptoSealsAndSwiftCryptoOpensWhatItSeals() throws {
        let key = SymmetricKey(size: .bits256)
        let sealer = try #require(GCMCipher.make(key: key, sealing: true))
        let opener = try #require(GCMCipher.make(key: key, sealing: false))
        var box: [UInt8] = []
        // One cipher of each kind for every message, lengths from empty to several blocks, as a batch uses them.
        for length in [0, 1, 15, 16, 17, 100, 1000] {
            let plaintext = Self.bytes(length)
            let associated = Self.bytes(40)
            let theirs = try #require(try AES.GCM.seal(plaintext, using: key, authenticating: associated).combined)
            var out = ByteBuffer(string: "before:")
            #expect(theirs.withUnsafeBytes { t in associated.withUnsafeBytes { opener.open(t, authenticating: $0, into: &out) } })
            #expect(out.readableBytesView.elementsEqual(Array("before:".utf8) + plaintext))

            #expect(plaintext.withUnsafeBytes { p in associated.withUnsafeBytes { sealer.seal(p, authenticating: $0, into: &box) } })
            #expect(box.count == GCMCipher.nonceSize + length + GCMCipher.tagSize)
            #expect(try AES.GCM.open(AES.GCM.SealedBox(combined: box), using: key, authenticating: associated) == Data(plaintext))
        }
    }

    @Test func anAlteredBoxAnotherBindingOrAnotherKeyDoesNotOpenAndWritesNothing() throws {
        let key = SymmetricKey(size: .bits256)
        let sealer = try #require(GCMCipher.make(key: key, sealing: true))
        let opener = try #require(GCMCipher.make(key: key, sealing: false))
        let stranger = try #require(GCMCipher.make(key: SymmetricKey(size: .bits256), sealing: false))
        let plaintext = Array("a visitor's words".utf8)
        let associated = Array("tenant\0visitor\0text".utf8)
        var box: [UInt8] = []
        #expect(plaintext.withUnsafeBytes { p in associated.withUnsafeBytes { sealer.seal(p, authenticating: $0, into: &box) } })
        func opens(_ box: [UInt8], _ associated: [UInt8], with cipher: GCMCipher = opener) -> (Bool, Int) {
            var out = ByteBuffer()
            let opened = box.withUnsafeBytes { b in associated.withUnsafeBytes { cipher.open(b, authenticating: $0, into: &out) } }
            return (opened, out.readableBytes)
        }
        #expect(opens(box, associated) == (true, plaintext.count))
        // Every byte of the box matters: nonce, ciphertext and tag.
        for index in box.indices {
            var altered = box
            altered[index] ^= 0x01
            #expect(opens(altered, associated) == (false, 0), "byte \(index)")
        }
        #expect(opens(box, associated + [0]) == (false, 0))
        #expect(opens(box, Array(associated.dropLast())) == (false, 0))
        #expect(opens(box, associated, with: stranger) == (false, 0))
        #expect(opens(Array(box.prefix(GCMCipher.nonceSize + GCMCipher.tagSize - 1)), associated) == (false, 0))
        // A sealing cipher does not open and an opening one does not seal; the opener still works after failures.
        #expect(opens(box, associated, with: sealer) == (false, 0))
        var unused: [UInt8] = [1, 2]
        #expect(!plaintext.withUnsafeBytes { p in associated.withUnsafeBytes { opener.seal(p, authenticating: $0, into: &unused) } })
        #expect(opens(box, associated) == (true, plaintext.count))
    }

    @Test func sealingTwiceGivesTwoNonces() throws {
        let sealer = try #require(GCMCipher.make(key: SymmetricKey(size: .bits256), sealing: true))
        var nonces = Set<[UInt8]>()
        var box: [UInt8] = []
        for _ in 0..<1000 {
            #expect(Array("same".utf8).withUnsafeBytes { sealer.seal($0, authenticating: UnsafeRawBufferPointer(start: nil, count: 0), into: &box) })
            nonces.insert(Array(box.prefix(GCMCipher.nonceSize)))
        }
        #expect(nonces.count == 1000)
        #expect(GCMCipher.make(key: SymmetricKey(size: .bits128), sealing: true) == nil)
    }
}

/// The members of a JSON object found in its bytes, against Foundation's parser.
@Suite struct JSONMembersTests {
    @Test func membersAgreeWithFoundationAndMalformedObjectsAreRefused() throws {
        let objects = [
            #"{}"#, #"{ }"#, #"{"a":1}"#, #"{ "text" : "x\"y\\" , "n": -1.5e3, "o": {"k": ["]", "}", "\\\""]}, "t": true, "z": null }"#,
            #"{"text":"pd1:QUJD","e":"","u":"é \u00e9 \/","arr":[1,[2,{"x":"}"}]]}"#, "{\n\t\"a\" :\r [ ] }",
        ]
        for object in objects {
            let expected = try #require(try JSONSerialization.jsonObject(with: Data(object.utf8)) as? NSDictionary)
            let found = try Array(object.utf8).withUnsafeBytes { bytes in
                try JSONMembers.members(of: bytes).map { member in
                    (String(decoding: bytes[member.key], as: UTF8.self), Data(bytes[member.value]), JSONMembers.matches(bytes, member.key, "text"))
                }
            }
            #expect(found.count == expected.count, "\(object)")
            for (key, value, isText) in found {
                let parsed = try JSONSerialization.jsonObject(with: value, options: .fragmentsAllowed) as? NSObject
                #expect(parsed == expected[key] as? NSObject, "\(object): \(key)")
                #expect(isText == (key == "text"))
            }
        }
        for bad in [#"{"#, #"{"a":"b}"#, #"{"a":"b\"}"#, #"{"a" 1}"#, #"{"a":1,}"#, #"[1]"#, #"{"a":[1}"#, #""#] {
            #expect(throws: JSONMembers.Malformed.self, "\(bad)") { _ = try Array(bad.utf8).withUnsafeBytes { try JSONMembers.members(of: $0) } }
        }
    }
}

@Suite struct SealInfoTests {
    func info(_ json: String, type: String = VisitorMessageReceived.eventType) throws -> PersonalDataVault.SealInfo.Personal? {
        try PersonalDataVault.sealInfo(of: ByteBuffer(string: json), type: type)
    }

    @Test func theMetadataSaysWhoseAnEventIsHoweverItIsWritten() throws {
        let plain = try #require(try info(#"{"actorId": "visitor:v-1", "personalData": {"key": 2, "fields": ["text", "value"], "subject": "v-1"}}"#))
        #expect(plain.subject == "v-1" && plain.key == 2 && plain.fields == ["text", "value"])
        let compact = try #require(try info(#"{"personalData":{"subject":"v-2","key":1,"fields":["text"]},"actorId":"a"}"#))
        #expect(compact.subject == "v-2" && compact.key == 1 && compact.fields == ["text"])
        // The key's name inside a string comes first: the decoder, not the fast path, answers.
        let tricky = try #require(try info(#"{"actorId": "x \"personalData\": {", "personalData": {"key": 3, "fields": ["text"], "subject": "v\u002d3"}}"#))
        #expect(tricky.subject == "v-3" && tricky.key == 3)
        #expect(try info(#"{"actorId": "visitor:v-1"}"#) == nil)
    }

    @Test func theShortFormTakesItsFieldsFromTheType() throws {
        let message = try #require(try info(#"{"actorId": "visitor:v-1", "pd": "2 v-1:x.y_z"}"#))
        #expect(message == .init(subject: "v-1:x.y_z", key: 2, fields: ["text"]))
        let variable = try #require(try info(#"{"pd":"12 v-9","actorId":"a"}"#, type: WorkflowVariableSet.eventType))
        #expect(variable == .init(subject: "v-9", key: 12, fields: ["value"]))
        // Not a key where it was first found: the decoder reads the real one.
        let tricky = try #require(try info(#"{"actorId": "x \"pd\": \"9 v-0\"", "pd": "3 v\u002d3"}"#))
        #expect(tricky == .init(subject: "v-3", key: 3, fields: ["text"]))
        let asValue = try #require(try info(#"{"via": "pd", "pd": "4 v-4"}"#))
        #expect(asValue == .init(subject: "v-4", key: 4, fields: ["text"]))
        // A short record that says nothing usable is an error, never an event read as unsealed.
        for bad in [#""1""#, #""x v-1""#, #""1 ""#, #""1 v 2""#, #"" 1 v""#, "7"] {
            #expect(throws: EventStoreError.self, "\(bad)") { _ = try info(#"{"pd": "# + bad + "}") }
        }
        // A type with no personal fields cannot have been sealed in the short form.
        #expect(throws: EventStoreError.self) { _ = try info(#"{"pd": "1 v-1"}"#, type: "WorkflowTransitioned") }
    }
}
