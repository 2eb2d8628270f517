import ConvoTestSupport
import EventStore
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import NIOFoundationCompat
import Logging
import PostgresNIO
import Projections
import Responder
import SharedTypes
import Testing

@testable import convo

@Suite struct MessageRouteTests {
    struct ErrorResponse: Decodable {
        struct Body: Decodable {
            var code: String
            var message: String
        }

        var error: Body
    }

    struct Accepted: Decodable {
        var streamVersion: Int64
        var duplicate: Bool
    }

    struct ToolsBody: Decodable {
        var tools: [ToolDefinition]
    }

    struct StateResponse: Decodable {
        var state: WorkflowState
    }

    /// The application with its responder, on the shared test database (tenant `default`).
    func withApplication(_ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let logger = TestDatabase.logger
        let database = try TestDatabase.url
        _ = try await TestDatabase.withClient(url: database) { try await Migrator(client: $0, logger: logger).migrate() }
        let client = PostgresClient(configuration: database.clientConfiguration(maximumConnections: 8), backgroundLogger: logger)
        let context = ServerContext.make(client: client, redis: RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL)), logger: logger)
        let app = buildApplication(context, host: "127.0.0.1", port: 0, background: false, logger: logger)
        try await app.test(.live) { client in try await body(client) }
    }

    func post(_ client: any TestClientProtocol, _ conversation: String, _ json: String) async throws -> (HTTPResponse.Status, Data) {
        try await client.execute(
            uri: "/v1/conversations/\(conversation)/messages", method: .post, headers: [.contentType: "application/json"],
            body: ByteBuffer(string: json)
        ) { ($0.status, Data(buffer: $0.body)) }
    }

    @Test func ingestAnswersAcceptedThenDuplicateAndRefusesBadInputWithJSONErrors() async throws {
        try await withApplication { client in
            let conversation = "c-\(UUID().uuidString.prefix(12))"
            let (status, body) = try await post(client, conversation, #"{"visitorUid": "v-1", "messageId": "m1", "text": "hello"}"#)
            #expect(status == .accepted)
            #expect(try JSONDecoder().decode(Accepted.self, from: body).streamVersion == 2)
            let (again, againBody) = try await post(client, conversation, #"{"visitorUid": "v-1", "messageId": "m1", "text": "hello"}"#)
            #expect(again == .ok)
            #expect(try JSONDecoder().decode(Accepted.self, from: againBody).duplicate)

            let cases: [(String, String, HTTPResponse.Status, String)] = [
                (conversation, #"{"visitorUid": "v-2", "messageId": "m2", "text": "hi"}"#, .conflict, "conversation_owned_by_another_visitor"),
                (conversation, #"{"visitorUid": "v-1", "messageId": "m3", "text": "   "}"#, .badRequest, "invalid_message"),
                (conversation, #"{"visitorUid": "v-1", "text": "no id"}"#, .badRequest, "invalid_body"),
                (conversation, "not json", .badRequest, "invalid_body"),
                (conversation, #"{"visitorUid": "bad visitor!", "messageId": "m4", "text": "x"}"#, .badRequest, "invalid_visitor"),
                ("bad%20id!", #"{"visitorUid": "v-1", "messageId": "m5", "text": "x"}"#, .badRequest, "invalid_conversation"),
            ]
            for (target, json, expected, code) in cases {
                let (status, body) = try await post(client, target, json)
                #expect(status == expected, "\(json)")
                #expect((try? JSONDecoder().decode(ErrorResponse.self, from: body))?.error.code == code, "\(json)")
            }
        }
    }

    @Test func theStateRouteShowsTheFoldAfterProcessingAndToolsServesTheCatalogue() async throws {
        try await withApplication { client in
            let conversation = ConversationID(rawValue: "c-\(UUID().uuidString.prefix(12))")!
            try await client.execute(uri: "/v1/conversations/\(conversation)/state", method: .get) { response in
                #expect(response.status == .notFound)
            }
            _ = try await post(client, conversation.rawValue, #"{"visitorUid": "v-9", "messageId": "m1", "text": "my order has not arrived"}"#)
            // Process as the responder service would (it is left out here so other suites' tenants stay untouched).
            let logger = TestDatabase.logger
            try await TestDatabase.withClient(url: try TestDatabase.url) { pg in
                let processor = ConversationProcessor(
                    store: PostgresEventStore(client: pg, logger: logger), redis: RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL)),
                    workflows: WorkflowRepository(client: pg, logger: logger), logger: logger)
                try await processor.process(tenant: .default, visitor: VisitorUID(rawValue: "v-9")!, conversation: conversation)
            }
            try await client.execute(uri: "/v1/conversations/\(conversation)/state", method: .get) { response in
                #expect(response.status == .ok)
                let state = try JSONDecoder.iso8601.decode(StateResponse.self, from: Data(buffer: response.body)).state
                #expect(state.workflowId == "support")
                #expect(state.messagesConsumed == 2)
                #expect(state.status == .waitingForInput)
                #expect(state.variables["question"] == "my order has not arrived")
            }
            let served = try await client.execute(uri: "/v1/tools", method: .get) { response in
                try JSONDecoder().decode(ToolsBody.self, from: Data(buffer: response.body)).tools
            }
            #expect(served == ToolCatalogue.all)
        }
    }
}

extension JSONDecoder {
    static var iso8601: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
