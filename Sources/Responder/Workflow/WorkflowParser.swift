import Foundation
import SharedTypes

/// A problem with a workflow definition, at a node when it is about one.
public struct WorkflowIssue: Sendable, Equatable, Codable, CustomStringConvertible {
    public var nodeId: String?
    public var message: String

    public init(nodeId: String?, message: String) {
        self.nodeId = nodeId
        self.message = message
    }

    public var description: String { nodeId.map { "node '\($0)': \(message)" } ?? message }
}

/// A workflow that cannot be loaded, with every problem found.
public struct InvalidWorkflow: Error, CustomStringConvertible {
    public var issues: [WorkflowIssue]
    public var description: String { "invalid workflow: " + issues.map(\.description).joined(separator: "; ") }
}

/// Turns a workflow's JSON into a ``WorkflowDefinition`` and checks it: unknown node types and fields,
/// unknown tools, bad tool arguments, dangling or missing `next`, unreachable nodes, and loops that never
/// wait for input. Reports every problem, not only the first.
public enum WorkflowParser {
    /// The most nodes a workflow may have.
    public static let maxNodes = 500

    /// Parses and validates a workflow from JSON bytes.
    ///
    /// - Throws: ``InvalidWorkflow`` listing every problem.
    public static func parse(_ data: Data) throws -> WorkflowDefinition {
        try parse(decodeJSON(data))
    }

    /// A workflow file's JSON, not yet checked.
    ///
    /// - Throws: ``InvalidWorkflow`` when the bytes are not JSON.
    public static func decodeJSON(_ data: Data) throws -> JSONValue {
        do {
            return try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            throw InvalidWorkflow(issues: [WorkflowIssue(nodeId: nil, message: "not valid JSON")])
        }
    }

    /// Parses and validates a workflow from a JSON value.
    ///
    /// - Throws: ``InvalidWorkflow`` listing every problem.
    public static func parse(_ json: JSONValue) throws -> WorkflowDefinition {
        var reader = Reader()
        let definition = reader.definition(json)
        if let definition { reader.issues += validateGraph(definition) }
        guard let definition, reader.issues.isEmpty else {
            throw InvalidWorkflow(issues: reader.issues.isEmpty ? [WorkflowIssue(nodeId: nil, message: "invalid workflow")] : reader.issues)
        }
        return definition
    }

    /// Whether `id` can name a workflow: 1 to 64 lowercase letters, digits, `_` or `-`.
    public static func isValidWorkflowID(_ id: String) -> Bool {
        id.wholeMatch(of: /[a-z0-9][a-z0-9_-]{0,63}/) != nil
    }

    // MARK: Graph

    static func validateGraph(_ definition: WorkflowDefinition) -> [WorkflowIssue] {
        var issues: [WorkflowIssue] = []
        let ids = Set(definition.nodes.map(\.id))
        if !ids.contains(definition.start) {
            issues.append(WorkflowIssue(nodeId: nil, message: "start node '\(definition.start)' does not exist"))
        }
        for node in definition.nodes {
            for next in node.kind.successors where !ids.contains(next) {
                issues.append(WorkflowIssue(nodeId: node.id, message: "goes to '\(next)', which does not exist"))
            }
        }
        guard issues.isEmpty else { return issues }

        var reachable: Set<String> = [definition.start]
        var frontier = [definition.start]
        while let id = frontier.popLast() {
            for next in definition.node(id)?.kind.successors ?? [] where reachable.insert(next).inserted { frontier.append(next) }
        }
        for node in definition.nodes where !reachable.contains(node.id) {
            issues.append(WorkflowIssue(nodeId: node.id, message: "is unreachable from the start node"))
        }
        if let loop = loopWithoutWaiting(definition) {
            issues.append(
                WorkflowIssue(nodeId: loop[0], message: "the loop \(loop.joined(separator: " → ")) never waits for input"))
        }
        return issues
    }

    /// A cycle through nodes none of which is a `wait_for_input`, if there is one.
    static func loopWithoutWaiting(_ definition: WorkflowDefinition) -> [String]? {
        enum Mark { case visiting, done }
        var marks: [String: Mark] = [:]
        var path: [String] = []
        func visit(_ id: String) -> [String]? {
            guard let node = definition.node(id) else { return nil }
            if case .waitForInput = node.kind { return nil }
            switch marks[id] {
            case .done?: return nil
            case .visiting?: return Array(path[path.firstIndex(of: id)!...]) + [id]
            case nil: break
            }
            marks[id] = .visiting
            path.append(id)
            for next in node.kind.successors {
                if let loop = visit(next) { return loop }
            }
            path.removeLast()
            marks[id] = .done
            return nil
        }
        for node in definition.nodes {
            if let loop = visit(node.id) { return loop }
        }
        return nil
    }

    // MARK: Reading JSON

    /// Reads the JSON form, noting every problem instead of stopping at the first.
    struct Reader {
        var issues: [WorkflowIssue] = []

        mutating func definition(_ json: JSONValue) -> WorkflowDefinition? {
            guard case .object(let fields) = json else {
                issues.append(WorkflowIssue(nodeId: nil, message: "a workflow is a JSON object"))
                return nil
            }
            unknownFields(fields, allowed: ["id", "version", "name", "start", "nodes"], nodeId: nil)
            let id = string(fields, "id", nodeId: nil)
            if let id, !WorkflowParser.isValidWorkflowID(id) {
                issues.append(WorkflowIssue(nodeId: nil, message: "id must be 1 to 64 lowercase letters, digits, _ or -"))
            }
            var version = 0
            if let raw = fields["version"] {
                if let number = raw.intValue, number >= 0 { version = Int(number) } else {
                    issues.append(WorkflowIssue(nodeId: nil, message: "version must be a whole number"))
                }
            }
            let name = optionalString(fields, "name", nodeId: nil)
            let start = string(fields, "start", nodeId: nil)
            guard case .array(let rawNodes)? = fields["nodes"], !rawNodes.isEmpty else {
                issues.append(WorkflowIssue(nodeId: nil, message: "nodes must be a non-empty array"))
                return nil
            }
            if rawNodes.count > WorkflowParser.maxNodes {
                issues.append(WorkflowIssue(nodeId: nil, message: "a workflow has at most \(WorkflowParser.maxNodes) nodes"))
            }
            var nodes: [WorkflowNode] = []
            var seen: Set<String> = []
            for (index, raw) in rawNodes.enumerated() {
                guard let node = node(raw, index: index) else { continue }
                if !seen.insert(node.id).inserted {
                    issues.append(WorkflowIssue(nodeId: node.id, message: "the id is used by another node too"))
                }
                nodes.append(node)
            }
            guard let id, let start, nodes.count == rawNodes.count else { return nil }
            return WorkflowDefinition(id: id, version: version, name: name, start: start, nodes: nodes)
        }

        mutating func node(_ json: JSONValue, index: Int) -> WorkflowNode? {
            guard case .object(let fields) = json else {
                issues.append(WorkflowIssue(nodeId: nil, message: "nodes[\(index)] is not an object"))
                return nil
            }
            guard let id = fields["id"]?.stringValue, id.wholeMatch(of: /[A-Za-z0-9_-]{1,64}/) != nil else {
                issues.append(WorkflowIssue(nodeId: nil, message: "nodes[\(index)] needs an id of 1 to 64 letters, digits, _ or -"))
                return nil
            }
            guard let type = fields["type"]?.stringValue else {
                issues.append(WorkflowIssue(nodeId: id, message: "needs a type (\(WorkflowNode.typeNames.joined(separator: ", ")))"))
                return nil
            }
            let kind: WorkflowNode.Kind?
            switch type {
            case "message":
                unknownFields(fields, allowed: ["id", "type", "text", "next"], nodeId: id)
                kind = both(string(fields, "text", nodeId: id), string(fields, "next", nodeId: id)).map { .message(text: $0, next: $1) }
            case "wait_for_input":
                unknownFields(fields, allowed: ["id", "type", "saveAs", "next"], nodeId: id)
                let saveAs = optionalString(fields, "saveAs", nodeId: id)
                kind = string(fields, "next", nodeId: id).map { .waitForInput(saveAs: saveAs, next: $0) }
            case "condition":
                unknownFields(fields, allowed: ["id", "type", "branches", "default"], nodeId: id)
                kind = both(branches(fields, nodeId: id), string(fields, "default", nodeId: id)).map { .condition(branches: $0, otherwise: $1) }
            case "tool":
                unknownFields(fields, allowed: ["id", "type", "tool", "arguments", "next"], nodeId: id)
                kind = toolNode(fields, nodeId: id)
            case "ai_reply":
                unknownFields(fields, allowed: ["id", "type", "instructions", "tools", "rules", "fallback", "onFailure", "next"], nodeId: id)
                kind = aiReply(fields, nodeId: id)
            case "handoff":
                unknownFields(fields, allowed: ["id", "type", "team", "reason", "message"], nodeId: id)
                kind = .handoff(
                    team: optionalString(fields, "team", nodeId: id), reason: optionalString(fields, "reason", nodeId: id),
                    message: optionalString(fields, "message", nodeId: id))
            case "end":
                unknownFields(fields, allowed: ["id", "type"], nodeId: id)
                kind = .end
            default:
                issues.append(
                    WorkflowIssue(nodeId: id, message: "unknown node type '\(type)' (known: \(WorkflowNode.typeNames.joined(separator: ", ")))"))
                kind = nil
            }
            return kind.map { WorkflowNode(id: id, kind: $0) }
        }

        mutating func toolNode(_ fields: [String: JSONValue], nodeId: String) -> WorkflowNode.Kind? {
            let next = string(fields, "next", nodeId: nodeId)
            guard let name = string(fields, "tool", nodeId: nodeId) else { return nil }
            guard let tool = ToolName(rawValue: name) else {
                issues.append(WorkflowIssue(nodeId: nodeId, message: "unknown tool '\(name)'"))
                return nil
            }
            var arguments: [String: String] = [:]
            switch fields["arguments"] {
            case nil: break
            case .object(let raw)?:
                for (key, value) in raw {
                    guard let text = value.stringValue else {
                        issues.append(WorkflowIssue(nodeId: nodeId, message: "argument '\(key)' must be a string"))
                        continue
                    }
                    arguments[key] = text
                }
            default:
                issues.append(WorkflowIssue(nodeId: nodeId, message: "arguments must be an object of strings"))
            }
            // Templated values are known only when the node runs: check the names, and the literal values.
            let schema = ToolCatalogue.definition(tool).parameters
            let literal = arguments.filter { !$0.value.contains("{{") }
            var problems = schema.violations(of: .object(literal.mapValues(JSONValue.string)))
            problems.removeAll { problem in arguments.keys.contains { problem.hasPrefix("arguments.\($0): is required") } }
            if arguments.count > literal.count { problems.removeAll { $0.hasPrefix("arguments: needs at least") } }
            issues += problems.map { WorkflowIssue(nodeId: nodeId, message: "tool \(name): \($0)") }
            return next.map { .tool(name: tool, arguments: arguments, next: $0) }
        }

        mutating func aiReply(_ fields: [String: JSONValue], nodeId: String) -> WorkflowNode.Kind? {
            let next = string(fields, "next", nodeId: nodeId)
            let instructions = optionalString(fields, "instructions", nodeId: nodeId) ?? ""
            var tools: [ToolName] = []
            if case .array(let names)? = fields["tools"] {
                for name in names {
                    if let tool = name.stringValue.flatMap(ToolName.init(rawValue:)) { tools.append(tool) } else {
                        issues.append(WorkflowIssue(nodeId: nodeId, message: "unknown tool '\(name)'"))
                    }
                }
            } else if fields["tools"] != nil {
                issues.append(WorkflowIssue(nodeId: nodeId, message: "tools must be an array of tool names"))
            }
            var rules: [AIReply.Rule] = []
            if case .array(let rawRules)? = fields["rules"] {
                for (index, raw) in rawRules.enumerated() {
                    if let rule = rule(raw, index: index, allowed: tools, nodeId: nodeId) { rules.append(rule) }
                }
            } else if fields["rules"] != nil {
                issues.append(WorkflowIssue(nodeId: nodeId, message: "rules must be an array"))
            }
            let reply = AIReply(
                instructions: instructions, tools: tools, rules: rules, fallback: optionalString(fields, "fallback", nodeId: nodeId),
                onFailure: optionalString(fields, "onFailure", nodeId: nodeId))
            return next.map { .aiReply(reply, next: $0) }
        }

        mutating func rule(_ json: JSONValue, index: Int, allowed: [ToolName], nodeId: String) -> AIReply.Rule? {
            guard case .object(let fields) = json, case .array(let rawKeywords)? = fields["keywords"],
                let reply = fields["reply"]?.stringValue
            else {
                issues.append(WorkflowIssue(nodeId: nodeId, message: "rules[\(index)] needs keywords (an array) and a reply"))
                return nil
            }
            unknownFields(fields, allowed: ["keywords", "reply", "calls"], nodeId: nodeId)
            let keywords = rawKeywords.compactMap(\.stringValue).filter { !$0.isEmpty }
            if keywords.count != rawKeywords.count || keywords.isEmpty {
                issues.append(WorkflowIssue(nodeId: nodeId, message: "rules[\(index)].keywords must be non-empty strings"))
            }
            var calls: [ToolCall] = []
            if case .array(let rawCalls)? = fields["calls"] {
                for case .object(let call) in rawCalls {
                    guard let name = call["tool"]?.stringValue else {
                        issues.append(WorkflowIssue(nodeId: nodeId, message: "rules[\(index)].calls need a tool"))
                        continue
                    }
                    let arguments = call["arguments"] ?? .object([:])
                    if let tool = ToolName(rawValue: name), !allowed.contains(tool) {
                        issues.append(WorkflowIssue(nodeId: nodeId, message: "rules[\(index)] calls \(name), which the node's tools do not allow"))
                    }
                    issues += ToolCatalogue.violations(calling: name, with: arguments).map {
                        WorkflowIssue(nodeId: nodeId, message: "rules[\(index)] tool \(name): \($0)")
                    }
                    calls.append(ToolCall(name: name, arguments: arguments))
                }
            }
            return AIReply.Rule(keywords: keywords, reply: reply, calls: calls)
        }

        mutating func branches(_ fields: [String: JSONValue], nodeId: String) -> [Branch]? {
            guard case .array(let raw)? = fields["branches"] else {
                issues.append(WorkflowIssue(nodeId: nodeId, message: "needs branches (an array)"))
                return nil
            }
            var branches: [Branch] = []
            for (index, rawBranch) in raw.enumerated() {
                guard case .object(let branch) = rawBranch, case .object(let test)? = branch["if"], let next = branch["next"]?.stringValue else {
                    issues.append(WorkflowIssue(nodeId: nodeId, message: "branches[\(index)] needs an 'if' object and a 'next'"))
                    continue
                }
                let source: Condition.Source
                switch test["source"]?.stringValue ?? "message" {
                case "message": source = .message
                case "variable":
                    guard let name = test["variable"]?.stringValue else {
                        issues.append(WorkflowIssue(nodeId: nodeId, message: "branches[\(index)] tests a variable but names none"))
                        continue
                    }
                    source = .variable(name)
                case let other:
                    issues.append(WorkflowIssue(nodeId: nodeId, message: "branches[\(index)] has unknown source '\(other)' (message, variable)"))
                    continue
                }
                guard let op = test["op"]?.stringValue.flatMap(Condition.Operator.init(rawValue:)), let value = test["value"]?.stringValue else {
                    issues.append(WorkflowIssue(nodeId: nodeId, message: "branches[\(index)] needs op (contains, equals, matches) and a value"))
                    continue
                }
                if op == .matches {
                    do {
                        _ = try BoundedPattern(value, caseSensitive: true)
                    } catch {
                        issues.append(WorkflowIssue(nodeId: nodeId, message: "branches[\(index)] has an invalid regular expression: \(error)"))
                        continue
                    }
                }
                let caseSensitive: Bool
                if case .bool(let flag)? = test["caseSensitive"] { caseSensitive = flag } else { caseSensitive = false }
                branches.append(Branch(condition: Condition(source: source, op: op, value: value, caseSensitive: caseSensitive), next: next))
            }
            return branches.count == raw.count ? branches : nil
        }

        mutating func string(_ fields: [String: JSONValue], _ key: String, nodeId: String?) -> String? {
            guard let value = fields[key]?.stringValue, !value.isEmpty else {
                issues.append(WorkflowIssue(nodeId: nodeId, message: fields[key] == nil ? "missing '\(key)'" : "'\(key)' must be a non-empty string"))
                return nil
            }
            return value
        }

        mutating func optionalString(_ fields: [String: JSONValue], _ key: String, nodeId: String?) -> String? {
            guard let raw = fields[key] else { return nil }
            guard let value = raw.stringValue else {
                issues.append(WorkflowIssue(nodeId: nodeId, message: "'\(key)' must be a string"))
                return nil
            }
            return value
        }

        mutating func unknownFields(_ fields: [String: JSONValue], allowed: Set<String>, nodeId: String?) {
            for key in fields.keys.sorted() where !allowed.contains(key) {
                issues.append(WorkflowIssue(nodeId: nodeId, message: "unknown field '\(key)'"))
            }
        }

        func both<A, B>(_ a: A?, _ b: B?) -> (A, B)? {
            guard let a, let b else { return nil }
            return (a, b)
        }
    }
}
