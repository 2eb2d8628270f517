import AsyncHTTPClient
import ConvoTestSupport
import EventStore
import Foundation
import NIOCore
import PostgresNIO
import Projections
import SharedTypes
import Testing

/// Two `convo serve` processes behind an imaginary load balancer, sharing one PostgreSQL and one Redis.
@Suite(.timeLimit(.minutes(5))) struct MultiInstanceTests {
    struct Created: Decodable {
        var key: String
    }

    @Test func twoServersShareTheWorkAndEveryMessageIsStoredAndProcessedExactlyOnce() async throws {
        try await TestDatabase.withFreshDatabase { database in
            let url = "postgres://\(database.username)@\(database.host):\(database.port)/\(database.database)"
            // Each test run has its own Redis keys: the tenant is new.
            let tenant = TestDatabase.uniqueTenant().rawValue
            let env = ["CONVO_DATABASE_URL": url, "CI": "true", "CONVO_LOG_LEVEL": "warning"]
            #expect(try await ConvoProcess.run(["migrate"], environment: env).status == 0)
            let made = try await ConvoProcess.run(["keys", "create", "--tenant", tenant, "--scopes", "ingest,read", "--json"], environment: env)
            let key = try JSONDecoder().decode(Created.self, from: Data(made.stdout.utf8)).key

            let servers = [try await ServeProcess(environment: env), try await ServeProcess(environment: env)]
            let visitors = 50
            let perVisitor = 20
            // Every message once, in random order, each to a random server, 64 at a time.
            var sends = (0..<visitors).flatMap { visitor in (0..<perVisitor).map { (visitor, $0) } }
            sends.shuffle()
            let statuses: [Int]
            do {
                statuses = try await Self.send(sends, to: servers, key: key)
            } catch {
                // The servers' logs go with them: say here whether one was still running and what it wrote
                // (a suite run once failed here with "I/O on closed channel" and nothing else to go on).
                for (index, server) in servers.enumerated() {
                    Issue.record("server \(index): \(server.isRunning ? "running" : "exited"); \(server.failureSummary)")
                }
                throw error
            }
            #expect(statuses.count == visitors * perVisitor && statuses.allSatisfy { $0 == 202 }, "\(Dictionary(grouping: statuses) { $0 }.mapValues(\.count))")

            try await TestDatabase.withStore(url: database) { store in
                let tenantID = TenantID(rawValue: tenant)!
                // Every conversation's messages consumed by the responders of the two processes.
                let done = try await eventually(timeout: .seconds(120)) {
                    var all = true
                    for visitor in 0..<visitors {
                        let conversation = ConversationID(rawValue: "mi-\(visitor)")!
                        let processed = try await store.readStreamToEnd(conversation.workflowStream, tenant: tenantID)
                            .filter { $0.type == MessagesProcessed.eventType }.last.map { try $0.decode(MessagesProcessed.self).upToVersion } ?? 0
                        if processed < Int64(perVisitor + 1) { all = false; break }
                    }
                    return all
                }
                #expect(done)
                for visitor in 0..<visitors {
                    let conversation = ConversationID(rawValue: "mi-\(visitor)")!
                    let messages = try await store.readStreamToEnd(conversation.messagesStream, tenant: tenantID)
                    // Stored once: the conversation's start and each message id exactly once.
                    let ids = try messages.dropFirst().map { try $0.decode(VisitorMessageReceived.self).messageId }
                    #expect(messages.first?.type == ConversationStarted.eventType && ids.count == perVisitor && Set(ids).count == perVisitor)
                    // Processed exactly once: the consumed versions only grow, and no message is answered twice.
                    let workflow = try await store.readStreamToEnd(conversation.workflowStream, tenant: tenantID)
                    let consumed = try workflow.filter { $0.type == MessagesProcessed.eventType }.map { try $0.decode(MessagesProcessed.self).upToVersion }
                    #expect(consumed == consumed.sorted() && Set(consumed).count == consumed.count && consumed.last == Int64(perVisitor + 1), "\(conversation): \(consumed)")
                    let answered = try workflow.filter { $0.type == AssistantMessageSent.eventType }.flatMap { try $0.decode(AssistantMessageSent.self).inReplyTo }
                    #expect(Set(answered).count == answered.count, "\(conversation) answered a message twice: \(answered)")
                }
                // Both processes did some of the work (their instance names differ: host and pid).
                var instances = Set<String>()
                for visitor in 0..<visitors {
                    for event in try await store.readStreamToEnd(ConversationID(rawValue: "mi-\(visitor)")!.workflowStream, tenant: tenantID) {
                        if case .string(let instance)? = try event.metadata().extra["instance"] { instances.insert(instance) }
                    }
                }
                #expect(instances.count == 2, "\(instances)")
                // No worker was fenced out: the lock kept them apart, and no conflict was recorded.
                let audit = try await store.readStreamToEnd(try StreamName(category: "audit", id: tenant), tenant: tenantID)
                #expect(audit.filter { $0.type == ProcessingConflictDetected.eventType }.isEmpty)
            }

            // The projections caught up, then match a fresh fold of the events.
            struct Status: Decodable {
                var name: String
                var lag: Int64
            }
            let caughtUp = try await eventually(timeout: .seconds(60)) {
                let status = try await ConvoProcess.run(["projections", "status", "--json"], environment: env)
                let projections = try JSONDecoder().decode([Status].self, from: Data(status.stdout.utf8))
                return projections.count == 3 && projections.allSatisfy { $0.lag == 0 }
            }
            #expect(caughtUp)
            let verify = try await ConvoProcess.run(["projections", "verify", "--all"], environment: env)
            #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")

            // SIGTERM: each server finishes and exits cleanly, even with an event stream open.
            var stream = HTTPClientRequest(url: "\(servers[0].baseURL)/v1/conversations/mi-0/stream")
            stream.headers.add(name: "Authorization", value: "Bearer \(key)")
            let open = try await HTTPClient.shared.execute(stream, timeout: .seconds(60))
            #expect(open.status == .ok)
            for server in servers {
                // Well under the sweep interval (30 s): nothing waits it out.
                let status = try await server.stop(timeout: .seconds(10))
                #expect(status == 0, "\(server.output.suffix(2000))")
            }
        }
    }

    /// Each message once, each to a random server, 64 at a time: the response statuses.
    static func send(_ sends: [(Int, Int)], to servers: [ServeProcess], key: String) async throws -> [Int] {
        try await withThrowingTaskGroup(of: Int.self) { group in
            var iterator = sends.makeIterator()
            func next() -> (Int, Int)? { iterator.next() }
            var statuses: [Int] = []
            func add(_ send: (Int, Int)) {
                let server = servers.randomElement()!
                group.addTask {
                    var request = HTTPClientRequest(url: "\(server.baseURL)/v1/conversations/mi-\(send.0)/messages")
                    request.method = .POST
                    request.headers.add(name: "Authorization", value: "Bearer \(key)")
                    request.headers.add(name: "Content-Type", value: "application/json")
                    request.body = .bytes(ByteBuffer(string: #"{"visitorUid": "v-\#(send.0)", "messageId": "m\#(send.1)", "text": "message \#(send.1) about my order"}"#))
                    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                    return Int(response.status.code)
                }
            }
            for _ in 0..<64 { if let send = next() { add(send) } }
            while let status = try await group.next() {
                statuses.append(status)
                if let send = next() { add(send) }
            }
            return statuses
        }
    }
}
