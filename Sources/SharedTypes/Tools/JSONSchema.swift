import Synchronization

/// The part of JSON Schema that tool arguments use: objects of strings with enums, lengths and patterns.
/// Encodes to standard JSON Schema, so front ends and AI providers read it as is.
public struct JSONSchema: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case object
        case string
    }

    public var type: Kind
    public var description: String?
    public var properties: [String: JSONSchema]?
    public var required: [String]?
    public var additionalProperties: Bool?
    public var minProperties: Int?
    public var `enum`: [String]?
    public var minLength: Int?
    public var maxLength: Int?
    /// An ECMA-262 regular expression the whole string must match.
    public var pattern: String?

    public static func object(
        _ properties: [String: JSONSchema], required: [String], minProperties: Int? = nil, description: String? = nil
    ) -> JSONSchema {
        JSONSchema(
            type: .object, description: description, properties: properties, required: required, additionalProperties: false,
            minProperties: minProperties)
    }

    public static func string(
        _ description: String, enum values: [String]? = nil, minLength: Int? = 1, maxLength: Int? = nil, pattern: String? = nil
    ) -> JSONSchema {
        JSONSchema(type: .string, description: description, enum: values, minLength: minLength, maxLength: maxLength, pattern: pattern)
    }

    /// Every way `value` breaks this schema, as `path: problem` sentences; empty when it fits.
    public func violations(of value: JSONValue, at path: String = "arguments") -> [String] {
        switch (type, value) {
        case (.object, .object(let fields)):
            var problems: [String] = []
            for name in required ?? [] where fields[name] == nil { problems.append("\(path).\(name): is required") }
            if let minProperties, fields.count < minProperties {
                problems.append("\(path): needs at least \(minProperties) of \((properties ?? [:]).keys.sorted().joined(separator: ", "))")
            }
            for (name, field) in fields.sorted(by: { $0.key < $1.key }) {
                if let schema = properties?[name] {
                    problems += schema.violations(of: field, at: "\(path).\(name)")
                } else if additionalProperties == false {
                    problems.append("\(path).\(name): is not an argument of this tool")
                }
            }
            return problems
        case (.string, .string(let text)):
            var problems: [String] = []
            if let values = self.enum, !values.contains(text) { problems.append("\(path): must be one of \(values.joined(separator: ", "))") }
            if let minLength, text.count < minLength { problems.append("\(path): must have at least \(minLength) characters") }
            if let maxLength, text.count > maxLength { problems.append("\(path): must have at most \(maxLength) characters") }
            if let pattern, text.wholeMatch(of: CompiledPatterns.regex(pattern)) == nil { problems.append("\(path): must match \(pattern)") }
            return problems
        default:
            return ["\(path): must be a\(type == .object ? "n object" : " string")"]
        }
    }
}

/// The schemas' patterns, compiled once each: compiling one took longer than the rest of a tool call's checks.
/// Patterns come from the tool catalogue (code), never from input.
enum CompiledPatterns {
    /// `Regex` holds no mutable state once built: shared between threads, matched from each.
    private struct Shared: @unchecked Sendable {
        let regex: Regex<AnyRegexOutput>
    }

    private static let compiled = Mutex<[String: Shared]>([:])

    static func regex(_ pattern: String) -> Regex<AnyRegexOutput> {
        if let known = compiled.withLock({ $0[pattern] }) { return known.regex }
        let regex = try! Regex(pattern)
        compiled.withLock { $0[pattern] = Shared(regex: regex) }
        return regex
    }
}
