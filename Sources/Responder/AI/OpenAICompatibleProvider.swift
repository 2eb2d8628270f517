import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import SharedTypes

/// An OpenAI-compatible chat-completions provider (`POST {baseURL}/chat/completions`).
///
/// The node's allowed tools are offered as functions with the catalogue's JSON Schemas; tool calls come
/// back as catalogue calls. 429 and 5xx answers are retried with exponential backoff; every attempt has a
/// timeout. Provider, model and latency are recorded on ``AssistantMessageSent``.
public struct OpenAICompatibleProvider: AIProvider {
    public struct Configuration: Sendable {
        /// e.g. `https://api.openai.com/v1`.
        public var baseURL: String
        public var model: String
        public var apiKey: String?
        /// Per attempt. Default: 20 seconds.
        public var timeout: Duration
        /// Attempts in all, the first included. Default: 3.
        public var maxAttempts: Int
        /// The first retry's delay; doubled for each later one. Default: 500 ms.
        public var initialBackoff: Duration

        public init(
            baseURL: String, model: String, apiKey: String? = nil, timeout: Duration = .seconds(20), maxAttempts: Int = 3,
            initialBackoff: Duration = .milliseconds(500)
        ) {
            self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
            self.model = model
            self.apiKey = apiKey
            self.timeout = timeout
            self.maxAttempts = max(1, maxAttempts)
            self.initialBackoff = initialBackoff
        }

        /// From `CONVO_AI_BASE_URL`, `CONVO_AI_MODEL` and `CONVO_AI_API_KEY`; `nil` when no base URL is set.
        ///
        /// - Throws: ``ResponderError`` with ``ResponderError/Code/invalidConfiguration`` when the model is missing.
        public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Configuration? {
            guard let base = environment["CONVO_AI_BASE_URL"], !base.isEmpty else { return nil }
            guard let model = environment["CONVO_AI_MODEL"], !model.isEmpty else {
                throw ResponderError(code: .invalidConfiguration, message: "CONVO_AI_BASE_URL is set but CONVO_AI_MODEL is not")
            }
            return Configuration(baseURL: base, model: model, apiKey: environment["CONVO_AI_API_KEY"])
        }
    }

    public let name = "openai-compatible"
    public let configuration: Configuration
    let httpClient: HTTPClient
    let logger: Logger

    public init(configuration: Configuration, httpClient: HTTPClient = .shared, logger: Logger) {
        self.configuration = configuration
        self.httpClient = httpClient
        self.logger = logger
    }

    public func reply(to request: AIRequest) async throws -> AIAnswer {
        let body = try JSONEncoder().encode(ChatRequest(request, model: configuration.model))
        let clock = ContinuousClock()
        let start = clock.now
        var backoff = configuration.initialBackoff
        var lastProblem = "no attempt made"
        for attempt in 1...configuration.maxAttempts {
            if attempt > 1 {
                try await Task.sleep(for: backoff)
                backoff *= 2
            }
            var http = HTTPClientRequest(url: configuration.baseURL + "/chat/completions")
            http.method = .POST
            http.headers.add(name: "Content-Type", value: "application/json")
            if let key = configuration.apiKey { http.headers.add(name: "Authorization", value: "Bearer \(key)") }
            http.body = .bytes(ByteBuffer(data: body))
            let response: HTTPClientResponse
            let bytes: ByteBuffer
            do {
                let timeout = TimeAmount.nanoseconds(configuration.timeout.nanoseconds)
                response = try await httpClient.execute(http, timeout: timeout)
                bytes = try await response.body.collect(upTo: 4 << 20)
            } catch {
                lastProblem = "request failed (\(type(of: error)))"
                logger.warning("AI provider request failed", metadata: ["convo.attempt": "\(attempt)", "convo.error": "\(error)"])
                continue
            }
            let status = response.status.code
            if status == 429 || status >= 500 {
                lastProblem = "HTTP \(status)"
                logger.warning("AI provider busy or failing, retrying", metadata: ["convo.attempt": "\(attempt)", "convo.status": "\(status)"])
                continue
            }
            guard status == 200 else {
                throw ResponderError(code: .aiProviderFailed, message: "\(name) answered HTTP \(status)")
            }
            let latency = clock.now - start
            return try answer(from: bytes, latencyMs: Int(latency.nanoseconds / 1_000_000))
        }
        throw ResponderError(code: .aiProviderFailed, message: "\(name) gave no answer after \(configuration.maxAttempts) attempts: \(lastProblem)")
    }

    private func answer(from bytes: ByteBuffer, latencyMs: Int) throws -> AIAnswer {
        guard let response = try? JSONDecoder().decode(ChatResponse.self, from: bytes), let message = response.choices.first?.message else {
            throw ResponderError(code: .aiProviderFailed, message: "\(name) answered with no choice")
        }
        var calls: [ToolCall] = []
        for call in message.toolCalls ?? [] {
            let arguments = (try? JSONDecoder().decode(JSONValue.self, from: Data(call.function.arguments.utf8))) ?? .string(call.function.arguments)
            calls.append(ToolCall(name: call.function.name, arguments: arguments))
        }
        let text = message.content ?? ""
        guard !text.isEmpty || !calls.isEmpty else {
            throw ResponderError(code: .aiProviderFailed, message: "\(name) answered with neither text nor tool calls")
        }
        return AIAnswer(text: text, toolCalls: calls, provider: name, model: response.model ?? configuration.model, latencyMs: latencyMs)
    }
}

// MARK: Wire format

private struct ChatRequest: Encodable {
    struct Message: Encodable {
        var role: String
        var content: String
    }

    struct Tool: Encodable {
        struct Function: Encodable {
            var name: String
            var description: String
            var parameters: JSONSchema
        }

        var type = "function"
        var function: Function
    }

    var model: String
    var messages: [Message]
    var tools: [Tool]?

    init(_ request: AIRequest, model: String) {
        self.model = model
        var messages = [Message(role: "system", content: request.reply.instructions)]
        messages += request.messages.map { Message(role: "user", content: $0.text) }
        self.messages = messages
        let tools = request.tools.map { Tool(function: .init(name: $0.name.rawValue, description: $0.description, parameters: $0.parameters)) }
        self.tools = tools.isEmpty ? nil : tools
    }
}

private struct ChatResponse: Decodable {
    struct Choice: Decodable {
        var message: Message
    }

    struct Message: Decodable {
        var content: String?
        var toolCalls: [Call]?

        enum CodingKeys: String, CodingKey {
            case content
            case toolCalls = "tool_calls"
        }
    }

    struct Call: Decodable {
        struct Function: Decodable {
            var name: String
            var arguments: String
        }

        var function: Function
    }

    var model: String?
    var choices: [Choice]
}
