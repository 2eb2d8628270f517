import ConvoTestSupport
import Foundation
import Hummingbird
import Logging
import NIOCore
import Responder
import SharedTypes
import Synchronization
import Testing

@Suite struct OpenAIProviderTests {
    static let answerWithTool = """
        {"model": "stub-model-1", "choices": [{"message": {"role": "assistant", "content": "I've tagged it.",
          "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add_tag", "arguments": "{\\"tag\\":\\"shipping\\"}"}}]}}]}
        """

    func request() -> AIRequest {
        AIRequest(
            nodeId: "answer", reply: AIReply(instructions: "Be brief.", tools: [.addTag]), tools: [ToolCatalogue.definition(.addTag)],
            messages: [PendingMessage(messageId: "m1", text: "where is my parcel", streamVersion: 2, eventId: UUID())], variables: [:])
    }

    func provider(_ baseURL: String, timeout: Duration = .seconds(5), attempts: Int = 3) -> OpenAICompatibleProvider {
        OpenAICompatibleProvider(
            configuration: .init(baseURL: baseURL, model: "stub-model", apiKey: "sk-test", timeout: timeout, maxAttempts: attempts, initialBackoff: .milliseconds(20)),
            logger: Logger(label: "test"))
    }

    @Test func anAnswerWithToolCallsMapsToTheCatalogueAndRecordsModelAndLatency() async throws {
        let server = StubAIServer([.init(status: .ok, body: Self.answerWithTool)])
        let answer = try await server.run { try await provider($0).reply(to: request()) }
        #expect(answer.text == "I've tagged it.")
        #expect(answer.toolCalls == [ToolCall(name: "add_tag", arguments: ["tag": "shipping"])])
        #expect(answer.provider == "openai-compatible")
        #expect(answer.model == "stub-model-1")
        #expect((answer.latencyMs ?? -1) >= 0)
        let sent = try #require(server.requests.first)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(sent.utf8)) as? [String: Any])
        #expect(json["model"] as? String == "stub-model")
        let messages = json["messages"] as? [[String: Any]]
        #expect(messages?.map { $0["role"] as? String } == ["system", "user"])
        #expect(messages?.last?["content"] as? String == "where is my parcel")
        let tools = json["tools"] as? [[String: Any]]
        let function = tools?.first?["function"] as? [String: Any]
        #expect(function?["name"] as? String == "add_tag")
        #expect((function?["parameters"] as? [String: Any])?["type"] as? String == "object")
    }

    @Test func busyAndFailingAnswersAreRetriedWithBackoff() async throws {
        let server = StubAIServer([
            .init(status: .tooManyRequests, body: "{}"), .init(status: .badGateway, body: "{}"), .init(status: .ok, body: Self.answerWithTool),
        ])
        let answer = try await server.run { try await provider($0).reply(to: request()) }
        #expect(answer.text == "I've tagged it.")
        #expect(server.requests.count == 3)
    }

    @Test func exhaustedRetriesTimeoutsAndBadAnswersFailClearly() async throws {
        let failing = StubAIServer(Array(repeating: .init(status: .serviceUnavailable, body: "{}"), count: 3))
        let exhausted = await #expect(throws: ResponderError.self) { try await failing.run { try await provider($0).reply(to: request()) } }
        #expect(exhausted?.code == .aiProviderFailed)
        #expect(exhausted?.message.contains("after 3 attempts") == true)
        #expect(failing.requests.count == 3)

        let slow = StubAIServer([.init(status: .ok, body: Self.answerWithTool, delay: .seconds(3))])
        let timedOut = await #expect(throws: ResponderError.self) {
            try await slow.run { try await provider($0, timeout: .milliseconds(300), attempts: 1).reply(to: request()) }
        }
        #expect(timedOut?.code == .aiProviderFailed)

        let refused = StubAIServer([.init(status: .unauthorized, body: #"{"error": "bad key"}"#)])
        let unauthorized = await #expect(throws: ResponderError.self) { try await refused.run { try await provider($0).reply(to: request()) } }
        #expect(unauthorized?.message.contains("HTTP 401") == true)
        #expect(refused.requests.count == 1)  // a client error is not retried

        let garbled = StubAIServer([.init(status: .ok, body: #"{"choices": []}"#)])
        await #expect(throws: ResponderError.self) { try await garbled.run { try await provider($0).reply(to: request()) } }
    }

    @Test func theEnvironmentChoosesTheProvider() throws {
        #expect(try OpenAICompatibleProvider.Configuration.fromEnvironment([:]) == nil)
        let configured = try #require(
            try OpenAICompatibleProvider.Configuration.fromEnvironment(["CONVO_AI_BASE_URL": "http://127.0.0.1:9/v1/", "CONVO_AI_MODEL": "m", "CONVO_AI_API_KEY": "k"]))
        #expect(configured.baseURL == "http://127.0.0.1:9/v1" && configured.model == "m" && configured.apiKey == "k")
        #expect(throws: ResponderError.self) { try OpenAICompatibleProvider.Configuration.fromEnvironment(["CONVO_AI_BASE_URL": "http://x"]) }
    }
}
