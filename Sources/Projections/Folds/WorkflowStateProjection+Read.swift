import EventStore
import Logging
import PostgresNIO
import SharedTypes

extension WorkflowStateProjection {
    /// A conversation's workflow state with read-your-writes: the stored row, plus the events of the
    /// `workflow-` stream the runner has not applied yet, folded on the spot. So a reader sees the responder's
    /// last append at once, however far behind the runner is, for the price of one short stream read.
    ///
    /// When the row is missing, unreadable or does not fit the events (someone changed it), the state is
    /// folded from the whole stream: the events are the truth, the row only a shortcut.
    /// - Throws: ``FoldError`` for an event the fold cannot apply; the store's errors.
    public func current(_ conversation: ConversationID, tenant: TenantID, store: PostgresEventStore, logger: Logger) async throws -> WorkflowState {
        let key = ConversationKey(tenant: tenant, conversation: conversation)
        var stored: WorkflowState?
        do {
            let table = try ProjectionTable<WorkflowStateRow>(name)
            stored = try await store.client.withOpenConnection { connection in
                try await table.load([key], on: connection, logger: logger).first?.state
            }
        } catch {
            logger.debug("workflow_state row unreadable; folding the stream", metadata: ["convo.error": "\(error)"])
        }
        if var state = stored, state.version > 0 {
            do {
                // Read from the row's own version: the event there must exist, or the row is not of these events.
                let tail = try await store.readStreamToEnd(conversation.workflowStream, tenant: tenant, fromVersion: state.version)
                if tail.first?.streamVersion == state.version {
                    for event in tail.dropFirst() { try state.apply(event) }
                    return state
                }
                logger.warning("workflow_state row is ahead of its events; folding the stream", metadata: ["convo.conversation": "\(conversation)"])
            } catch is FoldError {
                logger.warning("workflow_state row does not fit its events; folding the stream", metadata: ["convo.conversation": "\(conversation)"])
            }
        }
        return try WorkflowState.fold(try await store.readStreamToEnd(conversation.workflowStream, tenant: tenant))
    }
}
