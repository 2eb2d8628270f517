import ConvoTestSupport
import EventStore
import Foundation
import Responder
import SharedTypes
import Testing

@Suite struct IngestBatcherTests {
    /// Runs `body` with a batcher service running on the shared store.
    func withBatcher(_ body: @Sendable (IngestBatcher, Harness) async throws -> Void) async throws {
        try await Harness.run { harness in
            let batcher = IngestBatcher(store: harness.store, logger: TestDatabase.logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await batcher.run() }
                defer { group.cancelAll() }
                try await body(batcher, harness)
            }
        }
    }

    /// A batch that fails for a reason that is nobody's input (PostgreSQL failing) fails every message at
    /// once: trying them one by one would multiply the load on a database already in trouble. A sequence
    /// counts the attempts (its increments survive the rollback).
    @Test func aBatchPostgresFailsIsNotRetriedMessageByMessage() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await Harness.run(url: url) { harness in
                let batcher = IngestBatcher(store: harness.store, logger: TestDatabase.logger)
                try await harness.store.client.query("CREATE SEQUENCE test_attempts")
                try await harness.store.client.query(
                    """
                    CREATE FUNCTION test_failing() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN PERFORM nextval('test_attempts'); RAISE EXCEPTION 'failing' USING ERRCODE = 'XX000'; END $$
                    """)
                try await harness.store.client.query(
                    "CREATE TRIGGER test_failing BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION test_failing()")
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await batcher.run() }
                    defer { group.cancelAll() }
                    let failures = try await withThrowingTaskGroup(of: Bool.self) { sends in
                        for index in 0..<40 {
                            sends.addTask {
                                let message = harness.message(
                                    ConversationID(rawValue: "f-\(index)")!, VisitorUID(rawValue: "v-\(index)")!, id: "m", text: "hello")
                                do {
                                    _ = try await batcher.ingest(message)
                                    return false
                                } catch let error as EventStoreError {
                                    return error.code == .storageFailure
                                }
                            }
                        }
                        return try await sends.reduce(0) { $0 + ($1 ? 1 : 0) }
                    }
                    #expect(failures == 40)
                    let rows = try await harness.store.client.query("SELECT last_value FROM test_attempts")
                    var attempts: Int64 = 0
                    for try await value in rows.decode(Int64.self) { attempts = value }
                    // One failed insert per batch (each batch stops at its first row), none per message.
                    #expect(attempts == Int64(batcher.written.batches), "\(attempts) attempts, \(batcher.written)")
                }
            }
        }
    }

    @Test func concurrentMessagesShareCommitsAndEachIsStoredOnceInItsConversation() async throws {
        try await withBatcher { batcher, harness in
            let conversations = 30
            let perConversation = 12
            // Every message twice (a client's retry), all at once in random order: first messages of a
            // conversation race each other, retries race their originals.
            var sends = (0..<conversations).flatMap { c in (0..<perConversation).flatMap { m in [(c, m), (c, m)] } }
            sends.shuffle()
            let results = try await withThrowingTaskGroup(of: (Int, Int, IngestResult).self) { group in
                for (c, m) in sends {
                    group.addTask {
                        let message = harness.message(
                            ConversationID(rawValue: "b-\(harness.tenant)-\(c)")!, VisitorUID(rawValue: "v-\(c)")!, id: "m\(m)", text: "text \(m)")
                        return (c, m, try await batcher.ingest(message))
                    }
                }
                var results: [(Int, Int, IngestResult)] = []
                for try await result in group { results.append(result) }
                return results
            }
            #expect(results.count == sends.count)
            // Commits were shared: far fewer batches than messages.
            let written = batcher.written
            #expect(written.messages == sends.count && written.batches < sends.count / 2, "\(written)")
            for c in 0..<conversations {
                let stream = ConversationID(rawValue: "b-\(harness.tenant)-\(c)")!.messagesStream
                let events = try await harness.all(stream)
                #expect(events.first?.type == ConversationStarted.eventType && events.filter { $0.type == ConversationStarted.eventType }.count == 1)
                let ids = try events.dropFirst().map { try $0.decode(VisitorMessageReceived.self).messageId }
                #expect(ids.count == perConversation && Set(ids).count == perConversation, "\(c): \(ids)")
                // Both answers for a message name the same stored event: one stored, the other a duplicate.
                for m in 0..<perConversation {
                    let answers = results.filter { $0.0 == c && $0.1 == m }.map(\.2)
                    #expect(answers.count == 2 && Set(answers.map(\.globalPosition)).count == 1 && answers.filter(\.isDuplicate).count == 1)
                }
                #expect(results.filter { $0.0 == c && $0.2.startedConversation }.count == 1)
            }
        }
    }

    @Test func aBatchRefusesAnotherVisitorAndAReusedIdWithoutWritingThem() async throws {
        try await withBatcher { batcher, harness in
            let conversation = ConversationID(rawValue: "b-\(harness.tenant)-own")!
            let owner = VisitorUID(rawValue: "v-owner")!
            _ = try await batcher.ingest(harness.message(conversation, owner, id: "m1", text: "first"))
            // Three at once, so they share a batch.
            async let intruder = Result(catching: { try await batcher.ingest(harness.message(conversation, VisitorUID(rawValue: "v-other")!, id: "m2", text: "mine?")) })
            async let reused = Result(catching: { try await batcher.ingest(harness.message(conversation, owner, id: "m1", text: "another text")) })
            async let fine = Result(catching: { try await batcher.ingest(harness.message(conversation, owner, id: "m3", text: "third")) })
            let (a, b, c) = await (intruder, reused, fine)
            #expect(throws: ResponderError.self) { try a.get() }
            if case .failure(let error as ResponderError) = a { #expect(error.code == .conversationOwnedByAnotherVisitor) }
            if case .failure(let error as ResponderError) = b { #expect(error.code == .messageIdReused) } else { Issue.record("a reused id was accepted") }
            #expect(try c.get().streamVersion == 3)
            #expect(try await harness.all(conversation.messagesStream).count == 3)
        }
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
