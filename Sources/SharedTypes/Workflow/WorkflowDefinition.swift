/// A workflow: a graph of nodes a conversation walks, one visitor message at a time.
///
/// Stored versioned: publishing makes a new version, and a conversation keeps the version it started
/// with. Its JSON form is what `convo workflows publish` and `PUT /v1/workflows/{id}` take; the
/// responder's `WorkflowParser` turns it into this type, listing every problem per node.
public struct WorkflowDefinition: Sendable, Equatable {
    /// 1 to 64 lowercase letters, digits, `_` or `-`.
    public var id: String
    /// Set when published; 0 in a file not yet published.
    public var version: Int
    public var name: String?
    /// The node a new conversation starts at.
    public var start: String
    public var nodes: [WorkflowNode]

    public init(id: String, version: Int, name: String? = nil, start: String, nodes: [WorkflowNode]) {
        self.id = id
        self.version = version
        self.name = name
        self.start = start
        self.nodes = nodes
    }

    /// The node with this id.
    public func node(_ id: String) -> WorkflowNode? {
        nodes.first { $0.id == id }
    }
}

/// One node of a workflow.
public struct WorkflowNode: Sendable, Equatable {
    public var id: String
    public var kind: Kind

    public init(id: String, kind: Kind) {
        self.id = id
        self.kind = kind
    }

    /// What a node does. Every case has a handler in the engine's exhaustive `switch`; a type not listed
    /// here (such as the old `trigger`) is refused when a workflow is loaded.
    public enum Kind: Sendable, Equatable {
        /// Send `text` (with `{{variables}}`), then go to `next`.
        case message(text: String, next: String)
        /// Pause until the next visitor message; save its text to `saveAs` when set.
        case waitForInput(saveAs: String?, next: String)
        /// Go to the first branch whose condition holds, else to `otherwise`.
        case condition(branches: [Branch], otherwise: String)
        /// Call a catalogue tool with templated arguments, then go to `next`.
        case tool(name: ToolName, arguments: [String: String], next: String)
        /// Ask the AI provider to answer the pending messages, then go to `next`.
        case aiReply(AIReply, next: String)
        /// Hand the conversation to a human; the AI stops answering.
        case handoff(team: String?, reason: String?, message: String?)
        /// The workflow is done.
        case end

        /// The name of the type in a workflow's JSON.
        public var typeName: String {
            switch self {
            case .message: return "message"
            case .waitForInput: return "wait_for_input"
            case .condition: return "condition"
            case .tool: return "tool"
            case .aiReply: return "ai_reply"
            case .handoff: return "handoff"
            case .end: return "end"
            }
        }

        /// Every node this one can go to.
        public var successors: [String] {
            switch self {
            case .message(_, let next), .waitForInput(_, let next), .tool(_, _, let next): return [next]
            case .condition(let branches, let otherwise): return branches.map(\.next) + [otherwise]
            case .aiReply(let reply, let next): return [next] + (reply.onFailure.map { [$0] } ?? [])
            case .handoff, .end: return []
            }
        }
    }

    /// The type names a workflow may use.
    public static let typeNames = ["message", "wait_for_input", "condition", "tool", "ai_reply", "handoff", "end"]
}

/// One branch of a `condition` node.
public struct Branch: Sendable, Equatable {
    public var condition: Condition
    public var next: String

    public init(condition: Condition, next: String) {
        self.condition = condition
        self.next = next
    }
}

/// A test on the message being handled or on a variable.
public struct Condition: Sendable, Equatable {
    public enum Source: Sendable, Equatable {
        /// The text of the visitor message being handled.
        case message
        /// A workflow variable, as text.
        case variable(String)
    }

    public enum Operator: String, Sendable, CaseIterable {
        case contains
        case equals
        /// A regular expression matched anywhere in the text.
        case matches
    }

    public var source: Source
    public var op: Operator
    public var value: String
    /// Default: false (comparisons ignore case).
    public var caseSensitive: Bool

    public init(source: Source, op: Operator, value: String, caseSensitive: Bool = false) {
        self.source = source
        self.op = op
        self.value = value
        self.caseSensitive = caseSensitive
    }
}

/// What an `ai_reply` node asks of the AI provider.
public struct AIReply: Sendable, Equatable {
    /// The system instructions for a language-model provider.
    public var instructions: String
    /// The catalogue tools the AI may call from this node.
    public var tools: [ToolName]
    /// For the built-in rule provider: the first rule with a keyword in the pending messages answers.
    public var rules: [Rule]
    /// For the rule provider: the answer when no rule matches.
    public var fallback: String?
    /// Where to go when the provider fails; without it a failure ends the workflow with `WorkflowFailed`.
    public var onFailure: String?

    public init(instructions: String, tools: [ToolName] = [], rules: [Rule] = [], fallback: String? = nil, onFailure: String? = nil) {
        self.instructions = instructions
        self.tools = tools
        self.rules = rules
        self.fallback = fallback
        self.onFailure = onFailure
    }

    /// A keyword rule of the rule provider.
    public struct Rule: Sendable, Equatable {
        public var keywords: [String]
        public var reply: String
        /// Tools to call along with the reply, with literal arguments.
        public var calls: [ToolCall]

        public init(keywords: [String], reply: String, calls: [ToolCall] = []) {
            self.keywords = keywords
            self.reply = reply
            self.calls = calls
        }
    }
}

/// A request to call a tool, from a workflow rule or an AI provider.
public struct ToolCall: Sendable, Equatable, Codable {
    public var name: String
    public var arguments: JSONValue

    public init(name: String, arguments: JSONValue) {
        self.name = name
        self.arguments = arguments
    }
}
