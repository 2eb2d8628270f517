/// The names of the tools convo offers to workflows and the AI. The raw values are the names front ends,
/// workflows and AI providers use; nothing else in convo spells them.
public enum ToolName: String, Codable, Sendable, CaseIterable {
    case setConversationStatus = "set_conversation_status"
    case addVisitorNote = "add_visitor_note"
    case updateVisitorProfile = "update_visitor_profile"
    case addTag = "add_tag"
    case requestHandoff = "request_handoff"
}

/// A tool as front ends and AI providers see it: name, description, JSON Schema of its arguments.
public struct ToolDefinition: Codable, Sendable, Equatable {
    public var name: ToolName
    public var description: String
    public var parameters: JSONSchema
    /// Whether the arguments are the visitor's personal data: sealed with the visitor's key when stored,
    /// erased when the visitor is forgotten.
    public var personal: Bool
}

/// Every tool, defined once. `GET /v1/tools` serves this list; workflows and AI providers are checked
/// against it.
public enum ToolCatalogue {
    /// The statuses `set_conversation_status` accepts.
    public static let conversationStatuses = ["open", "pending", "resolved"]

    public static let all: [ToolDefinition] = ToolName.allCases.map(definition)

    /// The definition of a tool; the `switch` makes a new tool without a definition a compile error.
    public static func definition(_ name: ToolName) -> ToolDefinition {
        switch name {
        case .setConversationStatus:
            return ToolDefinition(
                name: name, description: "Set the conversation's status.",
                parameters: .object(["status": .string("The new status.", enum: conversationStatuses)], required: ["status"]), personal: false)
        case .addVisitorNote:
            return ToolDefinition(
                name: name, description: "Add a note about the visitor for the human agents.",
                parameters: .object(["note": .string("The note.", maxLength: 2000)], required: ["note"]), personal: true)
        case .updateVisitorProfile:
            return ToolDefinition(
                name: name, description: "Record the visitor's name, email or phone number.",
                parameters: .object(
                    [
                        "name": .string("The visitor's name.", maxLength: 200),
                        "email": .string("The visitor's email address.", maxLength: 254, pattern: #"[^@\s]+@[^@\s]+\.[^@\s]+"#),
                        "phone": .string("The visitor's phone number.", maxLength: 32, pattern: #"\+?[0-9 ()\-]{3,32}"#),
                    ], required: [], minProperties: 1), personal: true)
        case .addTag:
            return ToolDefinition(
                name: name, description: "Tag the conversation.",
                parameters: .object(["tag": .string("A lowercase tag.", maxLength: 50, pattern: "[a-z0-9][a-z0-9_-]*")], required: ["tag"]),
                personal: false)
        case .requestHandoff:
            return ToolDefinition(
                name: name, description: "Hand the conversation to a human agent; the AI stops answering.",
                parameters: .object(
                    ["team": .string("The team to hand off to.", maxLength: 100), "reason": .string("Why a human is needed.", maxLength: 500)],
                    required: ["reason"]), personal: false)
        }
    }

    /// The problems with calling `name` with `arguments`; empty when the call is valid.
    public static func violations(calling name: String, with arguments: JSONValue) -> [String] {
        guard let tool = ToolName(rawValue: name) else { return ["unknown tool '\(name)'"] }
        return definition(tool).parameters.violations(of: arguments)
    }
}
