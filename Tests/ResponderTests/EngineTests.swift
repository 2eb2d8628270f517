import Foundation
import Projections
import Responder
import SharedTypes
import Testing

/// Parses a workflow written inline; fails the test when it is invalid.
func workflow(_ json: String) throws -> WorkflowDefinition {
    var definition = try WorkflowParser.parse(Data(json.utf8))
    definition.version = 1
    return definition
}

func message(_ version: Int64, _ text: String) -> PendingMessage {
    PendingMessage(messageId: "m\(version)", text: text, streamVersion: version, eventId: UUID())
}

/// Applies a decision's events, as the processor does after appending them.
func applying(_ events: [WorkflowEvent], to state: WorkflowState) -> WorkflowState {
    var state = state
    for event in events { state.apply(event, version: state.version + 1, at: nil) }
    return state
}

func events(_ decision: Decision) -> [WorkflowEvent] {
    guard case .append(let events) = decision else {
        Issue.record("expected events, got \(decision)")
        return []
    }
    return events
}

let echo = """
    {"id": "echo", "start": "hello", "nodes": [
      {"id": "hello", "type": "message", "text": "Hi!", "next": "wait"},
      {"id": "wait", "type": "wait_for_input", "saveAs": "last", "next": "say"},
      {"id": "say", "type": "message", "text": "You said {{last}}", "next": "wait"}
    ]}
    """

@Suite struct EngineTests {
    let engine = WorkflowEngine()

    @Test func aNewConversationStartsGreetsAndWaits() throws {
        let definition = try workflow(echo)
        let result = events(engine.decide(state: WorkflowState(), definition: definition, pending: []))
        #expect(
            result == [
                .started(WorkflowStarted(workflowId: "echo", workflowVersion: 1, startNodeId: "hello")),
                .assistantMessageSent(AssistantMessageSent(text: "Hi!", nodeId: "hello", inReplyTo: [], provider: "workflow")),
                .transitioned(WorkflowTransitioned(from: "hello", to: "wait", causedByMessageId: nil)),
                .waitingForInput(WorkflowWaitingForInput(nodeId: "wait")),
            ])
        let state = applying(result, to: WorkflowState())
        #expect(state.status == .waitingForInput)
        #expect(state.currentNode == "wait")
        #expect(state.messagesConsumed == 0)
    }

    @Test func waitForInputConsumesOneMessageAtATimeInOrderAndSavesIt() throws {
        let definition = try workflow(echo)
        let pending = [message(2, "one"), message(3, "two")]
        let result = events(engine.decide(state: WorkflowState(), definition: definition, pending: pending))
        let replies = result.compactMap { if case .assistantMessageSent(let sent) = $0 { return sent } else { return nil } }
        #expect(replies.map(\.text) == ["Hi!", "You said one", "You said two"])
        #expect(replies.map(\.inReplyTo) == [[], ["m2"], ["m3"]])
        let causes = result.compactMap { if case .transitioned(let t) = $0, t.from == "wait" { return t.causedByMessageId } else { return nil } }
        #expect(causes == ["m2", "m3"])
        #expect(result.last == .messagesProcessed(MessagesProcessed(upToVersion: 3)))
        let state = applying(result, to: WorkflowState())
        #expect(state.variables["last"] == "two")
        #expect(state.messagesConsumed == 3)
        // Deciding again with the same (now consumed) messages does nothing.
        #expect(events(engine.decide(state: state, definition: definition, pending: pending)).isEmpty)
    }

    @Test func conditionBranchesOnTextVariablesAndRegexWithADefault() throws {
        let definition = try workflow(
            """
            {"id": "route", "start": "wait", "nodes": [
              {"id": "wait", "type": "wait_for_input", "saveAs": "answer", "next": "check"},
              {"id": "check", "type": "condition", "branches": [
                {"if": {"op": "contains", "value": "REFUND"}, "next": "refund"},
                {"if": {"source": "variable", "variable": "answer", "op": "equals", "value": "yes"}, "next": "yes"},
                {"if": {"op": "matches", "value": "^order #[0-9]+$"}, "next": "order"},
                {"if": {"op": "equals", "value": "Exact", "caseSensitive": true}, "next": "exact"}
              ], "default": "other"},
              {"id": "refund", "type": "end"}, {"id": "yes", "type": "end"}, {"id": "order", "type": "end"},
              {"id": "exact", "type": "end"}, {"id": "other", "type": "end"}
            ]}
            """)
        func route(_ text: String) -> String? {
            let result = events(engine.decide(state: WorkflowState(), definition: definition, pending: [message(1, text)]))
            return result.compactMap { if case .completed(let done) = $0 { return done.nodeId } else { return nil } }.first
        }
        #expect(route("I want a refund please") == "refund")
        #expect(route("YES") == "yes")
        #expect(route("order #123") == "order")
        #expect(route("order #12a") == "other")
        #expect(route("exact") == "other")
        #expect(route("Exact") == "exact")
    }

    @Test func aToolNodeRecordsTheCallAsTheSystemUserWithTemplatedArguments() throws {
        let definition = try workflow(
            """
            {"id": "tag", "start": "wait", "nodes": [
              {"id": "wait", "type": "wait_for_input", "saveAs": "topic", "next": "tag"},
              {"id": "tag", "type": "tool", "tool": "add_tag", "arguments": {"tag": "{{topic}}"}, "next": "done"},
              {"id": "done", "type": "end"}
            ]}
            """)
        let good = events(engine.decide(state: WorkflowState(), definition: definition, pending: [message(1, "billing")]))
        #expect(
            good.contains(
                .toolCalled(ToolCalled(tool: "add_tag", arguments: ["tag": "billing"], outcome: .succeeded, actorId: SystemActor.actorID, nodeId: "tag"))))
        // A templated value that breaks the schema is recorded as rejected, and the workflow goes on.
        let bad = events(engine.decide(state: WorkflowState(), definition: definition, pending: [message(1, "Not A Tag!")]))
        let call = try #require(bad.compactMap { if case .toolCalled(let c) = $0 { return c } else { return nil } }.first)
        #expect(call.outcome == .rejected)
        #expect(call.actorId == SYSTEM_USER_ID.uuidString.lowercased())
        #expect(applying(bad, to: WorkflowState()).status == .completed)
    }

    static let aiWorkflow = """
        {"id": "ai", "start": "wait", "nodes": [
          {"id": "wait", "type": "wait_for_input", "next": "answer"},
          {"id": "answer", "type": "ai_reply", "instructions": "Be brief.", "tools": ["add_tag", "request_handoff"],
           "fallback": "Tell me more.", "next": "wait"}
        ]}
        """

    @Test func anAINodeAsksOnceAndAnswersABurstInOneReply() throws {
        let definition = try workflow(Self.aiWorkflow)
        let waiting = applying(events(engine.decide(state: WorkflowState(), definition: definition, pending: [])), to: WorkflowState())
        let burst = [message(2, "hi"), message(3, "are you there?"), message(4, "hello??")]
        guard case .askAI(let request) = engine.decide(state: waiting, definition: definition, pending: burst) else {
            Issue.record("expected the engine to ask the AI")
            return
        }
        #expect(request.messages.map(\.messageId) == ["m2", "m3", "m4"])
        #expect(request.tools.map(\.name) == [.addTag, .requestHandoff])
        #expect(request.reply.instructions == "Be brief.")

        let answer = AIAnswer(text: "Yes, I'm here.", toolCalls: [ToolCall(name: "add_tag", arguments: ["tag": "greeting"])], provider: "stub", model: "m-1", latencyMs: 12)
        let result = events(engine.decide(state: waiting, definition: definition, pending: burst, aiOutcome: .answered(answer)))
        let replies = result.compactMap { if case .assistantMessageSent(let sent) = $0 { return sent } else { return nil } }
        #expect(replies == [AssistantMessageSent(text: "Yes, I'm here.", nodeId: "answer", inReplyTo: ["m2", "m3", "m4"], provider: "stub", model: "m-1", latencyMs: 12)])
        #expect(result.contains { if case .toolCalled(let call) = $0 { return call.tool == "add_tag" && call.outcome == .succeeded } else { return false } })
        let state = applying(result, to: waiting)
        #expect(state.messagesConsumed == 4)
        #expect(state.status == .waitingForInput)
    }

    @Test func theAICanOnlyCallTheNodesToolsAndAHandoffStopsIt() throws {
        let definition = try workflow(Self.aiWorkflow)
        let waiting = applying(events(engine.decide(state: WorkflowState(), definition: definition, pending: [])), to: WorkflowState())
        let answer = AIAnswer(
            text: "A colleague will take over.",
            toolCalls: [
                ToolCall(name: "set_conversation_status", arguments: ["status": "resolved"]),
                ToolCall(name: "request_handoff", arguments: ["team": "billing", "reason": "refund"]),
            ], provider: "stub")
        let result = events(engine.decide(state: waiting, definition: definition, pending: [message(2, "refund!"), message(3, "now")], aiOutcome: .answered(answer)))
        let calls = result.compactMap { if case .toolCalled(let c) = $0 { return c } else { return nil } }
        #expect(calls.map(\.outcome) == [.rejected, .succeeded])
        #expect(calls[0].error?.contains("not allowed") == true)
        #expect(result.contains(.handedOff(ConversationHandedOff(nodeId: "answer", team: "billing", reason: "refund"))))
        let state = applying(result, to: waiting)
        #expect(state.status == .handedOff)
        #expect(state.handedOffTo == "billing")
        // After the hand-off, visitor messages are consumed for the humans and never answered.
        let later = events(engine.decide(state: state, definition: definition, pending: [message(4, "hello?")]))
        #expect(later == [.messagesProcessed(MessagesProcessed(upToVersion: 4))])
    }

    @Test func aProviderFailureIsRecordedAsFailedOrFollowsOnFailure() throws {
        let plain = try workflow(Self.aiWorkflow)
        let waiting = applying(events(engine.decide(state: WorkflowState(), definition: plain, pending: [])), to: WorkflowState())
        let failed = events(engine.decide(state: waiting, definition: plain, pending: [message(2, "hi")], aiOutcome: .failed(provider: "stub", reason: "HTTP 500")))
        #expect(failed.contains(.failed(WorkflowFailed(nodeId: "answer", reason: "AI provider stub failed: HTTP 500"))))
        #expect(applying(failed, to: waiting).status == .failed)
        #expect(applying(failed, to: waiting).messagesConsumed == 2)

        let withFallback = try workflow(
            """
            {"id": "ai", "start": "wait", "nodes": [
              {"id": "wait", "type": "wait_for_input", "next": "answer"},
              {"id": "answer", "type": "ai_reply", "onFailure": "human", "next": "wait"},
              {"id": "human", "type": "handoff", "team": "support", "message": "Let me get a colleague."}
            ]}
            """)
        let start = applying(events(engine.decide(state: WorkflowState(), definition: withFallback, pending: [])), to: WorkflowState())
        let handed = events(engine.decide(state: start, definition: withFallback, pending: [message(2, "hi")], aiOutcome: .failed(provider: "stub", reason: "timeout")))
        #expect(handed.contains(.aiReplyFailed(AIReplyFailed(nodeId: "answer", provider: "stub", reason: "timeout"))))
        #expect(applying(handed, to: start).status == .handedOff)
        let replies = handed.compactMap { if case .assistantMessageSent(let sent) = $0 { return sent.text } else { return nil } }
        #expect(replies == ["Let me get a colleague."])
    }

    @Test func theStepLimitStopsARunawayDecision() throws {
        // Validation refuses loops that never wait; a long chain stands in for what it cannot foresee.
        let nodes = (0..<30).map { #"{"id": "n\#($0)", "type": "message", "text": "step \#($0)", "next": "n\#($0 + 1)"}"# }
        let definition = try workflow(#"{"id": "long", "start": "n0", "nodes": [\#(nodes.joined(separator: ",")), {"id": "n30", "type": "end"}]}"#)
        let limited = WorkflowEngine(stepLimit: 10)
        let result = events(limited.decide(state: WorkflowState(), definition: definition, pending: []))
        #expect(result.last == .failed(WorkflowFailed(nodeId: "n10", reason: "step limit of 10 nodes reached")))
        #expect(applying(events(WorkflowEngine().decide(state: WorkflowState(), definition: definition, pending: [])), to: WorkflowState()).status == .completed)
    }

    @Test func theStepLimitCountsPerMessageSoALongBurstIsFine() throws {
        let definition = try workflow(echo)
        let burst = (2...301).map { message(Int64($0), "m\($0)") }
        let result = events(WorkflowEngine(stepLimit: 10).decide(state: WorkflowState(), definition: definition, pending: burst))
        let state = applying(result, to: WorkflowState())
        #expect(state.status == .waitingForInput)
        #expect(state.messagesConsumed == 301)
    }

    @Test func aStateAtANodeTheWorkflowLacksFailsVisibly() throws {
        let definition = try workflow(echo)
        var state = WorkflowState()
        state.apply(.started(WorkflowStarted(workflowId: "echo", workflowVersion: 1, startNodeId: "gone")), version: 1, at: nil)
        let result = events(engine.decide(state: state, definition: definition, pending: [message(2, "hi")]))
        #expect(result.first == .failed(WorkflowFailed(nodeId: "gone", reason: "node 'gone' is not in workflow echo v1")))
    }

    @Test func theRuleProviderAnswersFromRulesThenFallbackElseFails() async throws {
        let definition = try workflow(
            """
            {"id": "rules", "start": "wait", "nodes": [
              {"id": "wait", "type": "wait_for_input", "next": "answer"},
              {"id": "answer", "type": "ai_reply", "tools": ["add_tag"], "rules": [
                {"keywords": ["Refund"], "reply": "Refunds take 5 days.", "calls": [{"tool": "add_tag", "arguments": {"tag": "refund"}}]}
              ], "fallback": "Tell me more.", "next": "wait"}
            ]}
            """)
        let strict = AIReply(instructions: "", rules: [AIReply.Rule(keywords: ["x"], reply: "y")])
        guard case .aiReply(let reply, _) = definition.node("answer")?.kind else {
            Issue.record("expected ai_reply nodes")
            return
        }
        let provider = RuleProvider()
        let refund = try await provider.reply(to: AIRequest(nodeId: "answer", reply: reply, tools: [], messages: [message(1, "hi"), message(2, "a REFUND?")], variables: [:]))
        #expect(refund.text == "Refunds take 5 days.")
        #expect(refund.toolCalls == [ToolCall(name: "add_tag", arguments: ["tag": "refund"])])
        let other = try await provider.reply(to: AIRequest(nodeId: "answer", reply: reply, tools: [], messages: [message(1, "hi")], variables: [:]))
        #expect(other.text == "Tell me more.")
        let error = await #expect(throws: ResponderError.self) {
            try await provider.reply(to: AIRequest(nodeId: "strict", reply: strict, tools: [], messages: [message(1, "hi")], variables: [:]))
        }
        #expect(error?.code == .aiProviderFailed)
    }
}
