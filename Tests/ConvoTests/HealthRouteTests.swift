import ConvoTestSupport
import EventStore
import Foundation
import HummingbirdTesting
import Logging
import NIOCore
import PostgresNIO
import Responder
import SharedTypes
import HTTPTypes
import Testing

@testable import convo

@Suite struct HealthRouteTests {
    struct Readiness: Decodable {
        struct Failure: Decodable {
            var code: String
            var message: String
        }

        var status: String
        var checks: [String: String]
        var error: Failure?
    }

    /// `readinessTimeout`: long where a check is expected to pass. The checks run in this test process beside
    /// every other test, whose tasks can keep a short check waiting for seconds; the timeout itself is tested
    /// with an unreachable database, where no wait is long enough.
    func withApplication(
        database: DatabaseURL, redisURL: String, readinessTimeout: Duration = .seconds(30), demoTenant: TenantID? = nil,
        _ body: @Sendable (any TestClientProtocol) async throws -> Void
    ) async throws {
        let logger = TestDatabase.logger
        let client = PostgresClient(configuration: database.clientConfiguration(maximumConnections: 4), backgroundLogger: logger)
        var context = ServerContext.make(
            client: client, redis: RedisClient(configuration: try RedisConfiguration(url: redisURL, timeout: .milliseconds(500))), keyring: TestDatabase.keyring,
            requestDeadline: .seconds(2), logger: logger)
        context.readinessTimeout = readinessTimeout
        context.demoTenant = demoTenant
        let app = buildApplication(context, host: "127.0.0.1", port: 0, background: false, logger: logger)
        try await app.test(.live) { client in try await body(client) }
    }

    @Test func healthzAndReadyzAnswerWhenEverythingIsUp() async throws {
        let database = try TestDatabase.url
        try await TestDatabase.withClient(url: database) { try await Migrator(client: $0, logger: TestDatabase.logger).migrate() }
        try await withApplication(database: database, redisURL: try TestDatabase.redisURL) { client in
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == #"{"status":"ok"}"#)
            }
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .ok)
                let body = try JSONDecoder().decode(Readiness.self, from: response.body)
                #expect(body.status == "ready")
                #expect(body.checks == ["postgres": "ok", "migrations": "ok", "redis": "ok"])
                #expect(body.error == nil)
            }
        }
    }

    @Test func readyzNamesAnUnreachableRedis() async throws {
        try await withApplication(database: try TestDatabase.url, redisURL: "redis://127.0.0.1:1") { client in
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                let body = try JSONDecoder().decode(Readiness.self, from: response.body)
                #expect(body.checks["redis"]?.hasPrefix("unavailable") == true)
                // It says what failed, not where: anyone may ask /readyz.
                #expect(!String(buffer: response.body).contains("127.0.0.1"), "\(String(buffer: response.body))")
                #expect(body.checks["postgres"] == "ok")
                #expect(body.error?.code == "not_ready")
                #expect(body.error?.message.contains("redis") == true)
            }
        }
    }

    @Test func readyzNamesPendingMigrations() async throws {
        try await TestDatabase.withFreshDatabase { database in
            try await withApplication(database: database, redisURL: try TestDatabase.redisURL) { client in
                try await client.execute(uri: "/readyz", method: .get) { response in
                    #expect(response.status == .serviceUnavailable)
                    let body = try JSONDecoder().decode(Readiness.self, from: response.body)
                    #expect(body.checks["migrations"] == "\(Migration.all.count) pending: run convo migrate")
                    #expect(body.checks["redis"] == "ok")
                }
            }
        }
    }

    @Test func readyzNamesAnUnreachableDatabaseWithinItsTimeout() async throws {
        let unreachable = try DatabaseURL("postgres://convo@127.0.0.1:1/convo")
        try await withApplication(database: unreachable, redisURL: try TestDatabase.redisURL, readinessTimeout: .seconds(3)) { client in
            let clock = ContinuousClock()
            let start = clock.now
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                let body = try JSONDecoder().decode(Readiness.self, from: response.body)
                #expect(body.checks["postgres"]?.hasPrefix("unavailable") == true)
                #expect(!String(buffer: response.body).contains("127.0.0.1"), "\(String(buffer: response.body))")
            }
            // Bounded by the check's own timeout (a few seconds), not the pool's endless wait; slack for a busy machine.
            #expect(clock.now - start < .seconds(15))
        }
    }

    @Test func anUnreachableDatabaseAnswers503WithRetryAfterAndJSON() async throws {
        let unreachable = try DatabaseURL("postgres://convo@127.0.0.1:1/convo")
        try await withApplication(database: unreachable, redisURL: try TestDatabase.redisURL) { client in
            let key = "cvk_0123456789abcdef_" + String(repeating: "A", count: 43)
            try await client.execute(
                uri: "/v1/conversations/c1/messages", method: .post,
                headers: [.authorization: "Bearer \(key)", .contentType: "application/json"],
                body: ByteBuffer(string: #"{"visitorUid": "v-1", "text": "hello"}"#)
            ) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers[.retryAfter] == "\(APIError.retryAfterSeconds)")
                let body = try JSONDecoder().decode(ErrorResponse.self, from: response.body)
                #expect(body.error.code == "timeout" && body.error.message.contains("PostgreSQL"))
            }
        }
    }

    /// The console and the demo with PostgreSQL away: their pages still load (they are in the binary), and every
    /// call that needs the database answers 503 with JSON and `Retry-After`, never a crash or a hang. The demo's
    /// message is answered "not stored" (503), not "maybe stored" (504): nothing of it was sent. (The test then
    /// takes a minute: the application's shutdown waits for the writer still waiting for a connection.)
    @Test func theConsoleAndTheDemoAnswer503WhileTheDatabaseIsAway() async throws {
        let unreachable = try DatabaseURL("postgres://convo@127.0.0.1:1/convo")
        try await withApplication(database: unreachable, redisURL: try TestDatabase.redisURL, demoTenant: TenantID("demo-tenant")) { client in
            for page in ["/console", "/console/assets/console.js", "/demo", "/demo/assets/demo.js"] {
                try await client.execute(uri: page, method: .get) { response in #expect(response.status == .ok, "\(page)") }
            }
            let key = "cvk_0123456789abcdef_" + String(repeating: "A", count: 43)
            let session = "convo_session=cvs_" + String(repeating: "B", count: 43)
            let visitor = "convo_demo=cvd_" + String(repeating: "C", count: 43)
            let calls: [(HTTPRequest.Method, String, HTTPFields, String?)] = [
                (.post, "/console/session", [.contentType: "application/json"], #"{"key": "\#(key)"}"#),
                (.get, "/console/session", [.cookie: session], nil),
                (.get, "/v1/projections", [.authorization: "Bearer \(key)"], nil),
                (.post, "/demo/messages", [.cookie: visitor, .contentType: "application/json"], #"{"messageId": "m-1", "text": "hello"}"#),
            ]
            for (method, uri, headers, body) in calls {
                try await client.execute(uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }) { response in
                    #expect(response.status == .serviceUnavailable, "\(uri): \(response.status)")
                    #expect(response.headers[.retryAfter] != nil, "\(uri)")
                    let error = try? JSONDecoder().decode(ErrorResponse.self, from: response.body)
                    #expect(error != nil, "\(uri): \(String(buffer: response.body))")
                }
            }
        }
    }
}
