import EventStore
import Foundation
import Hummingbird
import Metrics
import Projections
import Responder
import SharedTypes

/// `POST /v1/conversations/{conversationId}/messages` and the conversation's reads.
struct ConversationRoutes: Sendable {
    let context: ServerContext
    private let accepted = Counter(label: "convo.ingest.messages", dimensions: [("outcome", "accepted")])
    private let duplicates = Counter(label: "convo.ingest.messages", dimensions: [("outcome", "duplicate")])

    init(context: ServerContext) {
        self.context = context
    }

    func register(on router: some RouterMethods<ConvoRequestContext>, table: RouteTable) {
        table.add(.post, "/v1/conversations/{conversationId}/messages", on: router, use: ingest)
        table.add(.get, "/v1/conversations", on: router, use: inbox)
        table.add(.get, "/v1/conversations/{conversationId}", on: router, use: conversation)
        table.add(.get, "/v1/conversations/{conversationId}/messages", on: router, use: transcript)
        table.add(.get, "/v1/conversations/{conversationId}/events", on: router, use: events)
        table.add(.get, "/v1/conversations/{conversationId}/state", on: router, use: state)
        table.add(.post, "/v1/conversations/{conversationId}/retry", on: router, use: retry)
        table.add(.get, "/v1/parked-conversations", on: router, use: parkedList)
    }

    /// Hands a parked conversation back to the responder (admin): 200 with the park it ended, 409
    /// `not_parked` when it was not parked.
    @Sendable func retry(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> ParkedConversation {
        let tenant = try requestContext.tenant(for: .admin)
        let conversation = try Self.conversationID(requestContext)
        guard let entry = try await context.responder.parkingLot.resume(conversation, tenant: tenant, actor: "apikey:\(requestContext.key?.id ?? "?")") else {
            throw APIError(.conflict, "not_parked", "conversation \(conversation) is not parked")
        }
        return ParkedConversation(entry)
    }

    /// The tenant's parked conversations, oldest park first (read or admin).
    @Sendable func parkedList(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> ParkedList {
        let tenant = try requestContext.tenant(forAnyOf: [.read, .admin])
        return ParkedList(conversations: try await context.responder.parkingLot.all(tenant: tenant).map(ParkedConversation.init))
    }

    @Sendable func ingest(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<MessageAccepted> {
        let tenant = try requestContext.tenant(for: .ingest)
        let conversation = try Self.conversationID(requestContext)
        let body = try await request.decodeJSON(IngestRequest.self, context: requestContext)
        guard let visitor = VisitorUID(rawValue: body.visitorUid) else {
            throw APIError(.badRequest, "invalid_field", "visitorUid has 1 to 128 characters of A-Z a-z 0-9 _ . : -")
        }
        let messageId = body.messageId ?? UUID().uuidString.lowercased()
        var sentAt = Date()
        if let raw = body.sentAt {
            guard let date = Timestamp.date(from: raw) else {
                throw APIError(.badRequest, "invalid_field", "sentAt is an ISO 8601 date and time, e.g. 2026-11-22T10:15:00Z")
            }
            sentAt = date
        }
        return try await accept(
            IncomingMessage(tenant: tenant, conversationId: conversation, visitorUid: visitor, messageId: messageId, text: body.text, sentAt: sentAt))
    }

    /// Stores a visitor's message (group commit) and wakes the responder: 202, or 200 for a retry of a stored one.
    func accept(_ message: IncomingMessage) async throws -> EditedResponse<MessageAccepted> {
        let (tenant, visitor, conversation, messageId) = (message.tenant, message.visitorUid, message.conversationId, message.messageId)
        do {
            let result = try await context.batcher.ingest(message)
            (result.isDuplicate ? duplicates : accepted).increment()
            // The responder is woken by the store's subscription too; scheduling here only saves the hop.
            if !result.isDuplicate {
                context.responder.messageIngested(tenant: tenant, visitor: visitor, conversation: conversation, messageVersion: result.streamVersion)
            }
            return EditedResponse(
                status: result.isDuplicate ? .ok : .accepted,
                response: MessageAccepted(
                    conversationId: conversation.rawValue, messageId: messageId, streamVersion: result.streamVersion,
                    globalPosition: result.globalPosition, duplicate: result.isDuplicate))
        } catch let error as ResponderError where error.code == .invalidMessage {
            throw APIError(.badRequest, "invalid_field", error.message)
        } catch let error as ResponderError where error.code == .messageTooLong {
            throw APIError(.contentTooLarge, "text_too_long", error.message)
        } catch let error as ResponderError where error.code == .conversationOwnedByAnotherVisitor {
            throw APIError(.conflict, "conversation_owned_by_another_visitor", error.message)
        } catch let error as ResponderError where error.code == .messageIdReused {
            throw APIError(.conflict, "message_id_reused", error.message)
        }
    }

    /// The tenant's conversations, newest activity first: `status`, `owner` (`ai` or `people`), `assignedTo`,
    /// `visitor`, `after` (the previous page's `next`), `limit` (1…1000).
    @Sendable func inbox(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> InboxResponse {
        let tenant = try requestContext.tenant(for: .read)
        let query = request.uri.queryParameters
        let known: Set<String> = ["status", "owner", "assignedTo", "visitor", "after", "limit"]
        if let unknown = query.map({ String($0.key) }).first(where: { !known.contains($0) }) {
            throw APIError(.badRequest, "invalid_parameter", "unknown parameter '\(unknown)'; known: \(known.sorted().joined(separator: ", "))")
        }
        var filter = ConversationsProjection.InboxFilter()
        func text(_ name: String) throws -> String? {
            guard let raw = query[Substring(name)].map(String.init) else { return nil }
            guard (1...128).contains(raw.unicodeScalars.count), !raw.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
                throw APIError(.badRequest, "invalid_parameter", "\(name) has 1 to 128 characters, none of them control characters")
            }
            return raw
        }
        filter.status = try text("status")
        filter.assignedTo = try text("assignedTo")
        filter.visitor = try text("visitor")
        if let raw = try text("owner") {
            guard let owner = ConversationsProjection.InboxFilter.Owner(rawValue: raw) else {
                throw APIError(.badRequest, "invalid_parameter", "owner is ai or people")
            }
            filter.owner = owner
        }
        let (after, limit) = try Self.page(request)
        filter.after = query["after"] == nil ? nil : after
        filter.limit = limit
        let (rows, next) = try await ConversationsProjection().inbox(filter, tenant: tenant, client: context.store.client, logger: requestContext.logger)
        return InboxResponse(conversations: rows.map(InboxEntry.init), next: next)
    }

    @Sendable func conversation(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> ConversationResponse {
        let tenant = try requestContext.tenant(for: .read)
        let conversation = try Self.conversationID(requestContext)
        guard let row = try await ConversationsProjection().current(conversation, tenant: tenant, store: context.store, logger: requestContext.logger)
        else { throw Self.notFound(conversation) }
        let state = try await WorkflowStateProjection().current(conversation, tenant: tenant, store: context.store, logger: requestContext.logger)
        var response = ConversationResponse(row: row, state: state)
        response.parked = try await context.responder.parkingLot.parked(conversation, tenant: tenant).map(ParkedConversation.init)
        return response
    }

    @Sendable func transcript(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> TranscriptResponse {
        let tenant = try requestContext.tenant(for: .read)
        let conversation = try Self.conversationID(requestContext)
        let (after, limit) = try Self.page(request)
        var messages: [TranscriptMessage] = []
        var position = after
        var exhausted = false
        reading: while true {
            let page = try await context.store.readStreams(
                [conversation.messagesStream, conversation.workflowStream], tenant: tenant, after: position, maxCount: APILimits.maxPageSize)
            for event in page {
                position = event.globalPosition
                guard let message = try TranscriptMessage(event) else { continue }
                messages.append(message)
                if messages.count == limit { break reading }
            }
            if page.count < APILimits.maxPageSize {
                exhausted = true
                break
            }
        }
        if messages.isEmpty, after == 0, try await !exists(conversation, tenant: tenant) { throw Self.notFound(conversation) }
        return TranscriptResponse(conversationId: conversation.rawValue, messages: messages, next: exhausted ? nil : position)
    }

    @Sendable func events(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EventsResponse {
        let tenant = try requestContext.tenant(for: .read)
        let conversation = try Self.conversationID(requestContext)
        let (after, limit) = try Self.page(request)
        let page = try await context.store.readStreams(
            [conversation.messagesStream, conversation.workflowStream], tenant: tenant, after: after, maxCount: limit)
        if page.isEmpty, after == 0, try await !exists(conversation, tenant: tenant) { throw Self.notFound(conversation) }
        return EventsResponse(
            conversationId: conversation.rawValue, events: try page.map(EventBody.init),
            next: page.count == limit ? page.last?.globalPosition : nil)
    }

    /// The workflow state alone (kept from before `GET /v1/conversations/{id}` carried it).
    @Sendable func state(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> WorkflowStateResponse {
        let tenant = try requestContext.tenant(for: .read)
        let conversation = try Self.conversationID(requestContext)
        let state = try await WorkflowStateProjection().current(conversation, tenant: tenant, store: context.store, logger: requestContext.logger)
        if state.version == 0, try await !exists(conversation, tenant: tenant) { throw Self.notFound(conversation) }
        return WorkflowStateResponse(conversationId: conversation.rawValue, state: state)
    }

    func exists(_ conversation: ConversationID, tenant: TenantID) async throws -> Bool {
        try await context.store.streamVersion(conversation.messagesStream, tenant: tenant) > 0
    }

    static func conversationID(_ context: ConvoRequestContext) throws -> ConversationID {
        guard let conversation = context.pathParameter("conversationId").flatMap(ConversationID.init(rawValue:)) else {
            throw APIError(.badRequest, "invalid_conversation", "a conversation id has 1 to 128 characters of A-Z a-z 0-9 _ . : -")
        }
        // A client that normalises URLs (RFC 3986 §5.2.4) cannot address these: no conversation may have them.
        guard conversation.rawValue != ".", conversation.rawValue != ".." else {
            throw APIError(.badRequest, "invalid_conversation", "a conversation id is not . or ..")
        }
        return conversation
    }

    static func notFound(_ conversation: ConversationID) -> APIError {
        APIError(.notFound, "conversation_not_found", "no conversation \(conversation)")
    }

    /// `after` (a global position, default 0) and `limit` (1…1000, default 100) of a keyset-paginated read.
    static func page(_ request: Request) throws -> (after: Int64, limit: Int) {
        let query = request.uri.queryParameters
        var after: Int64 = 0
        if let raw = query["after"] {
            guard let value = Int64(String(raw)), value >= 0 else { throw APIError(.badRequest, "invalid_parameter", "after is a position ≥ 0") }
            after = value
        }
        return (after, try pageSize(request))
    }

    /// `limit`: 1…1000, 100 when absent.
    static func pageSize(_ request: Request) throws -> Int {
        guard let raw = request.uri.queryParameters["limit"] else { return APILimits.defaultPageSize }
        guard let value = Int(String(raw)), (1...APILimits.maxPageSize).contains(value) else {
            throw APIError(.badRequest, "invalid_parameter", "limit is between 1 and \(APILimits.maxPageSize)")
        }
        return value
    }
}

struct IngestRequest: Decodable, BodyReadable {
    var visitorUid: String
    var messageId: String?
    var text: String
    /// ISO 8601; checked by the route so a bad one is named.
    var sentAt: String?

    init(visitorUid: String, messageId: String?, text: String, sentAt: String?) {
        (self.visitorUid, self.messageId, self.text, self.sentAt) = (visitorUid, messageId, text, sentAt)
    }

    init(reading body: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var visitorUid = PayloadReader.Member<String>(), messageId = PayloadReader.Member<String?>()
        var text = PayloadReader.Member<String>(), sentAt = PayloadReader.Member<String?>()
        while let key = try body.nextKey() {
            switch key {
            case "visitorUid": try visitorUid.set(body.string())
            case "messageId": try messageId.set(body.optionalString())
            case "text": try text.set(body.string())
            case "sentAt": try sentAt.set(body.optionalString())
            default: try body.skip()
            }
        }
        self.init(visitorUid: try visitorUid.required(), messageId: messageId.optional(), text: try text.required(), sentAt: sentAt.optional())
    }
}

/// The answer to every accepted message, the server's most frequent: written by hand rather than through
/// `JSONEncoder`, which cost about 5% of the ingest rate for these five fields.
struct MessageAccepted: Codable, ResponseGenerator {
    var conversationId: String
    var messageId: String
    var streamVersion: Int64
    var globalPosition: Int64
    var duplicate: Bool

    /// The JSON document, fields in declaration order (strings escaped by the store's ``JSONWriter``).
    var body: ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(128 + conversationId.utf8.count + messageId.utf8.count)
        out.writeStaticString("{\"conversationId\":")
        JSONWriter.string(conversationId, into: &out)
        out.writeStaticString(",\"messageId\":")
        JSONWriter.string(messageId, into: &out)
        out.writeString(",\"streamVersion\":\(streamVersion),\"globalPosition\":\(globalPosition),\"duplicate\":\(duplicate)}")
        return out
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(status: .ok, headers: [.contentType: "application/json; charset=utf-8"], body: .init(byteBuffer: body))
    }
}

struct WorkflowStateResponse: ResponseCodable {
    var conversationId: String
    var state: WorkflowState
}

/// `GET /v1/conversations/{id}`.
struct ConversationResponse: ResponseCodable {
    struct Counts: Codable {
        var visitorMessages: Int64
        var assistantMessages: Int64
        var notes: Int64
        /// Visitor messages the responder has not consumed yet.
        var unprocessed: Int64
        var agentMessages: Int64 = 0
        /// Visitor messages since the conversation went to people, or since an agent last answered.
        var unread: Int64 = 0
    }

    struct State: Codable {
        var workflowId: String?
        var workflowVersion: Int?
        var currentNodeId: String?
        var status: String
        var variables: [String: JSONValue]
        var handedOffTo: String?
        var failureReason: String?
        var updatedAt: Date?
    }

    /// What the answer reflects: the two streams' versions and the last event's global position.
    struct Reflects: Codable {
        var messagesVersion: Int64
        var workflowVersion: Int64
        var globalPosition: Int64
    }

    var conversationId: String
    var visitorUid: String?
    var status: String
    var handedOffTo: String?
    /// The agent (user id) who owns the conversation.
    var assignedTo: String?
    /// When the conversation went to people, and how long until an agent first answered.
    var withPeopleSince: Date?
    var firstResponseSeconds: Double?
    var tags: [String]
    var counts: Counts
    var startedAt: Date?
    var lastActivityAt: Date?
    var workflowState: State
    var reflects: Reflects
    /// Set while the responder has stopped retrying the conversation (see `POST …/retry`).
    var parked: ParkedConversation?

    init(row: ConversationRow, state: WorkflowState) {
        conversationId = row.conversationId
        visitorUid = row.visitorUid
        status = row.status
        handedOffTo = row.handedOffTo
        tags = row.tags
        counts = Counts(
            visitorMessages: row.visitorMessages, assistantMessages: row.assistantMessages, notes: row.noteCount, unprocessed: row.unprocessedCount,
            agentMessages: row.agentMessages, unread: row.unreadCount)
        assignedTo = row.assignedTo
        withPeopleSince = row.withPeopleSince
        firstResponseSeconds = row.firstResponseSeconds
        startedAt = row.startedAt
        lastActivityAt = row.lastActivityAt
        workflowState = State(
            workflowId: state.workflowId, workflowVersion: state.workflowVersion, currentNodeId: state.currentNode, status: state.status.rawValue,
            variables: state.variables, handedOffTo: state.handedOffTo, failureReason: state.failureReason, updatedAt: state.updatedAt)
        reflects = Reflects(messagesVersion: row.messagesVersion, workflowVersion: max(row.workflowVersion, state.version), globalPosition: row.lastPosition)
    }
}

/// One message of a transcript.
struct TranscriptMessage: Codable {
    /// `visitor`, `assistant` or `agent`.
    var role: String
    var text: String
    var eventId: UUID
    var globalPosition: Int64
    var at: Date
    /// The visitor's message id.
    var messageId: String?
    var visitorUid: String?
    /// For an assistant message: the visitor messages it answers, and who wrote it.
    var inReplyTo: [String]?
    var provider: String?
    var model: String?
    /// For an agent's message: who wrote it (a user id) and their name.
    var agentId: String?
    var agentName: String?
    /// `true` when the text was erased (the visitor was forgotten); absent otherwise.
    var erased: Bool?

    /// The message an event is, or `nil` when it is not a message.
    init?(_ event: RecordedEvent) throws {
        switch event.type {
        case VisitorMessageReceived.eventType:
            let message = try event.decode(VisitorMessageReceived.self)
            self.init(
                role: "visitor", text: message.text, eventId: event.eventId, globalPosition: event.globalPosition, at: event.recordedAt,
                messageId: message.messageId, visitorUid: message.visitorUid.rawValue)
        case AssistantMessageSent.eventType:
            let message = try event.decode(AssistantMessageSent.self)
            self.init(
                role: "assistant", text: message.text, eventId: event.eventId, globalPosition: event.globalPosition, at: event.recordedAt,
                inReplyTo: message.inReplyTo, provider: message.provider, model: message.model)
        case AgentMessageSent.eventType:
            let message = try event.decode(AgentMessageSent.self)
            self.init(
                role: "agent", text: message.text, eventId: event.eventId, globalPosition: event.globalPosition, at: event.recordedAt,
                messageId: message.messageId)
            agentId = message.agentId
            agentName = message.agentName
        default:
            return nil
        }
        if event.isErased { erased = true }
    }

    init(
        role: String, text: String, eventId: UUID, globalPosition: Int64, at: Date, messageId: String? = nil, visitorUid: String? = nil,
        inReplyTo: [String]? = nil, provider: String? = nil, model: String? = nil
    ) {
        self.role = role
        self.text = text
        self.eventId = eventId
        self.globalPosition = globalPosition
        self.at = at
        self.messageId = messageId
        self.visitorUid = visitorUid
        self.inReplyTo = inReplyTo
        self.provider = provider
        self.model = model
    }
}

struct TranscriptResponse: ResponseCodable {
    var conversationId: String
    var messages: [TranscriptMessage]
    /// The `after` of the next page; `null` at the end.
    var next: Int64?
}

/// An event as the API shows it.
struct EventBody: Codable {
    var eventId: UUID
    var type: String
    var stream: String
    var streamVersion: Int64
    var globalPosition: Int64
    var recordedAt: Date
    var data: JSONValue
    /// Actor, causation and correlation ids, the lock token and instance of the worker that wrote it.
    var metadata: JSONValue
    /// `true` when personal members of `data` were erased (the visitor was forgotten); absent otherwise.
    var erased: Bool?

    init(_ event: RecordedEvent) throws {
        eventId = event.eventId
        type = event.type
        stream = event.stream.description
        streamVersion = event.streamVersion
        globalPosition = event.globalPosition
        recordedAt = event.recordedAt
        data = try JSONDecoder().decode(JSONValue.self, from: event.data)
        metadata = try JSONDecoder().decode(JSONValue.self, from: event.metadataJSON)
        erased = event.isErased ? true : nil
    }
}

struct EventsResponse: ResponseCodable {
    var conversationId: String
    var events: [EventBody]
    /// The `after` of the next page; `null` when this page was not full.
    var next: Int64?
}

/// A conversation the responder parked: its last error, how many attempts, which instance, when.
struct ParkedConversation: ResponseCodable {
    var conversationId: String
    var visitorUid: String
    var error: String
    var attempts: Int
    var instance: String
    var parkedAt: Date

    init(_ entry: ParkingLot.Entry) {
        conversationId = entry.conversationId
        visitorUid = entry.visitorUid
        error = entry.error
        attempts = entry.attempts
        instance = entry.instance
        parkedAt = entry.parkedAt
    }
}

struct ParkedList: ResponseCodable {
    var conversations: [ParkedConversation]
}

/// A page of the inbox.
struct InboxResponse: ResponseCodable {
    var conversations: [InboxEntry]
    /// The `after` of the next page; absent on the last.
    var next: Int64?
}

/// One conversation of the inbox, as the projection has it.
struct InboxEntry: Codable {
    var conversationId: String
    var visitorUid: String?
    var status: String
    var assignedTo: String?
    var handedOffTo: String?
    var unread: Int64
    var visitorMessages: Int64
    var agentMessages: Int64
    var withPeopleSince: Date?
    var firstResponseSeconds: Double?
    var lastActivityAt: Date?
    /// The global position of its last event (what `after` pages by).
    var lastPosition: Int64

    init(_ row: ConversationRow) {
        conversationId = row.conversationId
        visitorUid = row.visitorUid
        status = row.status
        assignedTo = row.assignedTo
        handedOffTo = row.handedOffTo
        unread = row.unreadCount
        visitorMessages = row.visitorMessages
        agentMessages = row.agentMessages
        withPeopleSince = row.withPeopleSince
        firstResponseSeconds = row.firstResponseSeconds
        lastActivityAt = row.lastActivityAt
        lastPosition = row.lastPosition
    }
}
