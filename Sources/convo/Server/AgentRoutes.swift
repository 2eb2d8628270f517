import Crypto
import EventStore
import Foundation
import Hummingbird
import Projections
import Responder
import SharedTypes

/// What the people of a conversation do, with an `agent` key: take it over (or assign it), answer, note,
/// hand it back to the AI, resolve and reopen it.
///
/// Each action is one event appended to the conversation's `workflow-` stream at the version its checks
/// read, like the AI's decisions: an AI decision taken before a take-over meets the expected-version check
/// and is thrown away (recorded as a conflict), and an agent's action that raced another change is checked
/// again on the new state. Each is idempotent by the caller's id (`messageId`, `noteId` or `requestId`):
/// the same id again answers 200 with what the first call stored.
struct AgentRoutes: Sendable {
    let context: ServerContext

    func register(on router: some RouterMethods<ConvoRequestContext>, table: RouteTable) {
        table.add(.post, "/v1/conversations/{conversationId}/assignment", on: router, use: assign)
        table.add(.post, "/v1/conversations/{conversationId}/agent-messages", on: router, use: reply)
        table.add(.post, "/v1/conversations/{conversationId}/notes", on: router, use: note)
        table.add(.post, "/v1/conversations/{conversationId}/handback", on: router, use: handBack)
        table.add(.post, "/v1/conversations/{conversationId}/resolve", on: router, use: resolve)
        table.add(.post, "/v1/conversations/{conversationId}/reopen", on: router, use: reopen)
    }

    struct AssignmentBody: Decodable {
        var requestId: String?
        /// Another agent (supervisors only); the caller when absent.
        var agentId: String?
    }

    struct MessageBody: Decodable {
        var messageId: String?
        var text: String
    }

    struct NoteBody: Decodable {
        var noteId: String?
        var text: String
    }

    struct HandbackBody: Decodable {
        var requestId: String?
        var nodeId: String
    }

    struct RequestBody: Decodable {
        var requestId: String?
    }

    @Sendable func assign(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<AgentActionResponse> {
        let (tenant, agent) = try await caller(requestContext)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        let body = try await Self.optionalBody(request, AssignmentBody.self, context: requestContext) ?? AssignmentBody()
        return Self.edited(
            try await actions(requestContext).assign(
                conversation, tenant: tenant, by: agent, to: body.agentId, requestId: try AgentActions.callerID(body.requestId, "requestId")))
    }

    @Sendable func reply(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<AgentActionResponse> {
        let (tenant, agent) = try await caller(requestContext)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        let body = try await request.decodeJSON(MessageBody.self, context: requestContext)
        return Self.edited(
            try await actions(requestContext).reply(
                conversation, tenant: tenant, by: agent, text: body.text, messageId: try AgentActions.callerID(body.messageId, "messageId")))
    }

    @Sendable func note(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<AgentActionResponse> {
        let (tenant, agent) = try await caller(requestContext)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        let body = try await request.decodeJSON(NoteBody.self, context: requestContext)
        return Self.edited(
            try await actions(requestContext).note(conversation, tenant: tenant, by: agent, text: body.text, noteId: try AgentActions.callerID(body.noteId, "noteId")))
    }

    @Sendable func handBack(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<AgentActionResponse> {
        let (tenant, agent) = try await caller(requestContext)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        let body = try await request.decodeJSON(HandbackBody.self, context: requestContext)
        let outcome = try await actions(requestContext).handBack(
            conversation, tenant: tenant, by: agent, nodeId: body.nodeId, requestId: try AgentActions.callerID(body.requestId, "requestId"))
        // The AI goes on from the node at once (the sweep would find it too, later).
        if outcome.created, let visitor = try await actions(requestContext).visitor(of: conversation, tenant: tenant) {
            context.responder.messageIngested(tenant: tenant, visitor: visitor, conversation: conversation)
        }
        return Self.edited(outcome)
    }

    @Sendable func resolve(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<AgentActionResponse> {
        let (tenant, agent) = try await caller(requestContext)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        let body = try await Self.optionalBody(request, RequestBody.self, context: requestContext) ?? RequestBody()
        return Self.edited(
            try await actions(requestContext).resolve(conversation, tenant: tenant, by: agent, requestId: try AgentActions.callerID(body.requestId, "requestId")))
    }

    @Sendable func reopen(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<AgentActionResponse> {
        let (tenant, agent) = try await caller(requestContext)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        let body = try await Self.optionalBody(request, RequestBody.self, context: requestContext) ?? RequestBody()
        return Self.edited(
            try await actions(requestContext).reopen(conversation, tenant: tenant, by: agent, requestId: try AgentActions.callerID(body.requestId, "requestId")))
    }

    private func actions(_ requestContext: ConvoRequestContext) -> AgentActions {
        AgentActions(
            store: context.store, workflows: context.workflows, agents: AgentStore(client: context.client, logger: requestContext.logger),
            via: "apikey:\(requestContext.key?.id ?? "?")")
    }

    private static func edited(_ outcome: AgentActions.Outcome) -> EditedResponse<AgentActionResponse> {
        EditedResponse(status: outcome.created ? .created : .ok, response: outcome.response)
    }

    /// The caller's tenant and the person their key belongs to.
    private func caller(_ requestContext: ConvoRequestContext) async throws -> (TenantID, Agent) {
        let tenant = try requestContext.tenant(for: .agent)
        guard let userId = requestContext.key?.userId, let agent = try await actions(requestContext).agents.agent(userId, tenant: tenant), agent.disabledAt == nil
        else { throw APIError(.forbidden, "agent_disabled", "this key's agent is disabled or gone") }
        return (tenant, agent)
    }

    /// A body that may be left out (an empty body is `{}`).
    private static func optionalBody<T: Decodable>(_ request: Request, _ type: T.Type, context: ConvoRequestContext) async throws -> T? {
        if request.headers[.contentLength] == "0" || (request.headers[.contentType] == nil && request.headers[.contentLength] == nil) { return nil }
        return try await request.decodeJSON(type, context: context)
    }
}

/// The actions of people on conversations, for the HTTP routes and the CLI alike. Each checks the
/// conversation's state and appends one event to its `workflow-` stream at the version it read; a racing
/// change makes it read and check again. Refusals are ``APIError``s (a status, a code, a message).
struct AgentActions: Sendable {
    let store: PostgresEventStore
    let workflows: WorkflowRepository
    let agents: AgentStore
    /// How the action came in, recorded in its metadata (`via`): `apikey:ID` or `cli`.
    let via: String

    struct Outcome: Sendable {
        /// `false` when the caller's id had been used: nothing was written, `response` is the first call's.
        var created: Bool
        var response: AgentActionResponse
    }

    func assign(_ conversation: ConversationID, tenant: TenantID, by agent: Agent, to other: String?, requestId: String) async throws -> Outcome {
        var target = agent
        if let raw = other, raw.lowercased() != agent.actorId {
            guard agent.role == .supervisor else {
                throw APIError(.forbidden, "not_a_supervisor", "only a supervisor assigns a conversation to another agent")
            }
            guard let id = UUID(uuidString: raw), let found = try await agents.agent(id, tenant: tenant), found.disabledAt == nil else {
                throw APIError(.unprocessableContent, "unknown_agent", "no enabled agent '\(raw)' in this tenant")
            }
            target = found
        }
        return try await act(tenant: tenant, conversation: conversation, agent: agent, action: "assign", requestId: requestId) { state in
            if state.status == .resolved {
                throw APIError(.conflict, "conversation_resolved", "conversation \(conversation) is resolved: reopen it first")
            }
            if state.assignedTo == target.actorId {
                throw APIError(.conflict, "already_assigned", "conversation \(conversation) is already assigned to \(target.actorId)")
            }
            if let owner = state.assignedTo, owner != agent.actorId, agent.role != .supervisor {
                throw APIError(.conflict, "owned_by_another_agent", "conversation \(conversation) is owned by \(owner); a supervisor can reassign it")
            }
            return .assigned(ConversationAssigned(agentId: target.actorId, agentName: target.name, fromAgentId: state.assignedTo))
        }
    }

    func reply(_ conversation: ConversationID, tenant: TenantID, by agent: Agent, text: String, messageId: String) async throws -> Outcome {
        try Self.checkText(text)
        return try await act(tenant: tenant, conversation: conversation, agent: agent, action: "message", requestId: messageId) { state in
            try Self.requireOwner(state, agent, conversation)
            return .agentMessageSent(AgentMessageSent(messageId: messageId, text: text, agentId: agent.actorId, agentName: agent.name))
        }
    }

    /// Any agent of the tenant may leave a note, owner or not.
    func note(_ conversation: ConversationID, tenant: TenantID, by agent: Agent, text: String, noteId: String) async throws -> Outcome {
        try Self.checkText(text)
        return try await act(tenant: tenant, conversation: conversation, agent: agent, action: "note", requestId: noteId) { _ in
            .noteAdded(InternalNoteAdded(noteId: noteId, text: text, agentId: agent.actorId, agentName: agent.name))
        }
    }

    func handBack(_ conversation: ConversationID, tenant: TenantID, by agent: Agent, nodeId: String, requestId: String) async throws -> Outcome {
        try await act(tenant: tenant, conversation: conversation, agent: agent, action: "handback", requestId: requestId) { state in
            try Self.requireOwner(state, agent, conversation)
            guard let workflowId = state.workflowId, let version = state.workflowVersion else {
                throw APIError(.conflict, "no_workflow", "conversation \(conversation) has not started a workflow: there is no node to go on from")
            }
            guard let definition = try await workflows.definition(workflowId, version: version, tenant: tenant) else {
                throw APIError(.conflict, "no_workflow", "the conversation's workflow \(workflowId) v\(version) is not published")
            }
            guard definition.nodes.contains(where: { $0.id == nodeId }) else {
                throw APIError(
                    .unprocessableContent, "unknown_node", "workflow \(workflowId) v\(version) has no node '\(nodeId)'",
                    details: [ErrorDetail(nodeId: nodeId, message: "the workflow's nodes: \(definition.nodes.map(\.id).joined(separator: ", "))")])
            }
            return .handedBack(ConversationHandedBack(nodeId: nodeId, agentId: agent.actorId))
        }
    }

    /// The owner, or a supervisor.
    func resolve(_ conversation: ConversationID, tenant: TenantID, by agent: Agent, requestId: String) async throws -> Outcome {
        try await act(tenant: tenant, conversation: conversation, agent: agent, action: "resolve", requestId: requestId) { state in
            if state.status == .resolved { throw APIError(.conflict, "already_resolved", "conversation \(conversation) is resolved") }
            if agent.role != .supervisor { try Self.requireOwner(state, agent, conversation) }
            return .resolved(ConversationResolved(agentId: agent.actorId))
        }
    }

    func reopen(_ conversation: ConversationID, tenant: TenantID, by agent: Agent, requestId: String) async throws -> Outcome {
        try await act(tenant: tenant, conversation: conversation, agent: agent, action: "reopen", requestId: requestId) { state in
            guard state.status == .resolved else { throw APIError(.conflict, "not_resolved", "conversation \(conversation) is not resolved") }
            return .reopened(ConversationReopened(agentId: agent.actorId, causedByMessageId: nil))
        }
    }

    /// Checks the state with `decide` and appends its event at the version read; a racing change makes it
    /// read and check again. The same caller's id again returns the first call's event (200).
    func act(
        tenant: TenantID, conversation: ConversationID, agent: Agent, action: String, requestId: String,
        _ decide: (WorkflowState) async throws -> WorkflowEvent
    ) async throws -> Outcome {
        let eventId = Self.eventID(tenant: tenant, conversation: conversation, agent: agent, action: action, requestId: requestId)
        for _ in 0..<8 {
            let stored = try await store.readStreamToEnd(conversation.workflowStream, tenant: tenant)
            var state = WorkflowState()
            for event in stored {
                try state.apply(event)
                if event.eventId == eventId {
                    return Outcome(created: false, response: AgentActionResponse(conversation: conversation, event: event, state: nil, duplicate: true))
                }
            }
            if state.version == 0, try await store.streamVersion(conversation.messagesStream, tenant: tenant) == 0 {
                throw ConversationRoutes.notFound(conversation)
            }
            let event = try await decide(state)
            var new = try NewEvent(
                eventId: eventId, type: event.eventType, encoding: event,
                metadata: EventMetadata(actorId: agent.actorId, extra: ["via": .string(via), "requestId": .string(requestId)]))
            if !new.personalFields.isEmpty {
                // What an agent writes in a visitor's conversation is sealed with the visitor's key.
                guard let visitor = try await visitor(of: conversation, tenant: tenant) else { throw ConversationRoutes.notFound(conversation) }
                new.personalDataSubject = PersonalDataSubject(visitor: visitor, mayCreateKey: true)
            }
            do {
                let result = try await store.append([new], to: conversation.workflowStream, tenant: tenant, expectedVersion: .exact(state.version))
                guard let recorded = result.events.first else { break }
                state.apply(event, version: recorded.streamVersion, at: recorded.recordedAt)
                return Outcome(
                    created: !result.isDuplicate,
                    response: AgentActionResponse(
                        conversation: conversation, eventId: eventId, type: event.eventType, streamVersion: recorded.streamVersion,
                        globalPosition: recorded.globalPosition, state: state, duplicate: result.isDuplicate))
            } catch let error as EventStoreError where error.code == .wrongExpectedVersion {
                continue  // another writer moved the conversation on: check again on what it is now
            } catch let error as EventStoreError where error.code == .duplicateEventID {
                continue  // our own retry won meanwhile: the next read finds it
            }
        }
        throw APIError(.conflict, "busy", "conversation \(conversation) kept changing; try again")
    }

    /// The caller's id, or a new one.
    static func callerID(_ raw: String?, _ field: String) throws -> String {
        guard let raw else { return UUID().uuidString.lowercased() }
        guard (1...128).contains(raw.unicodeScalars.count), !raw.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
            throw APIError(.badRequest, "invalid_field", "\(field) has 1 to 128 characters, none of them control characters")
        }
        return raw
    }

    /// A text's rules are a visitor message's (``MessageIngestor/validateText(_:)``), answered as ingest answers them.
    private static func checkText(_ text: String) throws {
        do {
            try MessageIngestor.validateText(text)
        } catch let error as ResponderError where error.code == .messageTooLong {
            throw APIError(.contentTooLarge, "text_too_long", error.message)
        } catch let error as ResponderError {
            throw APIError(.badRequest, "invalid_field", error.message)
        }
    }

    private static func requireOwner(_ state: WorkflowState, _ agent: Agent, _ conversation: ConversationID) throws {
        if state.status == .resolved {
            throw APIError(.conflict, "conversation_resolved", "conversation \(conversation) is resolved: reopen it first")
        }
        guard state.assignedTo == agent.actorId else {
            throw APIError(
                .conflict, "not_owner",
                state.assignedTo.map { "conversation \(conversation) is owned by \($0)" } ?? "conversation \(conversation) is not assigned to you: take it first")
        }
    }

    /// One event id per (tenant, conversation, agent, action, caller's id): a retry finds what it stored.
    static func eventID(tenant: TenantID, conversation: ConversationID, agent: Agent, action: String, requestId: String) -> UUID {
        let digest = SHA256.hash(data: Data([tenant.rawValue, conversation.rawValue, agent.actorId, action, requestId].joined(separator: "\u{0}").utf8))
        var bytes = Array(digest.prefix(16))
        bytes[6] = (bytes[6] & 0x0F) | 0x50  // version 5 layout (name-based)
        bytes[8] = (bytes[8] & 0x3F) | 0x80  // RFC 4122 variant
        return UUID(uuid: (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]))
    }

    func visitor(of conversation: ConversationID, tenant: TenantID) async throws -> VisitorUID? {
        guard let first = try await store.readStream(conversation.messagesStream, tenant: tenant, fromVersion: 1, maxCount: 1).first else { return nil }
        if first.type == ConversationStarted.eventType { return try first.decode(ConversationStarted.self).visitorUid }
        if first.type == VisitorMessageReceived.eventType { return try first.decode(VisitorMessageReceived.self).visitorUid }
        return nil
    }
}

/// What an agent's action stored.
struct AgentActionResponse: ResponseCodable {
    struct State: Codable {
        var status: String
        var assignedTo: String?
        var currentNodeId: String?
        var version: Int64
    }

    var conversationId: String
    var eventId: UUID
    var type: String
    var streamVersion: Int64
    var globalPosition: Int64
    /// The conversation right after the event; absent on a repeated call (it may have moved on since).
    var state: State?
    var duplicate: Bool

    init(conversation: ConversationID, eventId: UUID, type: String, streamVersion: Int64, globalPosition: Int64, state: WorkflowState?, duplicate: Bool) {
        conversationId = conversation.rawValue
        self.eventId = eventId
        self.type = type
        self.streamVersion = streamVersion
        self.globalPosition = globalPosition
        self.state = state.map { State(status: $0.status.rawValue, assignedTo: $0.assignedTo, currentNodeId: $0.currentNode, version: $0.version) }
        self.duplicate = duplicate
    }

    init(conversation: ConversationID, event: RecordedEvent, state: WorkflowState?, duplicate: Bool) {
        self.init(
            conversation: conversation, eventId: event.eventId, type: event.type, streamVersion: event.streamVersion, globalPosition: event.globalPosition,
            state: state, duplicate: duplicate)
    }
}
