import SharedTypes

/// Runs catalogue tools for workflows and the AI. A call is checked against the tool's JSON Schema in
/// ``ToolCatalogue`` (and against the tools the node allows) and recorded as ``ToolCalled`` with the
/// System user as actor, whether it ran or was rejected: the AI never acts as a nameless string.
///
/// Tools act through the events they record: the conversations projection folds status, tags, notes and
/// the visitor's profile from `ToolCalled`, and `request_handoff` also hands the conversation off.
public enum ToolExecutor {
    /// The events a call records.
    ///
    /// - Parameter allowed: the tools the node lets the AI call; `nil` for a workflow's own `tool` node.
    public static func execute(_ call: ToolCall, allowed: Set<ToolName>?, nodeId: String) -> [WorkflowEvent] {
        func rejected(_ reason: String) -> [WorkflowEvent] {
            [.toolCalled(ToolCalled(tool: call.name, arguments: call.arguments, outcome: .rejected, error: reason, actorId: SystemActor.actorID, nodeId: nodeId))]
        }
        guard let tool = ToolName(rawValue: call.name) else { return rejected("unknown tool '\(call.name)'") }
        if let allowed, !allowed.contains(tool) { return rejected("tool '\(call.name)' is not allowed at node '\(nodeId)'") }
        let violations = ToolCatalogue.definition(tool).parameters.violations(of: call.arguments)
        guard violations.isEmpty else { return rejected(violations.joined(separator: "; ")) }

        let called = WorkflowEvent.toolCalled(
            ToolCalled(tool: tool.rawValue, arguments: call.arguments, outcome: .succeeded, actorId: SystemActor.actorID, nodeId: nodeId))
        switch tool {
        case .setConversationStatus, .addVisitorNote, .updateVisitorProfile, .addTag:
            return [called]
        case .requestHandoff:
            let team = call.arguments["team"]?.stringValue
            let reason = call.arguments["reason"]?.stringValue
            return [called, .handedOff(ConversationHandedOff(nodeId: nodeId, team: team, reason: reason))]
        }
    }
}
