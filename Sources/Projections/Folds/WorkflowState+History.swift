import EventStore
import Foundation
import SharedTypes

extension WorkflowState {
    /// The conversation's workflow state as it was at a stream version or at a moment: time travel, folded
    /// from the events.
    ///
    /// - Parameters:
    ///   - version: the last `workflow-` stream version to apply; all of them when `nil`.
    ///   - date: apply only events recorded at or before this moment.
    /// - Throws: ``FoldError`` for an event the fold cannot apply; the store's errors.
    public static func history(
        of conversation: ConversationID, tenant: TenantID, atVersion version: Int64? = nil, at date: Date? = nil, store: some EventStore
    ) async throws -> WorkflowState {
        var state = WorkflowState()
        for event in try await store.readStreamToEnd(conversation.workflowStream, tenant: tenant) {
            if let version, event.streamVersion > version { break }
            if let date, event.recordedAt > date { break }
            try state.apply(event)
        }
        return state
    }
}
