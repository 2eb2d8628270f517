import AsyncHTTPClient
import ConvoTestSupport
import EventStore
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOFoundationCompat
import PostgresNIO
import Responder
import SharedTypes

@testable import convo

/// The application on the shared test database, with a tenant of its own and a key per scope.
struct APIHarness: Sendable {
    let client: any TestClientProtocol
    let tenant: TenantID
    /// Keys of `tenant`: one per scope, and one with all three.
    let ingest: String
    let read: String
    let admin: String
    let all: String
    /// A key of another tenant, with every scope.
    let stranger: String
    let strangerTenant: TenantID
    let pg: PostgresClient
    let table: RouteTable

    struct Reply: Sendable {
        var status: HTTPResponse.Status
        var headers: HTTPFields
        var body: Data
        var errorCode: String? { (try? JSONDecoder().decode(ErrorResponse.self, from: body))?.error.code }
        var errorMessage: String { (try? JSONDecoder().decode(ErrorResponse.self, from: body))?.error.message ?? "" }
        func decode<T: Decodable>(_ type: T.Type) throws -> T {
            do {
                return try JSONDecoder.iso8601.decode(type, from: body)
            } catch {
                throw Unexpected(description: "\(status) \(text.prefix(500)): \(error)")
            }
        }

        struct Unexpected: Error, CustomStringConvertible {
            var description: String
        }
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// Runs `body` against a live application (no responder or runners: `process` runs the responder's step).
    ///
    /// `database`: a database of the test's own (one that takes DDL), instead of the shared one.
    /// `measuresProjections`: `/readyz`, `/metrics` and `/v1/projections` report the standard projections
    /// (no runner runs them here). `demo`: `/demo` is served, writing into the harness's tenant.
    static func with(
        database: DatabaseURL? = nil, measuresProjections: Bool = false, demo: Bool = false, _ body: @Sendable (APIHarness) async throws -> Void
    ) async throws {
        let logger = TestDatabase.logger
        let database = try database ?? TestDatabase.url
        try await TestDatabase.withClient(url: database) { pg in
            try await Migrator(client: pg, logger: logger).migrate()
            let keys = APIKeyStore(client: pg, logger: logger)
            let tenant = TestDatabase.uniqueTenant()
            let made = try await [[Scope.ingest], [.read], [.admin], Scope.tenantScopes].asyncMap { try await keys.create(tenant: tenant, scopes: Set($0), name: "test").key }
            let strangerTenant = TestDatabase.uniqueTenant()
            let stranger = try await keys.create(tenant: strangerTenant, scopes: Set(Scope.tenantScopes), name: "stranger").key
            let client = PostgresClient(configuration: database.clientConfiguration(maximumConnections: 8), backgroundLogger: logger)
            var context = ServerContext.make(
                client: client, redis: RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL)), keyring: TestDatabase.keyring, keyCacheTTL: .zero,
                // Generous: route tests share a busy 2-core machine with the fault suites; deadlines have tests of their own.
                requestDeadline: .seconds(60),
                logger: logger)
            if demo { context.demoTenant = tenant }
            let table = buildRouter(context, background: false).1
            let app = buildApplication(context, host: "127.0.0.1", port: 0, roles: .none, measuresProjections: measuresProjections, logger: logger)
            try await app.test(.live) { client in
                try await body(
                    APIHarness(
                        client: client, tenant: tenant, ingest: made[0], read: made[1], admin: made[2], all: made[3], stranger: stranger, strangerTenant: strangerTenant, pg: pg,
                        table: table))
            }
        }
    }

    func request(
        _ method: HTTPRequest.Method, _ uri: String, key: String?, body: String? = nil, headers: HTTPFields = [:], json: Bool = true
    ) async throws -> Reply {
        var fields = headers
        if let key { fields[.authorization] = "Bearer \(key)" }
        if body != nil, json, fields[.contentType] == nil { fields[.contentType] = "application/json" }
        return try await client.execute(uri: uri, method: method, headers: fields, body: body.map { ByteBuffer(string: $0) }) { response in
            Reply(status: response.status, headers: response.headers, body: Data(buffer: response.body))
        }
    }

    /// Posts over a connection of its own (the test client sends one request at a time), so that posts
    /// from many tasks really reach the server at once.
    func postConcurrently(_ conversation: String, _ json: String, key: String? = nil) async throws -> Reply {
        guard let port = client.port else { throw Reply.Unexpected(description: "the application has no port") }
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/conversations/\(conversation)/messages")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(key ?? ingest)")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: json))
        let response = try await FaultFleet.http.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 1 << 20)
        var headers = HTTPFields()
        if let retryAfter = response.headers.first(name: "Retry-After") { headers[.retryAfter] = retryAfter }
        return Reply(status: .init(code: Int(response.status.code)), headers: headers, body: Data(buffer: body))
    }

    /// A POST over a connection of its own (see ``postConcurrently(_:_:key:)``), to any path.
    func postConcurrently(path: String, key: String, json: String = "{}") async throws -> Reply {
        guard let port = client.port else { throw Reply.Unexpected(description: "the application has no port") }
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(key)")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: json))
        let response = try await FaultFleet.http.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 1 << 20)
        return Reply(status: .init(code: Int(response.status.code)), headers: [:], body: Data(buffer: body))
    }

    func post(_ conversation: String, _ json: String, key: String? = nil) async throws -> Reply {
        try await request(.post, "/v1/conversations/\(conversation)/messages", key: key ?? ingest, body: json)
    }

    /// Runs the responder's step for a conversation, as the responder service would.
    func process(_ conversation: String, visitor: String) async throws {
        let logger = TestDatabase.logger
        let processor = ConversationProcessor(
            store: PostgresEventStore(client: pg, keyring: TestDatabase.keyring, logger: logger), redis: RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL)),
            workflows: WorkflowRepository(client: pg, logger: logger), logger: logger)
        try await processor.process(tenant: tenant, visitor: VisitorUID(rawValue: visitor)!, conversation: ConversationID(rawValue: conversation)!)
    }

    /// How many events the conversation has, counted in the table.
    func eventCount(_ conversation: String) async throws -> Int64 {
        let rows = try await pg.query(
            """
            SELECT count(*) FROM events WHERE tenant_id = \(tenant.rawValue)
              AND stream_name IN (\("messages-" + conversation), \("workflow-" + conversation))
            """)
        for try await count in rows.decode(Int64.self) { return count }
        return 0
    }

    static func conversationID() -> String { "c-\(UUID().uuidString.prefix(12).lowercased())" }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}

extension JSONDecoder {
    static var iso8601: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
