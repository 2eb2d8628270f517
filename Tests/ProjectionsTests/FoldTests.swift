import EventStore
import Foundation
import NIOCore
import Projections
import SharedTypes
import Testing

/// One stored event, as the store would hand it out.
func stored(
    _ payload: some DomainEvent, stream: String, version: Int64, position: Int64, tenant: TenantID = .default, metadata: EventMetadata = EventMetadata(),
    at seconds: Double = 0
) throws -> RecordedEvent {
    let encoder = JSONEncoder()
    encoder.dateEncodingStrategy = .iso8601
    return RecordedEvent(
        globalPosition: position, eventId: UUID(), tenant: tenant, stream: StreamName(unchecked: stream), streamVersion: version,
        type: type(of: payload).eventType, data: ByteBuffer(data: try encoder.encode(payload)), metadataJSON: ByteBuffer(data: try encoder.encode(metadata)),
        recordedAt: Date(timeIntervalSince1970: 1_800_000_000 + seconds))
}

/// A conversation's events in the order the responder writes them, with ascending positions.
struct EventScript {
    var conversation = "c1"
    var visitor = "v1"
    var events: [RecordedEvent] = []
    var messagesVersion: Int64 = 0
    var workflowVersion: Int64 = 0

    mutating func message(_ payload: some DomainEvent) throws {
        messagesVersion += 1
        events.append(try stored(payload, stream: "messages-\(conversation)", version: messagesVersion, position: Int64(events.count + 1), at: Double(events.count)))
    }

    mutating func workflow(_ event: WorkflowEvent) throws {
        workflowVersion += 1
        let metadata = EventMetadata(actorId: SystemActor.actorID, extra: ["visitorUid": .string(visitor)])
        events.append(
            try stored(event.payload, stream: "workflow-\(conversation)", version: workflowVersion, position: Int64(events.count + 1), metadata: metadata, at: Double(events.count)))
    }

    mutating func tool(_ name: ToolName, _ arguments: JSONValue, outcome: ToolCalled.Outcome = .succeeded) throws {
        try workflow(.toolCalled(ToolCalled(tool: name.rawValue, arguments: arguments, outcome: outcome, actorId: SystemActor.actorID, nodeId: "n")))
    }
}

@Suite struct FoldTests {
    let conversations = ConversationsProjection()
    let visitors = VisitorsProjection()
    let key = ConversationKey(tenantId: "default", conversationId: "c1")

    /// Every event type of both streams, through both projections.
    func fullScript() throws -> EventScript {
        var script = EventScript()
        let visitor = VisitorUID(rawValue: "v1")!
        try script.message(ConversationStarted(visitorUid: visitor, startedAt: Date()))
        try script.message(VisitorMessageReceived(messageId: "m1", visitorUid: visitor, text: "hi", sentAt: Date()))
        try script.workflow(.started(WorkflowStarted(workflowId: "support", workflowVersion: 1, startNodeId: "greet")))
        try script.workflow(.assistantMessageSent(AssistantMessageSent(text: "Hello", nodeId: "greet", inReplyTo: ["m1"], provider: "workflow")))
        try script.workflow(.transitioned(WorkflowTransitioned(from: "greet", to: "ask", causedByMessageId: "m1")))
        try script.workflow(.variableSet(WorkflowVariableSet(name: "q", value: "hi", nodeId: "ask")))
        try script.tool(.addTag, ["tag": "sales"])
        try script.tool(.addTag, ["tag": "billing"])
        try script.tool(.addTag, ["tag": "sales"])
        try script.tool(.addVisitorNote, ["note": "wants a refund"])
        try script.tool(.updateVisitorProfile, ["name": "Ada", "email": "ada@example.com"])
        try script.tool(.updateVisitorProfile, ["phone": "+44 20"])
        try script.tool(.addTag, ["tag": "Nope!"], outcome: .rejected)
        try script.tool(.setConversationStatus, ["status": "resolved"])
        try script.workflow(.aiReplyFailed(AIReplyFailed(nodeId: "ask", provider: "stub", reason: "timeout")))
        try script.workflow(.waitingForInput(WorkflowWaitingForInput(nodeId: "ask")))
        try script.workflow(.messagesProcessed(MessagesProcessed(upToVersion: 2)))
        try script.message(VisitorMessageReceived(messageId: "m2", visitorUid: visitor, text: "still there?", sentAt: Date()))
        return script
    }

    @Test func conversationsFoldEveryEventType() throws {
        var script = try fullScript()
        var row = try #require(conversations.fold(script.events)[key])
        #expect(row.visitorUid == "v1")
        #expect(row.tags == ["billing", "sales"])
        #expect(row.noteCount == 1)
        #expect(row.visitorMessages == 2 && row.assistantMessages == 1)
        // Resolved by the tool, then reopened by the visitor writing again.
        #expect(row.status == "open")
        #expect(row.messagesVersion == 3 && row.messagesConsumed == 2 && row.unprocessedCount == 1)
        #expect(row.startedAt == Date(timeIntervalSince1970: 1_800_000_000))
        #expect(row.lastActivityAt == Date(timeIntervalSince1970: 1_800_000_000 + Double(script.events.count - 1)))

        try script.workflow(.messagesProcessed(MessagesProcessed(upToVersion: 3)))
        try script.tool(.requestHandoff, ["reason": "angry"])
        try script.workflow(.handedOff(ConversationHandedOff(nodeId: "h", team: "billing", reason: "angry")))
        row = try #require(conversations.fold(script.events)[key])
        #expect(row.unprocessedCount == 0)
        #expect(row.status == "pending" && row.handedOffTo == "billing")

        // The workflow's own ends change nothing here (workflow_state has them); they still count as activity.
        try script.workflow(.completed(WorkflowCompleted(nodeId: "end")))
        try script.workflow(.failed(WorkflowFailed(nodeId: nil, reason: "boom")))
        let ended = try #require(conversations.fold(script.events)[key])
        #expect(ended.status == row.status && ended.tags == row.tags && ended.lastActivityAt! > row.lastActivityAt!)
    }

    @Test func visitorsFoldProfilesAndCounts() throws {
        let script = try fullScript()
        let rows = try visitors.fold(script.events)
        let row = try #require(rows[VisitorKey(tenantId: "default", visitorUid: "v1")])
        #expect(rows.count == 1)
        #expect(row.name == "Ada" && row.email == "ada@example.com" && row.phone == "+44 20")
        #expect(row.conversations == 1 && row.messages == 2)
        #expect(row.firstSeenAt == Date(timeIntervalSince1970: 1_800_000_000))
        #expect(row.profileUpdatedAt != nil)
    }

    @Test func workflowStateProjectionIgnoresMessagesAndFoldsItsStream() throws {
        let script = try fullScript()
        let rows = try WorkflowStateProjection().fold(script.events)
        let state = try #require(rows[key]).state
        #expect(state.status == .waitingForInput && state.currentNode == "ask" && state.messagesConsumed == 2)
        #expect(state.version == script.workflowVersion)
        #expect(state == (try WorkflowState.fold(script.events.filter { $0.stream.category == "workflow" })))
    }

    @Test func anEventAppliedTwiceOrSkippedStopsTheFold() throws {
        let script = try fullScript()
        var twice = script.events
        twice.insert(script.events[3], at: 4)
        #expect(throws: FoldError.self) { try WorkflowStateProjection().fold(twice) }
        #expect(throws: FoldError.self) { try ConversationsProjection().fold(twice.filter { $0.stream.category == "messages" } + [script.events[1]]) }
        var skipped = script.events
        skipped.remove(at: 4)
        #expect(throws: FoldError.self) { try WorkflowStateProjection().fold(skipped) }
    }

    @Test func unknownTypesAndUnattributableProfilesStopTheFold() throws {
        var bad = EventScript()
        try bad.workflow(.started(WorkflowStarted(workflowId: "w", workflowVersion: 1, startNodeId: "a")))
        let unknown = try stored(
            ConversationStarted(visitorUid: VisitorUID(rawValue: "v")!, startedAt: Date()), stream: "workflow-c1", version: 2, position: 9)
        let error = try #require(throws: FoldError.self) { try ConversationsProjection().fold(bad.events + [unknown]) }
        #expect(error.position == 9 && error.eventType == "ConversationStarted")

        let anonymous = try stored(
            ToolCalled(tool: "update_visitor_profile", arguments: ["name": "X"], outcome: .succeeded, actorId: "a", nodeId: "n"), stream: "workflow-c1",
            version: 2, position: 10)
        #expect(throws: FoldError.self) { try VisitorsProjection().fold([anonymous]) }
    }

    @Test func foldsArePure() throws {
        let events = try fullScript().events
        #expect(try conversations.fold(events) == conversations.fold(events))
        #expect(try visitors.fold(events) == visitors.fold(events))
    }
}
