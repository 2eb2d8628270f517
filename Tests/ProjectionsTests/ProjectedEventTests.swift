import ConvoTestSupport
import EventStore
import Foundation
import NIOCore
import Projections
import SharedTypes
import Testing

@Suite struct ProjectedEventTests {
    private func garbled(_ type: String, stream: String, version: Int64, position: Int64) -> RecordedEvent {
        RecordedEvent(
            globalPosition: position, eventId: UUID(), tenant: .default, stream: StreamName(unchecked: stream), streamVersion: version, type: type,
            data: ByteBuffer(string: #"{"visitorUid": 7}"#), metadataJSON: ByteBuffer(string: "{}"), recordedAt: Date())
    }

    @Test func everyPayloadIsDecodedByItsType() throws {
        let visitor = VisitorUID(rawValue: "v1")!
        let started = ConversationStarted(visitorUid: visitor, startedAt: Date(timeIntervalSince1970: 1_800_000_000))
        let message = VisitorMessageReceived(messageId: "m1", visitorUid: visitor, text: "hi", sentAt: Date(timeIntervalSince1970: 1_800_000_001))
        let workflow: [WorkflowEvent] = [
            .started(WorkflowStarted(workflowId: "w", workflowVersion: 2, startNodeId: "a")),
            .toolCalled(ToolCalled(tool: "add_tag", arguments: ["tag": "vip", "n": 3], outcome: .succeeded, actorId: SystemActor.actorID, nodeId: "a")),
            .messagesProcessed(MessagesProcessed(upToVersion: 4)),
        ]
        #expect(ProjectedEvent(try stored(started, stream: "messages-c1", version: 1, position: 1)).payload == .conversationStarted(started))
        #expect(ProjectedEvent(try stored(message, stream: "messages-c1", version: 2, position: 2)).payload == .visitorMessage(message))
        for (index, event) in workflow.enumerated() {
            let projected = ProjectedEvent(try stored(event.payload, stream: "workflow-c1", version: Int64(index + 1), position: Int64(index + 3)))
            #expect(projected.payload == .workflow(event))
            #expect(try projected.workflowEvent() == event)
        }
        let conflict = ProcessingConflictDetected(
            conversationId: ConversationID(rawValue: "c1")!, visitorUid: visitor, stream: "workflow-c1", expectedVersion: 1, actualVersion: 2,
            lockToken: "t", instance: "h:1")
        #expect(ProjectedEvent(try stored(conflict, stream: "audit-default", version: 1, position: 9)).payload == .unread)
        // The stored event's fields read through.
        let projected = ProjectedEvent(try stored(message, stream: "messages-c7", version: 5, position: 42))
        #expect(projected.globalPosition == 42 && projected.stream.id == "c7" && projected.streamVersion == 5 && projected.type == VisitorMessageReceived.eventType)
    }

    @Test func anUndecodablePayloadStopsOnlyTheProjectionsThatReadIt() throws {
        var script = EventScript()
        let visitor = VisitorUID(rawValue: "v1")!
        try script.message(ConversationStarted(visitorUid: visitor, startedAt: Date()))
        try script.workflow(.started(WorkflowStarted(workflowId: "w", workflowVersion: 1, startNodeId: "a")))
        let bad = garbled(VisitorMessageReceived.eventType, stream: "messages-c1", version: 2, position: 77)
        let projected = ProjectedEvent(bad)
        guard case .undecodable(let reason) = projected.payload else {
            Issue.record("expected an undecodable payload, got \(projected.payload)")
            return
        }
        #expect(!reason.isEmpty)

        let events = script.events + [bad]
        // conversations and visitors read a visitor message's payload: both stop at it, with its position.
        let conversationsError = try #require(throws: FoldError.self) { try ConversationsProjection().fold(events) }
        #expect(conversationsError.position == 77 && conversationsError.eventType == VisitorMessageReceived.eventType)
        #expect(conversationsError.reason.contains("does not decode"))
        let visitorsError = try #require(throws: FoldError.self) { try VisitorsProjection().fold(events) }
        #expect(visitorsError.position == 77)
        // workflow_state never reads the messages stream: it folds on.
        let rows = try WorkflowStateProjection().fold(events)
        #expect(rows[ConversationKey(tenantId: "default", conversationId: "c1")]?.state.status == .running)

        // A garbled workflow event stops workflow_state there too.
        let garbledWorkflow = garbled(WorkflowTransitioned.eventType, stream: "workflow-c1", version: 2, position: 78)
        let workflowError = try #require(throws: FoldError.self) { try WorkflowStateProjection().fold(script.events + [garbledWorkflow]) }
        #expect(workflowError.position == 78)
    }

    @Test(arguments: [0, 1, 2, 5, 2001])
    func decodingInSlicesKeepsTheOrder(_ count: Int) async throws {
        var events: [RecordedEvent] = []
        for index in 0..<count {
            let version = Int64(index + 1)
            events.append(try stored(MessagesProcessed(upToVersion: version), stream: "workflow-c\(index % 3)", version: version, position: version))
        }
        let whole = ProjectedEvent.decode(events)
        for parts in [1, 2, 3, 8] {
            let sliced = await ProjectedEvent.decode(events, parts: parts)
            #expect(sliced.map(\.recorded) == events, "parts \(parts)")
            #expect(sliced.map(\.payload) == whole.map(\.payload), "parts \(parts)")
        }
    }
}
