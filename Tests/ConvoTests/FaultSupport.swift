import AsyncHTTPClient
import ConvoTestSupport
import EventStore
import Foundation
import NIOCore
import NIOHTTP1
import SharedTypes
import Synchronization

/// A convo deployment of one fault test: its own PostgreSQL cluster (so it can be restarted or stopped
/// without touching other tests), the shared Redis, a tenant and key, and `convo serve` processes.
final class FaultFleet: Sendable {
    struct Created: Decodable {
        var key: String
    }

    /// The fault tests' HTTP client: up to 64 connections per server (the shared client opens 8), so a test's
    /// concurrency is its own. Lives as long as the test process.
    static let http = HTTPClient(
        eventLoopGroup: HTTPClient.defaultEventLoopGroup,
        configuration: HTTPClient.Configuration(connectionPool: .init(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)))

    let postgres: PostgresServer
    let tenant: String
    let key: String
    let env: [String: String]

    /// The fleet's own Redis, when it was asked for one (else the shared one).
    let redis: RedisServer?

    init(environment extra: [String: String] = [:], ownRedis: Bool = false) async throws {
        postgres = try await PostgresServer()
        redis = ownRedis ? try await RedisServer() : nil
        tenant = TestDatabase.uniqueTenant().rawValue
        env = ["CONVO_DATABASE_URL": postgres.url, "CONVO_REDIS_URL": try redis?.url ?? TestDatabase.redisURL, "CI": "true", "CONVO_LOG_LEVEL": "warning"]
            .merging(extra) { $1 }
        let migrated = try await ConvoProcess.run(["migrate"], environment: env)
        guard migrated.status == 0 else { throw ServeProcess.Failure(description: "migrate: \(migrated.stderr)") }
        let made = try await ConvoProcess.run(["keys", "create", "--tenant", tenant, "--scopes", "ingest,read,admin", "--json"], environment: env)
        key = try JSONDecoder().decode(Created.self, from: Data(made.stdout.utf8)).key
    }

    func serve(_ arguments: [String] = []) async throws -> ServeProcess {
        try await ServeProcess(environment: env, arguments: arguments)
    }

    /// Posts a visitor message; the HTTP status, or 0 when no answer came (connection refused or reset).
    func post(_ server: ServeProcess, conversation: String, visitor: String, messageId: String, timeout: Duration = .seconds(30)) async -> (
        status: Int, body: String, retryAfter: String?
    ) {
        var request = HTTPClientRequest(url: "\(server.baseURL)/v1/conversations/\(conversation)/messages")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(key)")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: #"{"visitorUid": "\#(visitor)", "messageId": "\#(messageId)", "text": "where is my order \#(messageId)"}"#))
        do {
            let response = try await Self.http.execute(request, timeout: .seconds(timeout.components.seconds))
            let body = try await response.body.collect(upTo: 1 << 20)
            return (Int(response.status.code), String(buffer: body), response.headers.first(name: "Retry-After"))
        } catch {
            return (0, "\(error)", nil)
        }
    }

    /// `GET path` without a key; the status and body, or 0 when nothing answered.
    func get(_ server: ServeProcess, _ path: String, authorized: Bool = false, timeout: Int64 = 30) async -> (status: Int, body: String) {
        var request = HTTPClientRequest(url: "\(server.baseURL)\(path)")
        if authorized { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
        do {
            let response = try await Self.http.execute(request, timeout: .seconds(timeout))
            return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 22)))
        } catch {
            return (0, "\(error)")
        }
    }

    /// A request with the fleet's key and a JSON body; the status and body, or 0 when nothing answered.
    func send(_ server: ServeProcess, _ method: HTTPMethod, _ path: String, json: String? = nil, key: String? = nil) async -> (status: Int, body: String) {
        var request = HTTPClientRequest(url: "\(server.baseURL)\(path)")
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(key ?? self.key)")
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        do {
            let response = try await Self.http.execute(request, timeout: .seconds(30))
            return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 22)))
        } catch {
            return (0, "\(error)")
        }
    }

    struct ProjectionState: Decodable {
        var name: String
        var lag: Int64
        var activeRunners: Int
        var runningIn: [String]
        var standby: Int
        var state: String
        var waitingSeconds: Double
    }

    /// `convo projections status --json`.
    func projectionStatus() async throws -> [ProjectionState] {
        let output = try await ConvoProcess.run(["projections", "status", "--json"], environment: env)
        guard output.status == 0 else { throw ServeProcess.Failure(description: "projections status: \(output.stderr)") }
        return try JSONDecoder().decode([ProjectionState].self, from: Data(output.stdout.utf8))
    }

    /// Every projection caught up (lag 0) with exactly one active runner across the processes.
    func projectionsCaughtUp() async -> Bool {
        guard let statuses = try? await projectionStatus() else { return false }
        return statuses.count == 3 && statuses.allSatisfy { $0.lag == 0 && $0.activeRunners == 1 && $0.state == "running" }
    }

    /// Runs `body` with a store on this fleet's database.
    func withStore<T: Sendable>(_ body: @Sendable (PostgresEventStore) async throws -> T) async throws -> T {
        try await TestDatabase.withStore(url: try DatabaseURL(postgres.url), body)
    }

    /// Whether every visitor message of the conversations was consumed by the responder, none answered twice.
    func allProcessed(_ conversations: [String]) async throws -> (done: Bool, answeredTwice: [String]) {
        let tenant = TenantID(rawValue: self.tenant)!
        return try await withStore { store in
            var done = true
            var twice: [String] = []
            for conversation in conversations {
                let id = ConversationID(rawValue: conversation)!
                let messagesVersion = try await store.streamVersion(id.messagesStream, tenant: tenant)
                let workflow = try await store.readStreamToEnd(id.workflowStream, tenant: tenant)
                let consumed = try workflow.filter { $0.type == MessagesProcessed.eventType }.map { try $0.decode(MessagesProcessed.self).upToVersion }.max() ?? 0
                if messagesVersion > 0 && consumed < messagesVersion { done = false }
                let answered = try workflow.filter { $0.type == AssistantMessageSent.eventType }.flatMap { try $0.decode(AssistantMessageSent.self).inReplyTo }
                if Set(answered).count != answered.count { twice.append(conversation) }
            }
            return (done, twice)
        }
    }

    /// Workflow events appended by the `convo serve` with process id `pid` (its `instance` metadata ends with
    /// it) and recorded after `date`.
    func decisions(byPid pid: Int32, after date: Date) async throws -> Int {
        try await withStore { store in
            let rows = try await store.client.queryOpen(
                """
                SELECT count(*)::int FROM events
                WHERE stream_category = 'workflow' AND (metadata ->> 'instance') LIKE \("%:\(pid)") AND recorded_at > \(date)
                """, logger: TestDatabase.logger)
            for try await count in rows.decode(Int.self) { return count }
            return 0
        }
    }

    /// The message ids stored for the conversations (each id once per stored event), by conversation.
    func storedMessageIds(_ conversations: [String]) async throws -> [String: [String]] {
        let tenant = TenantID(rawValue: self.tenant)!
        return try await withStore { store in
            var stored: [String: [String]] = [:]
            for conversation in conversations {
                let id = ConversationID(rawValue: conversation)!
                stored[conversation] = try await store.readStreamToEnd(id.messagesStream, tenant: tenant)
                    .filter { $0.type == VisitorMessageReceived.eventType }.map { try $0.decode(VisitorMessageReceived.self).messageId }
            }
            return stored
        }
    }
}

/// Sends visitor messages from `workers` concurrent clients to the servers (round robin) until stopped,
/// recording every answer: the load of a fault test.
final class MessageLoad: Sendable {
    struct Answer: Sendable {
        var conversation: String
        var messageId: String
        var status: Int
        var seconds: Double
        var retryAfter: String?
        var body: String
    }

    private let answers = Mutex<[Answer]>([])
    private let stopped = Atomic<Bool>(false)
    let conversations: [String]

    init(conversations: Int, prefix: String = "f") {
        self.conversations = (0..<conversations).map { "\(prefix)-\($0)" }
    }

    var recorded: [Answer] { answers.withLock { $0 } }

    func stop() { stopped.store(true, ordering: .relaxed) }

    /// Runs until ``stop()`` or `limit`, whichever is first; each worker waits for its answer before it sends again.
    func run(fleet: FaultFleet, servers: [ServeProcess], workers: Int = 8, limit: Duration = .seconds(120), pause: Duration = .milliseconds(20)) async {
        let deadline = ContinuousClock.now + limit
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    var sequence = 0
                    while !self.stopped.load(ordering: .relaxed) && ContinuousClock.now < deadline {
                        let conversation = self.conversations[(worker + sequence * workers) % self.conversations.count]
                        let server = servers[(worker + sequence) % servers.count]
                        let messageId = "w\(worker)-\(sequence)"
                        sequence += 1
                        let started = ContinuousClock.now
                        let answer = await fleet.post(server, conversation: conversation, visitor: "v-\(conversation)", messageId: messageId)
                        let elapsed = ContinuousClock.now - started
                        let seconds = elapsed.inSeconds
                        self.answers.withLock {
                            $0.append(Answer(conversation: conversation, messageId: messageId, status: answer.status, seconds: seconds,
                                             retryAfter: answer.retryAfter, body: answer.body))
                        }
                        try? await Task.sleep(for: pause)
                    }
                }
            }
        }
    }
}

/// Polls `/readyz` of a server every 100 ms until stopped, recording each answer with its time.
final class ReadinessLog: Sendable {
    struct Sample: Sendable {
        var at: ContinuousClock.Instant
        var status: Int
        var body: String
    }

    private let samples = Mutex<[Sample]>([])
    private let stopped = Atomic<Bool>(false)

    var recorded: [Sample] { samples.withLock { $0 } }
    func stop() { stopped.store(true, ordering: .relaxed) }

    func run(fleet: FaultFleet, server: ServeProcess, limit: Duration = .seconds(180)) async {
        let deadline = ContinuousClock.now + limit
        while !stopped.load(ordering: .relaxed) && ContinuousClock.now < deadline {
            // A readiness probe's own time-out: /readyz answers within its checks' 3 s.
            let answer = await fleet.get(server, "/readyz", timeout: 5)
            samples.withLock { $0.append(Sample(at: .now, status: answer.status, body: answer.body)) }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}
