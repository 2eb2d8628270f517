import Foundation
import SharedTypes

/// Something that answers visitor messages at an `ai_reply` node.
public protocol AIProvider: Sendable {
    /// Recorded on ``AssistantMessageSent`` and in failures.
    var name: String { get }
    /// Answers the request's messages, optionally with tool calls.
    ///
    /// - Throws: ``ResponderError`` with ``ResponderError/Code/aiProviderFailed`` when no answer can be had;
    ///   the workflow then records the failure (``WorkflowFailed``, or ``AIReplyFailed`` and its `onFailure` node).
    func reply(to request: AIRequest) async throws -> AIAnswer
}

/// The built-in, deterministic provider: the first of the node's rules with a keyword in the messages
/// answers (with its tool calls); otherwise the node's fallback. No outside service, so convo runs as is.
public struct RuleProvider: AIProvider {
    public let name = "rules"

    public init() {}

    public func reply(to request: AIRequest) async throws -> AIAnswer {
        let text = request.messages.map(\.text).joined(separator: "\n").lowercased()
        for rule in request.reply.rules where rule.keywords.contains(where: { text.contains($0.lowercased()) }) {
            return AIAnswer(text: Template.render(rule.reply, request.variables), toolCalls: rule.calls, provider: name)
        }
        guard let fallback = request.reply.fallback else {
            throw ResponderError(code: .aiProviderFailed, message: "no rule of node '\(request.nodeId)' matched and it has no fallback")
        }
        return AIAnswer(text: Template.render(fallback, request.variables), provider: name)
    }
}
