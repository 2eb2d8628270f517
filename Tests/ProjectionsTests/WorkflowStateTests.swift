import EventStore
import Foundation
import NIOCore
import Projections
import SharedTypes
import Testing

/// Stored events of one workflow stream, as the store would hand them out.
func recorded(_ events: [WorkflowEvent], stream: String = "workflow-c1") throws -> [RecordedEvent] {
    let encoder = JSONEncoder()
    encoder.dateEncodingStrategy = .iso8601
    return try events.enumerated().map { index, event in
        RecordedEvent(
            globalPosition: Int64(100 + index), eventId: UUID(), tenant: .default, stream: StreamName(unchecked: stream),
            streamVersion: Int64(index + 1), type: event.eventType, data: ByteBuffer(data: try encoder.encode(event)),
            metadataJSON: ByteBuffer(string: "{}"), recordedAt: Date(timeIntervalSince1970: 1_800_000_000 + Double(index)))
    }
}


@Suite struct WorkflowStateTests {
    @Test func everyWorkflowEventTypeFoldsAsDocumented() throws {
        let events: [WorkflowEvent] = [
            .started(WorkflowStarted(workflowId: "support", workflowVersion: 3, startNodeId: "greet")),
            .assistantMessageSent(AssistantMessageSent(text: "Hi", nodeId: "greet", inReplyTo: [], provider: "workflow")),
            .transitioned(WorkflowTransitioned(from: "greet", to: "wait", causedByMessageId: nil)),
            .waitingForInput(WorkflowWaitingForInput(nodeId: "wait")),
            .variableSet(WorkflowVariableSet(name: "question", value: "where is my order?", nodeId: "wait")),
            .transitioned(WorkflowTransitioned(from: "wait", to: "answer", causedByMessageId: "m1")),
            .toolCalled(ToolCalled(tool: "add_tag", arguments: ["tag": "shipping"], outcome: .succeeded, actorId: SystemActor.actorID, nodeId: "answer")),
            .aiReplyFailed(AIReplyFailed(nodeId: "answer", provider: "stub", reason: "timeout")),
            .messagesProcessed(MessagesProcessed(upToVersion: 2)),
        ]
        var state = try WorkflowState.fold(recorded(events))
        #expect(state.workflowId == "support" && state.workflowVersion == 3)
        #expect(state.currentNode == "answer")
        #expect(state.status == .running)
        #expect(state.variables == ["question": "where is my order?"])
        #expect(state.messagesConsumed == 2)
        #expect(state.version == 9)
        #expect(state.updatedAt == Date(timeIntervalSince1970: 1_800_000_008))

        // An older MessagesProcessed never moves the mark back.
        state.apply(.messagesProcessed(MessagesProcessed(upToVersion: 1)), version: 10, at: nil)
        #expect(state.messagesConsumed == 2)

        var handed = state
        handed.apply(.handedOff(ConversationHandedOff(nodeId: "human", team: "billing", reason: "refund")), version: 11, at: nil)
        #expect(handed.status == .handedOff && handed.handedOffTo == "billing" && handed.currentNode == "human")
        var done = state
        done.apply(.completed(WorkflowCompleted(nodeId: "end")), version: 11, at: nil)
        #expect(done.status == .completed && done.currentNode == "end")
        var failed = state
        failed.apply(.failed(WorkflowFailed(nodeId: nil, reason: "step limit")), version: 11, at: nil)
        #expect(failed.status == .failed && failed.failureReason == "step limit" && failed.currentNode == "answer")
        // A transition after the end does not revive the workflow.
        failed.apply(.transitioned(WorkflowTransitioned(from: "x", to: "y", causedByMessageId: nil)), version: 12, at: nil)
        #expect(failed.status == .failed)
    }

    @Test func theFoldIsPureAndRoundTripsThroughJSON() throws {
        let events = try recorded([
            .started(WorkflowStarted(workflowId: "w", workflowVersion: 1, startNodeId: "a")),
            .variableSet(WorkflowVariableSet(name: "n", value: 42, nodeId: "a")),
        ])
        let once = try WorkflowState.fold(events)
        #expect(try WorkflowState.fold(events) == once)
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        #expect(try decoder.decode(WorkflowState.self, from: encoder.encode(once)) == once)
    }

    @Test func anEventTheFoldCannotApplyStopsItWithItsPosition() throws {
        var events = try recorded([.started(WorkflowStarted(workflowId: "w", workflowVersion: 1, startNodeId: "a"))])
        let unknown = RecordedEvent(
            globalPosition: 555, eventId: UUID(), tenant: .default, stream: StreamName(unchecked: "workflow-c1"), streamVersion: 2, type: "TriggerFired",
            data: ByteBuffer(string: "{}"), metadataJSON: ByteBuffer(string: "{}"), recordedAt: Date())
        events.append(unknown)
        let error = try #require(throws: FoldError.self) { try WorkflowState.fold(events) }
        #expect(error.position == 555 && error.eventType == "TriggerFired")

        let garbled = RecordedEvent(
            globalPosition: 556, eventId: UUID(), tenant: .default, stream: StreamName(unchecked: "workflow-c1"), streamVersion: 2,
            type: WorkflowStarted.eventType, data: ByteBuffer(string: #"{"workflowId": 7}"#), metadataJSON: ByteBuffer(string: "{}"), recordedAt: Date())
        #expect(throws: FoldError.self) { try WorkflowState.fold([events[0], garbled]) }
        // A gap in stream versions is refused too: the fold never silently skips an event.
        let skipped = try recorded([.started(WorkflowStarted(workflowId: "w", workflowVersion: 1, startNodeId: "a")), .completed(WorkflowCompleted(nodeId: "a"))])
        #expect(throws: FoldError.self) { try WorkflowState.fold([skipped[1]]) }
    }
}
