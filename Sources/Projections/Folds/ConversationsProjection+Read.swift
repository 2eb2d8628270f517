import EventStore
import Logging
import PostgresNIO
import SharedTypes

extension ConversationsProjection {
    /// A conversation's row with read-your-writes: the stored row, plus the events of its two streams the
    /// runner has not applied yet (those after the row's `last_position`), folded on the spot.
    ///
    /// When the row is missing, unreadable or does not fit the events, the row is folded from both streams.
    /// - Returns: `nil` when the conversation has no events.
    /// - Throws: ``FoldError`` for an event the fold cannot apply; the store's errors.
    public func current(_ conversation: ConversationID, tenant: TenantID, store: PostgresEventStore, logger: Logger) async throws -> ConversationRow? {
        let key = ConversationKey(tenant: tenant, conversation: conversation)
        let streams = [conversation.messagesStream, conversation.workflowStream]
        var stored: ConversationRow?
        do {
            let table = try ProjectionTable<ConversationRow>(name)
            stored = try await store.client.withOpenConnection { connection in
                try await table.load([key], on: connection, logger: logger).first
            }
        } catch {
            logger.debug("conversations row unreadable; folding the streams", metadata: ["convo.error": "\(error)"])
        }
        if let row = stored {
            do {
                return try fold(try await Self.events(of: streams, tenant: tenant, after: row.lastPosition, store: store), onto: row, key: key)
            } catch is FoldError {
                logger.warning("conversations row does not fit its events; folding the streams", metadata: ["convo.conversation": "\(conversation)"])
            }
        }
        let events = try await Self.events(of: streams, tenant: tenant, after: 0, store: store)
        guard !events.isEmpty else { return nil }
        return try fold(events, onto: nil, key: key)
    }

    private func fold(_ events: [RecordedEvent], onto row: ConversationRow?, key: ConversationKey) throws -> ConversationRow? {
        var row = row
        for event in events { row = try apply(ProjectedEvent(event), to: row, key: key) }
        return row
    }

    private static func events(of streams: [StreamName], tenant: TenantID, after position: Int64, store: PostgresEventStore) async throws -> [RecordedEvent] {
        var events: [RecordedEvent] = []
        var position = position
        while true {
            // Everything committed now: the row covers all up to its position (the runner withholds, so it
            // never passed a late commit), and this read adds the rest.
            let page = try await store.readStreams(streams, tenant: tenant, after: position, maxCount: 1000, following: false)
            events += page
            guard page.count == 1000, let last = page.last else { return events }
            position = last.globalPosition
        }
    }
}
