import ConvoTestSupport
import EventStore
import Foundation
import NIOCore
@testable import Responder
import SharedTypes
import Testing

/// Conversations whose processing always fails are retried with a growing backoff, holding no worker
/// meanwhile, then parked; normal conversations are processed beside them; a parked one is resumed.
@Suite(.timeLimit(.minutes(3))) struct ParkingTests {
    @Test func backoffGrowsToItsCap() {
        let delays = (1...8).map { ResponderService.backoff(after: $0, base: .seconds(2), cap: .seconds(60)).components.seconds }
        let expected: [Int64] = [2, 4, 8, 16, 32, 60, 60, 60]
        #expect(delays == expected)
    }

    @Test func onlyFailuresARetryCannotCureArePermanent() {
        #expect(ResponderService.isPermanent(ResponderError(code: .workflowNotFound, message: "x")))
        #expect(!ResponderService.isPermanent(ResponderError(code: .redisUnavailable, message: "x")))
        #expect(!ResponderService.isPermanent(EventStoreError(code: .unavailable, message: "x")))
        #expect(!ResponderService.isPermanent(EventStoreError(code: .outcomeUnknown, message: "x")))
        #expect(!ResponderService.isPermanent(CancellationError()))
    }

    @Test func ahundredPoisonedConversationsAreParkedWhileNormalOnesAreProcessedAndAResumedOneIsProcessed() async throws {
        try await Harness.run { harness in
            // Each poisoned conversation started a workflow version nobody published: every attempt fails.
            let poisoned = (0..<100).map { ConversationID(rawValue: "poison-\($0)")! }
            for (index, conversation) in poisoned.enumerated() {
                let started = try NewEvent(
                    type: WorkflowStarted.eventType, encoding: WorkflowStarted(workflowId: "unpublished", workflowVersion: 1, startNodeId: "wait"),
                    metadata: EventMetadata(actorId: SystemActor.actorID))
                _ = try await harness.store.append([started], to: conversation.workflowStream, tenant: harness.tenant, expectedVersion: .noStream)
                _ = try await harness.ingestor.ingest(harness.message(conversation, VisitorUID(rawValue: "pv-\(index)")!, id: "m1", text: "hello"))
            }
            // Eight workers only: if a failing conversation held one while it waited to retry, the poisoned
            // ones would take them all and nothing else would be processed.
            let service = ResponderService(
                processor: harness.processor(), store: harness.store,
                configuration: .init(
                    sweepInterval: .seconds(60), maxConcurrentVisitors: 8, retryDelay: .milliseconds(100), maxRetryDelay: .milliseconds(400),
                    maxAttempts: 3, scope: .tenant(harness.tenant)),
                logger: TestDatabase.logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await service.run() }
                defer { group.cancelAll() }
                #expect(try await eventually(timeout: .seconds(10)) { service.isRunning })
                for (index, conversation) in poisoned.enumerated() {
                    service.messageIngested(tenant: harness.tenant, visitor: VisitorUID(rawValue: "pv-\(index)")!, conversation: conversation)
                }
                // Normal traffic beside them, while they fail.
                let normal = (0..<40).map { ConversationID(rawValue: "normal-\($0)")! }
                for (index, conversation) in normal.enumerated() {
                    let visitor = VisitorUID(rawValue: "nv-\(index)")!
                    _ = try await harness.ingestor.ingest(harness.message(conversation, visitor, id: "m1", text: "where is my order"))
                    service.messageIngested(tenant: harness.tenant, visitor: visitor, conversation: conversation)
                }
                let processed = try await eventually(timeout: .seconds(60)) {
                    for conversation in normal {
                        let events = try await harness.all(conversation.workflowStream)
                        if !events.contains(where: { $0.type == MessagesProcessed.eventType }) { return false }
                    }
                    return true
                }
                #expect(processed)
                // Every poisoned conversation parked once, after 3 attempts, with its error; none answered.
                let lot = ParkingLot(store: harness.store, logger: TestDatabase.logger)
                #expect(try await eventually(timeout: .seconds(60)) { try await lot.all(tenant: harness.tenant).count == 100 })
                let parked = try await lot.all(tenant: harness.tenant)
                #expect(parked.allSatisfy { $0.attempts == 3 && $0.error.contains("unpublished") }, "\(parked.prefix(2))")
                #expect(Set(parked.map(\.conversationId)) == Set(poisoned.map(\.rawValue)))
                // The instance learns of a park once the park is stored (its own, after the write returns; another's,
                // through the subscription): it may lag the store for a moment.
                #expect(try await eventually(timeout: .seconds(10)) { service.parkedCount == 100 })
                // Parked means no more attempts: nothing is retried, nothing waits out a backoff.
                #expect(try await eventually(timeout: .seconds(5)) { service.backingOffCount == 0 && service.scheduledCount == 0 })

                // The operator publishes the missing workflow and resumes one: it is processed at once.
                let fixed = Harness.echoJSON.replacingOccurrences(of: "\"id\": \"echo\"", with: "\"id\": \"unpublished\"")
                _ = try await harness.workflows.publish(Array(fixed.utf8), tenant: harness.tenant, publishedBy: "test")
                let resumed = try await lot.resume(poisoned[7], tenant: harness.tenant)
                #expect(resumed?.conversationId == "poison-7")
                #expect(try await lot.resume(ConversationID(rawValue: "normal-1")!, tenant: harness.tenant) == nil)
                #expect(try await eventually(timeout: .seconds(30)) {
                    try await harness.all(poisoned[7].workflowStream).contains { $0.type == MessagesProcessed.eventType }
                })
                #expect(try await lot.parked(poisoned[7], tenant: harness.tenant) == nil)
                #expect(try await lot.all(tenant: harness.tenant).count == 99)
            }
        }
    }
}

/// An event keeps the sub-second part of the time its caller sent, for good.
@Suite struct SubSecondTests {
    @Test func anIngestedMessageKeepsTheMicrosecondsOfItsSentAt() async throws {
        try await Harness.run { harness in
            let sent = try #require(Timestamp.date(from: "2026-12-05T05:21:33.123456Z"))
            let conversation = ConversationID(rawValue: "precise")!
            let message = IncomingMessage(
                tenant: harness.tenant, conversationId: conversation, visitorUid: VisitorUID(rawValue: "v")!, messageId: "m", text: "hi", sentAt: sent)
            _ = try await harness.ingestor.ingest(message)
            let stored = try #require(try await harness.all(conversation.messagesStream).last)
            let text = String(buffer: stored.data)
            #expect(text.contains("2026-12-05T05:21:33.123456Z"), "\(text)")
            let decoded = try stored.decode(VisitorMessageReceived.self)
            #expect(Timestamp.string(from: decoded.sentAt) == "2026-12-05T05:21:33.123456Z")
        }
    }
}
