import Foundation
import Projections
import SharedTypes

/// A visitor message the workflow has not consumed yet.
public struct PendingMessage: Sendable, Equatable {
    /// The caller's message id.
    public var messageId: String
    public var text: String
    /// Its version in the conversation's `messages-` stream.
    public var streamVersion: Int64
    /// Its event's id, the causation of what the responder decides about it.
    public var eventId: UUID

    public init(messageId: String, text: String, streamVersion: Int64, eventId: UUID) {
        self.messageId = messageId
        self.text = text
        self.streamVersion = streamVersion
        self.eventId = eventId
    }
}

/// What an `ai_reply` node asks of the AI provider.
public struct AIRequest: Sendable, Equatable {
    public var nodeId: String
    public var reply: AIReply
    /// The tools the AI may call here, as the catalogue defines them.
    public var tools: [ToolDefinition]
    /// The messages to answer, oldest first: a burst is answered in one reply.
    public var messages: [PendingMessage]
    public var variables: [String: JSONValue]

    public init(nodeId: String, reply: AIReply, tools: [ToolDefinition], messages: [PendingMessage], variables: [String: JSONValue]) {
        self.nodeId = nodeId
        self.reply = reply
        self.tools = tools
        self.messages = messages
        self.variables = variables
    }
}

/// The AI provider's answer.
public struct AIAnswer: Sendable, Equatable {
    public var text: String
    public var toolCalls: [ToolCall]
    public var provider: String
    public var model: String?
    public var latencyMs: Int?

    public init(text: String, toolCalls: [ToolCall] = [], provider: String, model: String? = nil, latencyMs: Int? = nil) {
        self.text = text
        self.toolCalls = toolCalls
        self.provider = provider
        self.model = model
        self.latencyMs = latencyMs
    }
}

/// How the AI call for an ``AIRequest`` ended.
public enum AIOutcome: Sendable, Equatable {
    case answered(AIAnswer)
    case failed(provider: String, reason: String)
}

/// What the engine decided.
public enum Decision: Sendable, Equatable {
    /// Append these events to the workflow stream (none: nothing to do).
    case append([WorkflowEvent])
    /// Call the AI provider, then decide again from the same state with its outcome.
    case askAI(AIRequest)
}

/// The workflow engine: a pure function from the current state, the workflow and the pending messages to
/// the events to append. Same input, same output; the AI call happens outside, between two calls of
/// ``decide(state:definition:pending:aiOutcome:)`` (the first asks, the second gets the outcome).
public struct WorkflowEngine: Sendable {
    /// The most nodes a decision may visit per visitor message it handles (the count starts again with
    /// each message taken); validation refuses loops that never wait, this guards the rest.
    public var stepLimit: Int

    public init(stepLimit: Int = 100) {
        self.stepLimit = stepLimit
    }

    /// - Parameter settings: the tenant's; whether a visitor message reopens a resolved conversation.
    public func decide(
        state: WorkflowState, definition: WorkflowDefinition, pending: [PendingMessage], aiOutcome: AIOutcome? = nil, settings: TenantSettings = .init()
    ) -> Decision {
        var run = Run(state: state, queue: pending.filter { $0.streamVersion > state.messagesConsumed }.sorted { $0.streamVersion < $1.streamVersion })
        if run.state.status.isFinal {
            // A visitor writing to a resolved conversation reopens it, for its people (not for the AI), unless
            // the tenant chose otherwise: then the message is stored and the conversation stays resolved.
            if run.state.status == .resolved, settings.reopenOnVisitorMessage, let first = run.queue.first {
                run.emit(.reopened(ConversationReopened(agentId: nil, causedByMessageId: first.messageId)))
            }
            // Messages after a hand-off, while an agent owns the conversation or after the end are for
            // people: consume them without answering.
            run.finish()
            return .append(run.events)
        }
        var nodeId: String
        if run.state.status == .notStarted {
            run.emit(.started(WorkflowStarted(workflowId: definition.id, workflowVersion: definition.version, startNodeId: definition.start)))
            nodeId = definition.start
        } else if let current = run.state.currentNode {
            nodeId = current
        } else {
            run.emit(.failed(WorkflowFailed(nodeId: nil, reason: "the workflow state has no current node")))
            run.finish()
            return .append(run.events)
        }
        var aiOutcome = aiOutcome
        var aiUsed = false
        var steps = 0
        loop: while true {
            steps += 1
            guard steps <= stepLimit else {
                run.emit(.failed(WorkflowFailed(nodeId: nodeId, reason: "step limit of \(stepLimit) nodes reached")))
                break loop
            }
            guard let node = definition.node(nodeId) else {
                run.emit(.failed(WorkflowFailed(nodeId: nodeId, reason: "node '\(nodeId)' is not in workflow \(definition.id) v\(definition.version)")))
                break loop
            }
            let next: String
            switch node.kind {
            case .message(let text, let to):
                run.emit(
                    .assistantMessageSent(
                        AssistantMessageSent(
                            text: Template.render(text, run.state.variables), nodeId: node.id, inReplyTo: run.current.map(\.messageId),
                            provider: "workflow")))
                next = to
            case .waitForInput(let saveAs, let to):
                guard !run.queue.isEmpty else {
                    if run.state.status != .waitingForInput || run.state.currentNode != node.id {
                        run.emit(.waitingForInput(WorkflowWaitingForInput(nodeId: node.id)))
                    }
                    break loop
                }
                let message = run.queue.removeFirst()
                run.consume([message])
                steps = 0
                if let saveAs {
                    run.emit(.variableSet(WorkflowVariableSet(name: saveAs, value: .string(message.text), nodeId: node.id)))
                }
                run.emit(.transitioned(WorkflowTransitioned(from: node.id, to: to, causedByMessageId: message.messageId)))
                nodeId = to
                continue loop
            case .condition(let branches, let otherwise):
                let text = run.current.map(\.text).joined(separator: "\n")
                next = branches.first { $0.condition.holds(message: text, variables: run.state.variables) }?.next ?? otherwise
            case .tool(let name, let arguments, let to):
                let rendered = JSONValue.object(arguments.mapValues { .string(Template.render($0, run.state.variables)) })
                for event in ToolExecutor.execute(ToolCall(name: name.rawValue, arguments: rendered), allowed: nil, nodeId: node.id) {
                    run.emit(event)
                }
                if run.state.status.isFinal { break loop }
                next = to
            case .aiReply(let reply, let to):
                guard let outcome = aiOutcome else {
                    // One AI answer per decision: a second AI node waits for the processor's next decision.
                    if aiUsed { break loop }
                    let messages = run.current + run.queue
                    let tools = reply.tools.map(ToolCatalogue.definition)
                    return .askAI(AIRequest(nodeId: node.id, reply: reply, tools: tools, messages: messages, variables: run.state.variables))
                }
                aiOutcome = nil
                aiUsed = true
                let answered = run.current + run.queue
                run.queue.removeAll()
                run.consume(answered)
                switch outcome {
                case .answered(let answer):
                    for call in answer.toolCalls {
                        for event in ToolExecutor.execute(call, allowed: Set(reply.tools), nodeId: node.id) { run.emit(event) }
                    }
                    run.emit(
                        .assistantMessageSent(
                            AssistantMessageSent(
                                text: answer.text, nodeId: node.id, inReplyTo: answered.map(\.messageId), provider: answer.provider,
                                model: answer.model, latencyMs: answer.latencyMs)))
                    if run.state.status.isFinal { break loop }
                    next = to
                case .failed(let provider, let reason):
                    guard let fallback = reply.onFailure else {
                        run.emit(.failed(WorkflowFailed(nodeId: node.id, reason: "AI provider \(provider) failed: \(reason)")))
                        break loop
                    }
                    run.emit(.aiReplyFailed(AIReplyFailed(nodeId: node.id, provider: provider, reason: reason)))
                    next = fallback
                }
            case .handoff(let team, let reason, let message):
                if let message {
                    run.emit(
                        .assistantMessageSent(
                            AssistantMessageSent(
                                text: Template.render(message, run.state.variables), nodeId: node.id, inReplyTo: run.current.map(\.messageId),
                                provider: "workflow")))
                }
                run.emit(.handedOff(ConversationHandedOff(nodeId: node.id, team: team, reason: reason)))
                break loop
            case .end:
                run.emit(.completed(WorkflowCompleted(nodeId: node.id)))
                break loop
            }
            run.emit(.transitioned(WorkflowTransitioned(from: node.id, to: next, causedByMessageId: run.current.last?.messageId)))
            nodeId = next
        }
        run.finish()
        return .append(run.events)
    }

    /// One decision in progress: the events so far and the state they lead to.
    private struct Run {
        var state: WorkflowState
        var queue: [PendingMessage]
        /// The messages being handled: the last one taken at a `wait_for_input`, or the burst an AI answered.
        var current: [PendingMessage] = []
        var consumedUpTo: Int64
        var events: [WorkflowEvent] = []

        init(state: WorkflowState, queue: [PendingMessage]) {
            self.state = state
            self.queue = queue
            self.consumedUpTo = state.messagesConsumed
        }

        mutating func emit(_ event: WorkflowEvent) {
            events.append(event)
            state.apply(event, version: state.version + 1, at: nil)
        }

        mutating func consume(_ messages: [PendingMessage]) {
            current = messages
            if let last = messages.last { consumedUpTo = max(consumedUpTo, last.streamVersion) }
        }

        /// Records how far the messages were consumed; a final workflow consumes everything pending.
        mutating func finish() {
            if state.status.isFinal, let last = queue.last {
                consumedUpTo = max(consumedUpTo, last.streamVersion)
                queue.removeAll()
            }
            if consumedUpTo > state.messagesConsumed {
                emit(.messagesProcessed(MessagesProcessed(upToVersion: consumedUpTo)))
            }
        }
    }
}

extension Condition {
    /// Whether the condition holds for the message text and the variables. A regular expression that does
    /// not compile never matches (publishing refuses such workflows).
    public func holds(message: String, variables: [String: JSONValue]) -> Bool {
        let subject: String
        switch source {
        case .message: subject = message
        case .variable(let name): subject = variables[name].map(Template.text) ?? ""
        }
        switch op {
        case .equals:
            return caseSensitive ? subject == value : subject.lowercased() == value.lowercased()
        case .contains:
            return caseSensitive ? subject.contains(value) : subject.lowercased().contains(value.lowercased())
        case .matches:
            // Linear in the text, compiled once (see BoundedPattern).
            return BoundedPattern.cached(value, caseSensitive: caseSensitive)?.matches(subject) ?? false
        }
    }
}

/// `{{name}}` placeholders, filled from workflow variables; an unknown name becomes empty text.
public enum Template {
    public static func render(_ template: String, _ variables: [String: JSONValue]) -> String {
        guard template.contains("{{") else { return template }
        return template.replacing(/\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}/) { match in
            variables[String(match.output.1)].map(text) ?? ""
        }
    }

    /// A variable's value as text: ``JSONValue/description``, with null as empty text.
    public static func text(_ value: JSONValue) -> String {
        value == .null ? "" : value.description
    }
}
