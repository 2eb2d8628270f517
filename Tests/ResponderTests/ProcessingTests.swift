import ConvoTestSupport
import EventStore
import Foundation
import Logging
import Projections
import Responder
import SharedTypes
import Testing

/// A store, Redis and a tenant of its own with the echo workflow published as its default.
struct Harness: Sendable {
    let store: PostgresEventStore
    let redis: RedisClient
    let workflows: WorkflowRepository
    let tenant: TenantID

    static let echoJSON = """
        {"id": "echo", "start": "wait", "nodes": [
          {"id": "wait", "type": "wait_for_input", "saveAs": "last", "next": "say"},
          {"id": "say", "type": "message", "text": "You said {{last}}", "next": "wait"}
        ]}
        """
    static let aiJSON = """
        {"id": "ai", "start": "wait", "nodes": [
          {"id": "wait", "type": "wait_for_input", "next": "answer"},
          {"id": "answer", "type": "ai_reply", "fallback": "Noted.", "next": "wait"}
        ]}
        """

    static func run(url: DatabaseURL? = nil, _ body: @Sendable (Harness) async throws -> Void) async throws {
        try await TestDatabase.withStore(url: url) { store in
            let harness = Harness(
                store: store, redis: RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL, connections: 8)),
                workflows: WorkflowRepository(client: store.client, logger: TestDatabase.logger), tenant: TestDatabase.uniqueTenant())
            _ = try await harness.workflows.publish(Array(echoJSON.utf8), tenant: harness.tenant, publishedBy: "test")
            _ = try await harness.workflows.publish(Array(aiJSON.utf8), tenant: harness.tenant, publishedBy: "test")
            try await body(harness)
        }
    }

    func processor(
        workflow: String = "echo", ttl: Duration = .seconds(10), renewEvery: Duration?? = nil, provider: any AIProvider = RuleProvider(),
        instance: String = "test"
    ) -> ConversationProcessor {
        ConversationProcessor(
            store: store, redis: redis, workflows: workflows, provider: provider,
            configuration: .init(lockTTL: ttl, renewEvery: renewEvery, defaultWorkflowID: workflow, instance: instance), logger: TestDatabase.logger)
    }

    var ingestor: MessageIngestor { MessageIngestor(store: store, logger: TestDatabase.logger) }

    func message(_ conversation: ConversationID, _ visitor: VisitorUID, id: String, text: String) -> IncomingMessage {
        IncomingMessage(tenant: tenant, conversationId: conversation, visitorUid: visitor, messageId: id, text: text, sentAt: Date())
    }

    func all(_ stream: StreamName) async throws -> [RecordedEvent] {
        try await store.readStreamToEnd(stream, tenant: tenant)
    }

    func conflicts() async throws -> [ProcessingConflictDetected] {
        try await all(ConversationProcessor.auditStream(tenant)).map { try $0.decode(ProcessingConflictDetected.self) }
    }
}

func newConversation() -> ConversationID { ConversationID(rawValue: "c-\(UUID().uuidString.prefix(12))")! }
func newVisitor() -> VisitorUID { VisitorUID(rawValue: "v-\(UUID().uuidString.prefix(12))")! }

/// An AI double: answers like the rule provider after a delay (the outside AI service is the only thing
/// the tests replace).
struct SlowProvider: AIProvider {
    let name = "slow"
    let delay: Duration
    /// Set when the first request arrives.
    let called = Counter()
    /// Set by the test to let the answers go before `delay` is up.
    let released = Counter()
    func reply(to request: AIRequest) async throws -> AIAnswer {
        called.add(1)
        // Answers when the test releases it, or after `delay`: the test, not the machine's speed, orders the racers.
        let deadline = ContinuousClock.now + delay
        while released.value == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        var answer = try await RuleProvider().reply(to: request)
        answer.provider = name
        return answer
    }
}

@Suite struct IngestTests {
    @Test func ingestIsIdempotentByMessageIdAndStartsTheConversationOnce() async throws {
        try await Harness.run { harness in
            let conversation = newConversation()
            let visitor = newVisitor()
            let first = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m1", text: "hello"))
            #expect(first.startedConversation && !first.isDuplicate && first.streamVersion == 2)
            let retry = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m1", text: "hello"))
            #expect(retry.isDuplicate && retry.eventId == first.eventId && retry.globalPosition == first.globalPosition)
            let second = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m2", text: "again"))
            #expect(second.streamVersion == 3 && !second.startedConversation)
            #expect(try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m1", text: "hello")).isDuplicate)
            // The same id for another text is not a retry: refused, nothing written.
            let reused = await #expect(throws: ResponderError.self) {
                try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m2", text: "something else"))
            }
            #expect(reused?.code == .messageIdReused)
            let events = try await harness.all(conversation.messagesStream)
            #expect(events.map(\.type) == ["ConversationStarted", "VisitorMessageReceived", "VisitorMessageReceived"])
            #expect(try events[0].decode(ConversationStarted.self).visitorUid == visitor)
        }
    }

    @Test func concurrentFirstMessagesStartTheConversationOnce() async throws {
        try await Harness.run { harness in
            let conversation = newConversation()
            let visitor = newVisitor()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<20 {
                    group.addTask { _ = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m\(index % 10)", text: "hi \(index % 10)")) }
                }
                try await group.waitForAll()
            }
            let events = try await harness.all(conversation.messagesStream)
            #expect(events.filter { $0.type == "ConversationStarted" }.count == 1)
            #expect(events[0].type == "ConversationStarted")
            #expect(Set(try events.dropFirst().map { try $0.decode(VisitorMessageReceived.self).messageId }).count == 10)
            #expect(events.count == 11)
        }
    }

    @Test func aMessageForAnotherVisitorsConversationIsRefusedAndNothingIsWritten() async throws {
        try await Harness.run { harness in
            let conversation = newConversation()
            _ = try await harness.ingestor.ingest(harness.message(conversation, newVisitor(), id: "m1", text: "mine"))
            let error = await #expect(throws: ResponderError.self) {
                try await harness.ingestor.ingest(harness.message(conversation, newVisitor(), id: "m2", text: "also mine?"))
            }
            #expect(error?.code == .conversationOwnedByAnotherVisitor)
            #expect(try await harness.all(conversation.messagesStream).count == 2)
        }
    }

    @Test func invalidMessagesAreRefused() async throws {
        try await Harness.run { harness in
            let cases: [(String, String, ResponderError.Code)] = [
                ("", "hi", .invalidMessage), ("m1", "   ", .invalidMessage),
                ("m1", String(repeating: "x", count: IncomingMessage.maxTextLength + 1), .messageTooLong),
            ]
            for (id, text, code) in cases {
                let error = await #expect(throws: ResponderError.self) {
                    try await harness.ingestor.ingest(harness.message(newConversation(), newVisitor(), id: id, text: text))
                }
                #expect(error?.code == code)
            }
        }
    }
}

@Suite struct ProcessingTests {
    /// The ids of the messages the echo workflow consumed, in the order it consumed them.
    func consumed(_ harness: Harness, _ conversation: ConversationID) async throws -> [String] {
        try await harness.all(conversation.workflowStream).compactMap { event -> String? in
            guard event.type == WorkflowTransitioned.eventType else { return nil }
            let transition = try event.decode(WorkflowTransitioned.self)
            return transition.from == "wait" ? transition.causedByMessageId : nil
        }
    }

    func sent(_ harness: Harness, _ conversation: ConversationID) async throws -> [String] {
        try await harness.all(conversation.messagesStream).compactMap { event in
            event.type == VisitorMessageReceived.eventType ? try event.decode(VisitorMessageReceived.self).messageId : nil
        }
    }

    @Test func twoHundredMessagesFromTwentyTasksAreEachProcessedOnceInOrderWithoutConflicts() async throws {
        try await Harness.run { harness in
            let conversation = newConversation()
            let visitor = newVisitor()
            let outcomes = try await withThrowingTaskGroup(of: (Int, Int).self) { group in
                for task in 0..<20 {
                    group.addTask {
                        // Each task is a worker of its own, as separate requests would be.
                        let processor = harness.processor(instance: "task-\(task)")
                        var conflicts = 0
                        var busy = 0
                        for index in 0..<10 {
                            _ = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "t\(task)-\(index)", text: "message \(task)/\(index)"))
                            let outcome = try await processor.process(tenant: harness.tenant, visitor: visitor, conversation: conversation)
                            conflicts += outcome.conflicts
                            if outcome.busy { busy += 1 }
                        }
                        return (conflicts, busy)
                    }
                }
                return try await group.reduce(into: [(Int, Int)]()) { $0.append($1) }
            }
            let sent = try await sent(harness, conversation)
            #expect(sent.count == 200)
            #expect(Set(sent).count == 200)
            // Every message consumed exactly once, in the order the stream holds them: nothing dropped.
            #expect(try await consumed(harness, conversation) == sent)
            let state = try await harness.processor().readState(tenant: harness.tenant, conversation: conversation)
            #expect(state.messagesConsumed == 201)
            #expect(state.status == .waitingForInput)
            #expect(outcomes.map(\.0).reduce(0, +) == 0)
            #expect(try await harness.conflicts().isEmpty)
            // The lock really was contended: some workers found it busy and left their message to the holder.
            #expect(outcomes.map(\.1).reduce(0, +) > 0)
            // Every workflow event names the lock token it was written under and the messages version it read.
            for event in try await harness.all(conversation.workflowStream) {
                let metadata = try event.metadata()
                #expect(metadata["lockToken"]?.stringValue?.isEmpty == false)
                #expect(metadata["messagesVersion"]?.intValue != nil)
                #expect(metadata.actorId == SystemActor.actorID)
            }
        }
    }

    @Test func aStaleHolderIsFencedOutItsConflictRecordedAndNothingLost() async throws {
        try await Harness.run { harness in
            let conversation = newConversation()
            let visitor = newVisitor()
            // A: a 300 ms lock it never renews, and an AI that answers only after B is done. B: a normal worker.
            let slowAI = SlowProvider(delay: .seconds(60))
            let stale = harness.processor(workflow: "ai", ttl: .milliseconds(300), renewEvery: .some(nil), provider: slowAI, instance: "stale")
            let healthy = harness.processor(workflow: "ai", instance: "healthy")
            _ = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m1", text: "hello"))
            async let staleOutcome = stale.process(tenant: harness.tenant, visitor: visitor, conversation: conversation)
            // Wait until A is waiting for its AI, then until its lock has expired.
            while slowAI.called.value == 0 { try await Task.sleep(for: .milliseconds(10)) }
            let redis = RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL))
            let key = VisitorLock.key(tenant: harness.tenant, visitor: visitor)
            #expect(try await eventually { try await redis.execute(["EXISTS", key]) == .integer(0) })
            let healthyOutcome = try await healthy.process(tenant: harness.tenant, visitor: visitor, conversation: conversation)
            #expect(!healthyOutcome.busy && healthyOutcome.eventsAppended > 0)
            slowAI.released.add(1)
            let outcome = try await staleOutcome
            #expect(outcome.conflicts == 1)
            #expect(outcome.eventsAppended == 0)

            let conflicts = try await harness.conflicts()
            #expect(conflicts.count == 1)
            let conflict = try #require(conflicts.first)
            #expect(conflict.stream == conversation.workflowStream.description)
            #expect(conflict.instance == "stale")
            #expect(conflict.actualVersion > conflict.expectedVersion)
            #expect(conflict.visitorUid == visitor)

            let workflow = try await harness.all(conversation.workflowStream)
            let replies = try workflow.filter { $0.type == AssistantMessageSent.eventType }.map { try $0.decode(AssistantMessageSent.self) }
            #expect(replies.map(\.inReplyTo) == [["m1"]])
            #expect(replies.first?.provider == "rules")
            #expect(try workflow.allSatisfy { try $0.metadata()["lockToken"]?.stringValue != conflict.lockToken })
            let state = try await healthy.readState(tenant: harness.tenant, conversation: conversation)
            #expect(state.messagesConsumed == 2)
            #expect(state.status == .waitingForInput)
        }
    }

    @Test func aWorkerThatLosesItsLockStopsBeforeAppending() async throws {
        try await Harness.run { harness in
            let conversation = newConversation()
            let visitor = newVisitor()
            let worker = harness.processor(workflow: "ai", ttl: .seconds(2), renewEvery: .milliseconds(100), provider: SlowProvider(delay: .seconds(4)))
            _ = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m1", text: "hello"))
            let result = Task { try await worker.process(tenant: harness.tenant, visitor: visitor, conversation: conversation) }
            // Once the worker holds the lock (it then waits on the slow AI provider)…
            let key = VisitorLock.key(tenant: harness.tenant, visitor: visitor)
            let deadline = ContinuousClock.now + .seconds(20)
            while try await harness.redis.execute(["EXISTS", key]).integer != 1, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            // Someone else takes the lock (as after an expiry): the worker's next renewal finds it gone.
            try await harness.redis.execute(["SET", VisitorLock.key(tenant: harness.tenant, visitor: visitor), "someone-else", "PX", "5000"])
            let error = await #expect(throws: ResponderError.self) { _ = try await result.value }
            #expect(error?.code == .lockLost)
            #expect(try await harness.all(conversation.workflowStream).isEmpty)
            try await harness.redis.execute(["DEL", VisitorLock.key(tenant: harness.tenant, visitor: visitor)])
            // The message is still pending, and the next worker handles it.
            let next = try await harness.processor(workflow: "ai").process(tenant: harness.tenant, visitor: visitor, conversation: conversation)
            #expect(next.eventsAppended > 0)
            #expect(try await harness.processor().readState(tenant: harness.tenant, conversation: conversation).messagesConsumed == 2)
        }
    }

    @Test func withRedisDownIngestKeepsWorkingAndProcessingFailsClearlyThenResumes() async throws {
        try await Harness.run { harness in
            let conversation = newConversation()
            let visitor = newVisitor()
            let down = ConversationProcessor(
                store: harness.store, redis: RedisClient(configuration: try RedisConfiguration(url: "redis://127.0.0.1:1", timeout: .milliseconds(300))),
                workflows: harness.workflows, configuration: .init(defaultWorkflowID: "echo"), logger: TestDatabase.logger)
            _ = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m1", text: "still there?"))
            let error = await #expect(throws: ResponderError.self) { try await down.process(tenant: harness.tenant, visitor: visitor, conversation: conversation) }
            #expect(error?.code == .redisUnavailable)
            #expect(try await harness.all(conversation.workflowStream).isEmpty)
            // Redis back: the message is still pending and is processed.
            try await harness.processor().process(tenant: harness.tenant, visitor: visitor, conversation: conversation)
            #expect(try await harness.processor().readState(tenant: harness.tenant, conversation: conversation).messagesConsumed == 2)
        }
    }

    @Test func aConversationKeepsItsWorkflowVersionWhenANewOneIsPublished() async throws {
        try await Harness.run { harness in
            let conversation = newConversation()
            let visitor = newVisitor()
            let processor = harness.processor()
            _ = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m1", text: "one"))
            try await processor.process(tenant: harness.tenant, visitor: visitor, conversation: conversation)
            let v2 = Harness.echoJSON.replacingOccurrences(of: "You said", with: "Version two heard")
            let published = try await harness.workflows.publish(Array(v2.utf8), tenant: harness.tenant, publishedBy: "test")
            #expect(published.isNew && published.definition.version == 2)
            #expect(try await harness.workflows.publish(Array(v2.utf8), tenant: harness.tenant, publishedBy: "test").isNew == false)

            _ = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m2", text: "two"))
            try await processor.process(tenant: harness.tenant, visitor: visitor, conversation: conversation)
            let fresh = newConversation()
            _ = try await harness.ingestor.ingest(harness.message(fresh, visitor, id: "m1", text: "three"))
            try await processor.process(tenant: harness.tenant, visitor: visitor, conversation: fresh)

            func texts(_ id: ConversationID) async throws -> [String] {
                try await harness.all(id.workflowStream).filter { $0.type == AssistantMessageSent.eventType }.map { try $0.decode(AssistantMessageSent.self).text }
            }
            #expect(try await texts(conversation) == ["You said one", "You said two"])
            #expect(try await texts(fresh) == ["Version two heard three"])
            #expect(try await processor.readState(tenant: harness.tenant, conversation: fresh).workflowVersion == 2)
        }
    }

    /// A message ingested here is announced twice, by the route and by the subscription: one run of the
    /// processor handles it, the second announcement finds it consumed. A hand-back (no message) always runs.
    @Test func aMessageAnnouncedByTheRouteAndTheSubscriptionIsProcessedInOneRun() async throws {
        try await Harness.run { harness in
            let service = ResponderService(
                processor: harness.processor(), store: harness.store, configuration: .init(sweepInterval: .seconds(600), scope: .tenant(harness.tenant)),
                logger: TestDatabase.logger)
            let processor = harness.processor()
            func consumed(_ conversation: ConversationID) async throws -> Int64 {
                try await processor.readState(tenant: harness.tenant, conversation: conversation).messagesConsumed
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await service.run() }
                defer { group.cancelAll() }
                #expect(try await eventually { service.isRunning })
                // A visitor per conversation: runs for conversations of one visitor would meet on the visitor's
                // lock, and a run that finds it held (the previous conversation's run still releasing it) ends
                // at once, leaving the conversation to the holder: a run more, from the lock, not the announcements.
                var visitors: [VisitorUID] = []
                var conversations: [ConversationID] = []
                for index in 0..<8 {
                    let conversation = newConversation()
                    let visitor = newVisitor()
                    conversations.append(conversation)
                    visitors.append(visitor)
                    for turn in 1...2 {
                        let stored = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m\(turn)", text: "turn \(index).\(turn)"))
                        service.messageIngested(tenant: harness.tenant, visitor: visitor, conversation: conversation, messageVersion: stored.streamVersion)
                        #expect(try await eventually { try await consumed(conversation) >= stored.streamVersion })
                    }
                }
                // A last message announced by the subscription alone: once it is consumed, the subscription has
                // passed every earlier message too.
                let last = newConversation()
                let stored = try await harness.ingestor.ingest(harness.message(last, newVisitor(), id: "m1", text: "last"))
                #expect(try await eventually { try await consumed(last) >= stored.streamVersion })
                #expect(try await eventually { service.scheduledCount == 0 })
                #expect(service.runs == 17, "one run per message")
                // An announcement without a message version (a hand-back) runs even when nothing is new.
                service.messageIngested(tenant: harness.tenant, visitor: visitors[0], conversation: conversations[0])
                #expect(try await eventually { service.runs == 18 && service.scheduledCount == 0 })
                for conversation in conversations { #expect(try await consumed(conversation) == 3) }
            }
        }
    }

    @Test func theResponderServiceProcessesIngestedMessagesAndSweepsUpStrandedOnes() async throws {
        // A database of its own: the sweep reads the conversations projection, whose runner follows every tenant.
        try await TestDatabase.withFreshDatabase { url in
            try await Harness.run(url: url) { harness in
                let visitor = newVisitor()
                let stranded = newConversation()
                // Ingested while no responder ran: only the sweep can find it.
                _ = try await harness.ingestor.ingest(harness.message(stranded, visitor, id: "m1", text: "anyone?"))
                let projection = ConversationsProjection()
                let runner = ProjectionRunner(projection: projection, store: harness.store, logger: TestDatabase.logger)
                let service = ResponderService(
                    processor: harness.processor(), store: harness.store, configuration: .init(sweepInterval: .seconds(60), scope: .tenant(harness.tenant)),
                    logger: TestDatabase.logger)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await runner.run() }
                    defer { group.cancelAll() }
                    // The sweep sees what the projection has stored: wait for the stranded message to be counted.
                    let deadline = ContinuousClock.now + .seconds(10)
                    var counted: [ConversationsProjection.Pending] = []
                    while counted.isEmpty && ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(20))
                        counted = try await projection.pending(.tenant(harness.tenant), client: harness.store.client, logger: TestDatabase.logger)
                    }
                    #expect(counted.map(\.conversation) == [stranded])
                    // Not running yet (as in an ingest-only server): a wake-up is dropped, not piled up.
                    for _ in 0..<100 { service.messageIngested(tenant: harness.tenant, visitor: visitor, conversation: newConversation()) }
                    #expect(service.scheduledCount == 0)

                    group.addTask { try await service.run() }
                    let live = newConversation()
                    #expect(try await eventually { service.isRunning })
                    _ = try await harness.ingestor.ingest(harness.message(live, visitor, id: "m1", text: "hi"))
                    service.messageIngested(tenant: harness.tenant, visitor: visitor, conversation: live)
                    let processor = harness.processor()
                    var done = false
                    while !done && ContinuousClock.now < deadline + .seconds(10) {
                        try await Task.sleep(for: .milliseconds(50))
                        let a = try await processor.readState(tenant: harness.tenant, conversation: stranded).messagesConsumed
                        let b = try await processor.readState(tenant: harness.tenant, conversation: live).messagesConsumed
                        done = a == 2 && b == 2
                    }
                    #expect(done, "both conversations processed by the service")
                    #expect(try await eventually { service.scheduledCount == 0 }, "nothing left queued once processed")
                    // Once the projection has the answers, nothing is pending any more.
                    var left = counted
                    while !left.isEmpty && ContinuousClock.now < deadline + .seconds(20) {
                        try await Task.sleep(for: .milliseconds(20))
                        left = try await projection.pending(.tenant(harness.tenant), client: harness.store.client, logger: TestDatabase.logger)
                    }
                    #expect(left.isEmpty)
                }
            }
        }
    }
}
