import EventStore
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Projections
import SharedTypes

/// The audit-trail queries: a conversation's workflowState history, why a reply was sent, a search of a
/// tenant's events and the recorded conflicts. Everything is read from the events, never from a
/// projection, so the answers cannot be changed by editing a read model. The HTTP routes and the CLI both
/// call these, so they give the same results.
public struct AuditTrail: Sendable {
    public let store: PostgresEventStore
    let logger: Logger

    public init(store: PostgresEventStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    // MARK: History

    /// Every change of the conversation's workflowState, in order.
    ///
    /// - Throws: ``AuditError`` (`conversationNotFound`) for a conversation with no events; ``FoldError``
    ///   for a workflow event the fold cannot apply; the store's errors.
    public func workflowHistory(_ conversation: ConversationID, tenant: TenantID) async throws -> WorkflowHistory {
        let (messages, workflow) = try await readConversation(conversation, tenant: tenant)
        var state = WorkflowState()
        var changes: [WorkflowChange] = []
        changes.reserveCapacity(workflow.count)
        for recorded in workflow {
            let before = state
            let event = try recorded.workflowEvent()
            try state.apply(recorded)
            let metadata = try? recorded.metadata()
            changes.append(
                WorkflowChange(
                    globalPosition: recorded.globalPosition, streamVersion: recorded.streamVersion, eventId: recorded.eventId, type: recorded.type,
                    recordedAt: recorded.recordedAt, fromNode: before.currentNode, toNode: state.currentNode, statusBefore: before.status.rawValue,
                    status: state.status.rawValue, summary: Self.summary(of: event), cause: messages.cause(of: event, metadata: metadata),
                    actorId: metadata?.actorId, lockToken: metadata?["lockToken"]?.stringValue, instance: metadata?["instance"]?.stringValue))
        }
        return WorkflowHistory(tenant: tenant.rawValue, conversationId: conversation.rawValue, changes: changes)
    }

    // MARK: Explain

    /// Why the visitor got the reply `eventId`: the messages it answered, the walk from the previous
    /// `MessagesProcessed` to it, the tools called on the way, the provider and model.
    ///
    /// - Throws: ``AuditError`` when the conversation or event is unknown, or the event is not a reply.
    public func explain(_ eventId: UUID, in conversation: ConversationID, tenant: TenantID) async throws -> ReplyExplanation {
        let (messages, workflow) = try await readConversation(conversation, tenant: tenant)
        guard let index = workflow.firstIndex(where: { $0.eventId == eventId }) else {
            throw AuditError(.eventNotFound, "no event \(eventId.uuidString.lowercased()) in the workflow of conversation \(conversation)")
        }
        let recorded = workflow[index]
        guard recorded.type == AssistantMessageSent.eventType else {
            throw AuditError(.notAReply, "event \(eventId.uuidString.lowercased()) is a \(recorded.type), not an \(AssistantMessageSent.eventType)")
        }
        let reply = try recorded.decode(AssistantMessageSent.self)
        let metadata = try? recorded.metadata()
        var start = index
        while start > 0, workflow[start - 1].type != MessagesProcessed.eventType { start -= 1 }
        var state = try WorkflowState.fold(workflow[..<start])
        var walk: [WalkStep] = []
        var tools: [ToolCallRecord] = []
        for step in workflow[start...index] {
            let event = try step.workflowEvent()
            try state.apply(step)
            if case .toolCalled(let call) = event {
                tools.append(
                    ToolCallRecord(
                        streamVersion: step.streamVersion, tool: call.tool, arguments: call.arguments, outcome: call.outcome.rawValue, error: call.error,
                        nodeId: call.nodeId, actorId: call.actorId))
            }
            walk.append(WalkStep(streamVersion: step.streamVersion, type: step.type, nodeId: state.currentNode, summary: Self.summary(of: event)))
        }
        return ReplyExplanation(
            tenant: tenant.rawValue, conversationId: conversation.rawValue,
            reply: .init(
                eventId: recorded.eventId, globalPosition: recorded.globalPosition, streamVersion: recorded.streamVersion, recordedAt: recorded.recordedAt,
                text: reply.text, nodeId: reply.nodeId, provider: reply.provider, model: reply.model, latencyMs: reply.latencyMs,
                actorId: metadata?.actorId, lockToken: metadata?["lockToken"]?.stringValue, instance: metadata?["instance"]?.stringValue),
            answered: reply.inReplyTo.compactMap { messages.byMessageId[$0] },
            causedBy: metadata?.causationId.flatMap { messages.byEventId[$0] },
            walk: walk, tools: tools, workflowId: state.workflowId, workflowVersion: state.workflowVersion)
    }

    // MARK: Search

    /// The tenant's events that match `filter`, a page at a time in position order.
    ///
    /// - Throws: ``AuditError`` (`invalidFilter`) for a limit out of range or an empty time range; the
    ///   store's errors.
    public func events(tenant: TenantID, filter: AuditFilter) async throws -> AuditPage {
        guard (1...AuditFilter.maxLimit).contains(filter.limit) else {
            throw AuditError(.invalidFilter, "limit is between 1 and \(AuditFilter.maxLimit)")
        }
        // from == to is an empty range (to is exclusive): an empty page; from after to is a mistake.
        if let from = filter.from, let to = filter.to, from > to {
            throw AuditError(.invalidFilter, "from must not be after to")
        }
        if let after = filter.after, after < 0 {
            throw AuditError(.invalidFilter, "after is a position ≥ 0")
        }
        var sql = """
            SELECT global_position, event_id, stream_name, stream_version, event_type, recorded_at, data, metadata, hash
            FROM events WHERE tenant_id = $1
            """
        var binds = PostgresBindings()
        binds.append(tenant.rawValue)
        func bind(_ value: some PostgresEncodable & Sendable) throws -> String {
            try binds.append(value)
            return "$\(binds.count)"
        }
        if !filter.types.isEmpty {
            sql += " AND event_type = ANY(\(try bind(filter.types)))"
        }
        if let actor = filter.actor {
            sql += " AND metadata ->> 'actorId' = \(try bind(actor))"
        }
        if let visitor = filter.visitor {
            sql += " AND coalesce(metadata ->> 'visitorUid', data ->> 'visitorUid') = \(try bind(visitor.rawValue))"
        }
        if let tool = filter.tool {
            sql += " AND event_type = 'ToolCalled' AND data ->> 'tool' = \(try bind(tool))"
        }
        if let conversation = filter.conversation {
            let streams = try bind([conversation.messagesStream.description, conversation.workflowStream.description])
            let id = try bind(conversation.rawValue)
            sql += " AND (stream_name = ANY(\(streams)) OR (stream_category = 'audit' AND data ->> 'conversationId' = \(id)))"
        }
        if let from = filter.from {
            sql += " AND recorded_at >= \(try bind(from))"
        }
        if let to = filter.to {
            sql += " AND recorded_at < \(try bind(to))"
        }
        if filter.from != nil || filter.to != nil {
            // Positions and commit times grow together, but not in lockstep, and the planner, which assumes
            // they are independent, would scan positions from the start up to the window. The window's
            // first and last positions (read from the time index alone) bound the scan, exactly.
            guard let (first, last) = try await positions(tenant: tenant, from: filter.from, to: filter.to) else {
                return AuditPage(tenant: tenant.rawValue, events: [], next: nil)
            }
            sql += " AND global_position BETWEEN \(try bind(first)) AND \(try bind(last))"
        }
        let descending = filter.order == .descending
        if let after = filter.after {
            sql += " AND global_position \(descending ? "<" : ">") \(try bind(after))"
        }
        sql += " ORDER BY global_position \(descending ? "DESC" : "ASC") LIMIT \(try bind(Int64(filter.limit)))"

        var events: [AuditEvent] = []
        do {
            var recorded: [RecordedEvent] = []
            var hashes: [ByteBuffer] = []
            let rows = try await store.client.queryOpen(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger)
            for try await (position, id, stream, version, type, at, data, metadata, hash) in rows.decode(
                (Int64, UUID, String, Int64, String, Date, JSONB, JSONB, ByteBuffer).self)
            {
                recorded.append(
                    RecordedEvent(
                        globalPosition: position, eventId: id, tenant: tenant, stream: StreamName(unchecked: stream), streamVersion: version, type: type,
                        data: data.text, metadataJSON: metadata.text, recordedAt: at))
                hashes.append(hash)
            }
            // Personal members opened (or shown erased) as every read of the store shows them.
            for (event, hash) in zip(try await store.openPersonalData(recorded), hashes) {
                let dataValue = try JSONCoding.decoder.decode(JSONValue.self, from: event.data)
                let metadataValue = try JSONCoding.decoder.decode(JSONValue.self, from: event.metadataJSON)
                let name = event.stream
                events.append(
                    AuditEvent(
                        globalPosition: event.globalPosition, eventId: event.eventId, stream: name.description, streamVersion: event.streamVersion,
                        type: event.type, recordedAt: event.recordedAt, actorId: metadataValue["actorId"]?.stringValue,
                        conversationId: name.category == "audit" ? dataValue["conversationId"]?.stringValue : name.id,
                        visitorUid: metadataValue["visitorUid"]?.stringValue ?? dataValue["visitorUid"]?.stringValue,
                        hash: Array(buffer: hash).hexString, data: dataValue, metadata: metadataValue, erased: event.isErased ? true : nil))
            }
        } catch let error as DecodingError {
            throw EventStoreError(code: .storageFailure, message: "a stored event's JSON does not decode: \(error)")
        } catch let error as PSQLError {
            throw PostgresEventStore.mapError(error, operation: "search the audit trail")
        }
        return AuditPage(tenant: tenant.rawValue, events: events, next: events.count == filter.limit ? events.last?.globalPosition : nil)
    }

    /// The first and last position of the tenant's events recorded in [from, to); `nil` when there is none.
    private func positions(tenant: TenantID, from: Date?, to: Date?) async throws -> (Int64, Int64)? {
        do {
            let rows = try await store.client.queryOpen(Self.windowBounds(tenant: tenant, from: from, to: to), logger: logger)
            for try await (first, last) in rows.decode((Int64?, Int64?).self) {
                guard let first, let last else { return nil }
                return (first, last)
            }
            return nil
        } catch let error as PSQLError {
            throw PostgresEventStore.mapError(error, operation: "bound the time window")
        }
    }

    /// The statement of ``positions(tenant:from:to:)``: every event of the window is looked at, since a position
    /// taken by an older transaction can commit after younger ones. An index-only scan of the window in
    /// `events_tenant_recorded_at_idx`, split between workers when the window is large. On the bare column
    /// (`min(global_position)`) the planner would turn min and max into scans in position order that filter on
    /// time, from the store's first event up to the window: `+ 0` keeps it from that.
    static func windowBounds(tenant: TenantID, from: Date?, to: Date?) -> PostgresQuery {
        """
        SELECT min(global_position + 0), max(global_position + 0) FROM events
        WHERE tenant_id = \(tenant.rawValue)
          AND recorded_at >= coalesce(\(from)::timestamptz, '-infinity') AND recorded_at < coalesce(\(to)::timestamptz, 'infinity')
        """
    }

    // MARK: Conflicts

    /// Every recorded `ProcessingConflictDetected` of the tenant, with the write each loser collided with.
    ///
    /// - Throws: as ``events(tenant:filter:)``.
    /// - Parameter filter: the search's narrowing, paging and order; its types are set to the conflict's.
    public func conflicts(tenant: TenantID, filter: AuditFilter = AuditFilter()) async throws -> ConflictPage {
        var filter = filter
        filter.types = [ProcessingConflictDetected.eventType]
        let page = try await events(tenant: tenant, filter: filter)
        var conflicts: [ConflictRecord] = []
        for event in page.events {
            let data = try JSONCoding.encoder.encode(event.data)
            let conflict = try JSONCoding.decoder.decode(ProcessingConflictDetected.self, from: data)
            conflicts.append(
                ConflictRecord(
                    globalPosition: event.globalPosition, eventId: event.eventId, recordedAt: event.recordedAt,
                    conversationId: conflict.conversationId.rawValue, visitorUid: conflict.visitorUid.rawValue, stream: conflict.stream,
                    expectedVersion: conflict.expectedVersion, actualVersion: conflict.actualVersion, lockToken: conflict.lockToken,
                    instance: conflict.instance, winner: nil))
        }
        try await attachWinners(&conflicts, tenant: tenant)
        return ConflictPage(tenant: tenant.rawValue, conflicts: conflicts, next: page.next)
    }

    /// The event at `expectedVersion + 1` of each conflict's stream: what the loser collided with. One query.
    private func attachWinners(_ conflicts: inout [ConflictRecord], tenant: TenantID) async throws {
        guard !conflicts.isEmpty else { return }
        let streams = conflicts.map(\.stream)
        let versions = conflicts.map { $0.expectedVersion + 1 }
        var winners: [String: ConflictWinner] = [:]
        do {
            let rows = try await store.client.queryOpen(
                """
                SELECT e.stream_name, e.stream_version, e.event_id, e.event_type, e.recorded_at, e.metadata ->> 'lockToken', e.metadata ->> 'instance'
                FROM unnest(\(streams)::text[], \(versions)::int8[]) AS w (stream, version)
                -- LATERAL … LIMIT 1 keeps this a probe of events_stream_version_key per conflict: as a plain join
                -- the planner may hash the whole table.
                CROSS JOIN LATERAL (SELECT * FROM events e WHERE e.tenant_id = \(tenant.rawValue) AND e.stream_name = w.stream
                                    AND e.stream_version = w.version LIMIT 1) AS e
                """, logger: logger)
            for try await (stream, version, id, type, at, token, instance) in rows.decode((String, Int64, UUID, String, Date, String?, String?).self) {
                winners["\(stream)/\(version)"] = ConflictWinner(
                    eventId: id, type: type, streamVersion: version, recordedAt: at, lockToken: token, instance: instance)
            }
        } catch let error as PSQLError {
            throw PostgresEventStore.mapError(error, operation: "read the conflicts' winners")
        }
        for index in conflicts.indices {
            conflicts[index].winner = winners["\(conflicts[index].stream)/\(conflicts[index].expectedVersion + 1)"]
        }
    }

    // MARK: Helpers

    /// The visitor messages of a conversation, by event id and by the caller's message id.
    struct Messages {
        var byEventId: [UUID: MessageReference] = [:]
        var byMessageId: [String: MessageReference] = [:]

        /// The message a workflow event handled: its `causedByMessageId`, else its metadata's causation id.
        func cause(of event: WorkflowEvent, metadata: EventMetadata?) -> MessageReference? {
            if case .transitioned(let transition) = event, let id = transition.causedByMessageId, let message = byMessageId[id] {
                return message
            }
            return metadata?.causationId.flatMap { byEventId[$0] }
        }
    }

    private func readConversation(_ conversation: ConversationID, tenant: TenantID) async throws -> (Messages, [RecordedEvent]) {
        async let messageEvents = store.readStreamToEnd(conversation.messagesStream, tenant: tenant)
        async let workflowEvents = store.readStreamToEnd(conversation.workflowStream, tenant: tenant)
        let (stored, workflow) = try await (messageEvents, workflowEvents)
        guard !stored.isEmpty || !workflow.isEmpty else {
            throw AuditError(.conversationNotFound, "no conversation \(conversation)")
        }
        var messages = Messages()
        for event in stored where event.type == VisitorMessageReceived.eventType {
            let message = try event.decode(VisitorMessageReceived.self)
            let reference = MessageReference(
                eventId: event.eventId, messageId: message.messageId, text: message.text, streamVersion: event.streamVersion, recordedAt: event.recordedAt)
            messages.byEventId[event.eventId] = reference
            messages.byMessageId[message.messageId] = reference
        }
        return (messages, workflow)
    }

    /// A few words on what a workflow event changed.
    static func summary(of event: WorkflowEvent) -> String {
        switch event {
        case .started(let started): return "started \(started.workflowId) v\(started.workflowVersion) at \(started.startNodeId)"
        case .transitioned(let transition): return "moved \(transition.from ?? "start") → \(transition.to)"
        case .variableSet(let set): return "variable \(set.name) set"
        case .assistantMessageSent(let sent): return "replied (\(sent.provider)) to \(sent.inReplyTo.count) message\(sent.inReplyTo.count == 1 ? "" : "s")"
        case .toolCalled(let call): return "tool \(call.tool) \(call.outcome.rawValue)"
        case .waitingForInput(let waiting): return "waiting for input at \(waiting.nodeId)"
        case .handedOff(let handoff): return "handed off to \(handoff.assignee)"
        case .completed(let completed): return "completed at \(completed.nodeId)"
        case .failed(let failed): return "failed: \(failed.reason)"
        case .aiReplyFailed(let failure): return "AI reply failed (\(failure.provider)): \(failure.reason)"
        case .messagesProcessed(let processed): return "consumed messages up to v\(processed.upToVersion)"
        case .assigned(let assigned):
            return "assigned to \(assigned.agentName) (\(assigned.agentId))" + (assigned.fromAgentId.map { " from \($0)" } ?? " from the AI")
        case .agentMessageSent(let sent): return "\(sent.agentName) replied"
        case .noteAdded(let note): return "\(note.agentName) added a note"
        case .handedBack(let back): return "handed back to the AI at \(back.nodeId)"
        case .resolved: return "resolved"
        case .reopened(let reopened): return reopened.agentId == nil ? "reopened by the visitor" : "reopened"
        case .dataErased(let erased): return "the visitor's data was erased (messages up to v\(erased.messagesVersion) consumed)"
        }
    }
}
