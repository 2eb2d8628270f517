import Audit
import ConvoTestSupport
import EventStore
import Foundation
import Hummingbird
import PostgresNIO
import Responder
import SharedTypes
import Synchronization
import Testing

@testable import convo

/// The audit trail over HTTP and the CLI, against a store built by real processing: a first message, a
/// burst answered at once with a tool call, a refund that hands off, and a conflict forced by a rival write.
@Suite struct AuditTests {
    /// A provider that, on its first call, lets a rival worker write to the conversation's workflow stream
    /// (as a worker whose lock had expired would), so the processor's append meets a real conflict.
    struct RivalProvider: AIProvider {
        let name = "rules"
        let store: PostgresEventStore
        let tenant: TenantID
        let conversation: ConversationID
        let fired = Fired()

        final class Fired: Sendable {
            let value = Mutex(false)
        }

        func reply(to request: AIRequest) async throws -> AIAnswer {
            if fired.value.withLock({ let first = !$0; $0 = true; return first }) {
                let version = try await store.streamVersion(conversation.workflowStream, tenant: tenant)
                let rival = try NewEvent(
                    type: WorkflowVariableSet.eventType, encoding: WorkflowVariableSet(name: "rival", value: true, nodeId: request.nodeId),
                    metadata: EventMetadata(actorId: SystemActor.actorID, extra: ["lockToken": "rival-token", "instance": "rival-host:1"]),
                    subject: PersonalDataSubject(visitor: VisitorUID(rawValue: "rival")!, mayCreateKey: true))
                try await store.append([rival], to: conversation.workflowStream, tenant: tenant, expectedVersion: .exact(version))
            }
            return try await RuleProvider().reply(to: request)
        }
    }

    struct Trail {
        var main: String
        var raced: String
        var visitor: String
    }

    /// Builds the store: conversation `main` (visitor `visitor`) and `raced` (with one conflict).
    func build(_ api: APIHarness) async throws -> Trail {
        let main = APIHarness.conversationID()
        let visitor = "v-\(UUID().uuidString.prefix(8).lowercased())"
        func say(_ id: String, _ text: String) async throws {
            let reply = try await api.post(main, #"{"visitorUid": "\#(visitor)", "messageId": "\#(id)", "text": "\#(text)"}"#)
            #expect(reply.status == .accepted, "\(reply.text)")
        }
        try await say("m1", "hello there")
        try await api.process(main, visitor: visitor)
        // A burst: both are pending when the responder runs, and answered in one reply.
        try await say("m2", "where is my order")
        try await say("m3", "it has not arrived yet")
        try await api.process(main, visitor: visitor)
        try await say("m4", "I want a refund")
        try await api.process(main, visitor: visitor)

        let raced = APIHarness.conversationID()
        let racedVisitor = "v-\(UUID().uuidString.prefix(8).lowercased())"
        #expect(try await api.post(raced, #"{"visitorUid": "\#(racedVisitor)", "messageId": "r1", "text": "hello"}"#).status == .accepted)
        let store = PostgresEventStore(client: api.pg, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
        let processor = ConversationProcessor(
            store: store, redis: RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL)),
            workflows: WorkflowRepository(client: api.pg, logger: TestDatabase.logger),
            provider: RivalProvider(store: store, tenant: api.tenant, conversation: ConversationID(rawValue: raced)!), logger: TestDatabase.logger)
        try await processor.process(tenant: api.tenant, visitor: VisitorUID(rawValue: racedVisitor)!, conversation: ConversationID(rawValue: raced)!)
        return Trail(main: main, raced: raced, visitor: visitor)
    }

    func cli(_ arguments: [String]) async throws -> ConvoProcess.Output {
        try await ConvoProcess.run(["audit"] + arguments, environment: ["CI": "true"])
    }

    func json<T: Decodable>(_ output: ConvoProcess.Output, as type: T.Type) throws -> T {
        #expect(output.status == 0, "\(output.stderr)")
        return try JSONDecoder.iso8601.decode(type, from: Data(output.stdout.utf8))
    }

    @Test func historyExplainSearchAndConflictsOverHTTPAndTheCLIAgree() async throws {
        try await APIHarness.with { api in
            let trail = try await build(api)
            let tenant = api.tenant.rawValue

            // History: every workflow event, in order, each change starting where the last one ended.
            let reply = try await api.request(.get, "/v1/conversations/\(trail.main)/workflow-state/history", key: api.read)
            #expect(reply.status == .ok, "\(reply.text)")
            let history = try reply.decode(WorkflowHistory.self)
            let stored = try await PostgresEventStore(client: api.pg, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
                .readStreamToEnd(ConversationID(rawValue: trail.main)!.workflowStream, tenant: api.tenant)
            #expect(history.changes.map(\.eventId) == stored.map(\.eventId))
            #expect(history.changes.map(\.streamVersion) == Array(1...Int64(stored.count)))
            #expect(history.changes.first?.type == WorkflowStarted.eventType)
            for (previous, change) in zip(history.changes, history.changes.dropFirst()) {
                #expect(change.fromNode == previous.toNode)
                #expect(change.statusBefore == previous.status)
            }
            #expect(history.changes.allSatisfy { $0.actorId == SystemActor.actorID && $0.lockToken?.isEmpty == false && $0.instance != nil })
            let causes = Set(history.changes.compactMap { $0.cause.map { "\($0.messageId): \($0.text)" } })
            #expect(causes.isSuperset(of: ["m1: hello there", "m2: where is my order", "m4: I want a refund"]))
            let handoff = try #require(history.changes.first { $0.type == ConversationHandedOff.eventType })
            #expect(handoff.status == "handed_off" && handoff.cause?.messageId == "m4")
            #expect(history.changes.last?.status == "handed_off")
            // The CLI answers the same, and offers a table and CSV.
            #expect(try json(try await cli(["history", trail.main, "--tenant", tenant, "--json"]), as: WorkflowHistory.self) == history)
            let csv = try await cli(["history", trail.main, "--tenant", tenant, "--csv"])
            #expect(csv.status == 0 && csv.stdout.components(separatedBy: "\r\n").filter { !$0.isEmpty }.count == history.changes.count + 1)
            #expect(csv.stdout.hasPrefix("version,position,time,type,from,to,status,message,text,actor,lock token,summary\r\n"))
            let table = try await cli(["history", trail.main, "--tenant", tenant])
            #expect(table.status == 0 && table.stdout.contains("workflowState history of \(trail.main)") && table.stdout.contains("hello there"))

            // Explain the burst's reply: both messages, the tool it called, the provider.
            let burst = try #require(
                stored.first { event in
                    event.type == AssistantMessageSent.eventType && (try? event.decode(AssistantMessageSent.self).inReplyTo) == ["m2", "m3"]
                }, "the burst was answered in one reply")
            let explained = try await api.request(.get, "/v1/conversations/\(trail.main)/explain/\(burst.eventId)", key: api.read)
            #expect(explained.status == .ok, "\(explained.text)")
            let explanation = try explained.decode(ReplyExplanation.self)
            #expect(explanation.answered.map(\.messageId) == ["m2", "m3"])
            #expect(explanation.answered.map(\.text) == ["where is my order", "it has not arrived yet"])
            #expect(explanation.causedBy?.messageId == "m2")
            #expect(explanation.reply.provider == "rules" && explanation.reply.text.contains("3 to 5 working days"))
            #expect(explanation.tools.map(\.tool) == ["add_tag"] && explanation.tools.first?.arguments == ["tag": "shipping"])
            #expect(explanation.tools.first?.outcome == "succeeded" && explanation.tools.first?.actorId == SystemActor.actorID)
            #expect(explanation.walk.last?.type == AssistantMessageSent.eventType)
            #expect(explanation.walk.contains { $0.type == WorkflowTransitioned.eventType })
            #expect(!explanation.walk.contains { $0.type == MessagesProcessed.eventType })
            #expect(explanation.workflowId == "support")
            #expect(
                try json(try await cli(["explain", trail.main, burst.eventId.uuidString, "--tenant", tenant, "--json"]), as: ReplyExplanation.self)
                    == explanation)
            // Not a reply, no such event, not an id, no such conversation.
            let notReply = try await api.request(.get, "/v1/conversations/\(trail.main)/explain/\(stored[0].eventId)", key: api.read)
            #expect(notReply.status == .unprocessableContent && notReply.errorCode == "not_a_reply")
            let unknown = try await api.request(.get, "/v1/conversations/\(trail.main)/explain/\(UUID())", key: api.read)
            #expect(unknown.status == .notFound && unknown.errorCode == "event_not_found")
            #expect(try await api.request(.get, "/v1/conversations/\(trail.main)/explain/nope", key: api.read).status == .badRequest)
            let nobody = try await api.request(.get, "/v1/conversations/nobody-here/explain/\(burst.eventId)", key: api.read)
            #expect(nobody.status == .notFound && nobody.errorCode == "conversation_not_found")
            let cliNotReply = try await cli(["explain", trail.main, stored[0].eventId.uuidString, "--tenant", tenant])
            #expect(cliNotReply.status != 0 && cliNotReply.stderr.contains("not an AssistantMessageSent"))

            // Search by tool, type and conversation, actor, visitor; pages; order; time.
            func search(_ query: String, key: String? = nil) async throws -> AuditPage {
                let reply = try await api.request(.get, "/v1/audit/events?\(query)", key: key ?? api.read)
                #expect(reply.status == .ok, "\(query): \(reply.text)")
                return try reply.decode(AuditPage.self)
            }
            let handoffs = try await search("tool=request_handoff")
            #expect(handoffs.events.count == 1 && handoffs.events.first?.conversationId == trail.main)
            let toolCalls = try await search("type=ToolCalled&conversation=\(trail.main)")
            #expect(toolCalls.events.compactMap { $0.data["tool"]?.stringValue }.sorted() == ["add_tag", "add_tag", "request_handoff"])
            let visitorSaid = try await search("actor=visitor:\(trail.visitor)&limit=1000")
            #expect(visitorSaid.events.count == 5 && visitorSaid.events.allSatisfy { $0.stream == "messages-\(trail.main)" })
            let everything = try await search("visitor=\(trail.visitor)&limit=1000")
            #expect(everything.events.count == Int(try await api.eventCount(trail.main)))
            #expect(everything.events.map(\.globalPosition) == everything.events.map(\.globalPosition).sorted())
            #expect(everything.events.allSatisfy { $0.hash.count == 64 })
            var paged: [AuditEvent] = []
            var cursor: Int64?
            repeat {
                let page = try await search("visitor=\(trail.visitor)&limit=3" + (cursor.map { "&after=\($0)" } ?? ""))
                paged += page.events
                cursor = page.next
            } while cursor != nil
            #expect(paged == everything.events)
            let newestFirst = try await search("visitor=\(trail.visitor)&order=desc&limit=1000")
            #expect(newestFirst.events == everything.events.reversed())
            let future = try await search("from=2100-01-01T00:00:00Z")
            #expect(future.events.isEmpty && future.next == nil)
            let recent = try await search("visitor=\(trail.visitor)&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=1000")
            #expect(recent.events == everything.events)
            // A window between two commit times holds exactly the events recorded in it, in position order.
            let trailQueries = AuditTrail(store: PostgresEventStore(client: api.pg, keyring: TestDatabase.keyring, logger: TestDatabase.logger), logger: TestDatabase.logger)
            var visitorFilter = AuditFilter()
            visitorFilter.visitor = VisitorUID(rawValue: trail.visitor)
            visitorFilter.limit = 1000
            let exact = try await trailQueries.events(tenant: api.tenant, filter: visitorFilter).events
            let times = Array(Set(exact.map(\.recordedAt))).sorted()
            #expect(times.count >= 4)
            let (lower, upper) = (times[1].addingTimeInterval(-0.000_000_5), times[times.count - 2].addingTimeInterval(-0.000_000_5))
            var windowed = visitorFilter
            windowed.from = lower
            windowed.to = upper
            windowed.limit = 2
            var inWindow: [AuditEvent] = []
            repeat {
                let page = try await trailQueries.events(tenant: api.tenant, filter: windowed)
                inWindow += page.events
                windowed.after = page.next
            } while windowed.after != nil
            #expect(inWindow.map(\.eventId) == exact.filter { $0.recordedAt >= lower && $0.recordedAt < upper }.map(\.eventId))
            #expect(!inWindow.isEmpty && inWindow.count < exact.count)
            let types = try await search("type=ConversationStarted,ConversationHandedOff&conversation=\(trail.main)")
            #expect(types.events.map(\.type) == [ConversationStarted.eventType, ConversationHandedOff.eventType])
            let cliPage = try json(
                try await cli(["events", "--tenant", tenant, "--tool", "request_handoff", "--json"]), as: AuditPage.self)
            #expect(cliPage == handoffs)
            let cliCSV = try await cli(["events", "--tenant", tenant, "--visitor", trail.visitor, "--limit", "1000", "--csv"])
            #expect(cliCSV.stdout.components(separatedBy: "\r\n").filter { !$0.isEmpty }.count == everything.events.count + 1)
            for bad in ["limit=0", "limit=1001", "order=sideways", "from=yesterday", "after=-1", "after=x", "visitor=has%20space", "colour=blue",
                        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"] {
                let refused = try await api.request(.get, "/v1/audit/events?\(bad)", key: api.read)
                #expect(refused.status == .badRequest && refused.errorCode == "invalid_parameter", "\(bad): \(refused.text)")
            }
            // Every RFC 3339 form sentAt takes: a fraction with an offset, lower-case t and z, an early year.
            for good in ["to=0874-12-09T16%3A37%3A13.847%2B23%3A04", "from=2026-01-01t00%3A00%3A00.5z", "to=2026-01-01T00%3A00%3A00-00%3A30"] {
                let accepted = try await api.request(.get, "/v1/audit/events?\(good)", key: api.read)
                #expect(accepted.status == .ok, "\(good): \(accepted.text)")
            }
            let cliBad = try await cli(["events", "--tenant", tenant, "--order", "sideways"])
            #expect(cliBad.status != 0 && cliBad.stderr.contains("order is asc or desc"))

            // The forced conflict: the loser's token and instance, and the write that won.
            let conflictsReply = try await api.request(.get, "/v1/audit/conflicts", key: api.read)
            #expect(conflictsReply.status == .ok, "\(conflictsReply.text)")
            let conflicts = try conflictsReply.decode(ConflictPage.self)
            #expect(conflicts.conflicts.count == 1)
            let conflict = try #require(conflicts.conflicts.first)
            #expect(conflict.conversationId == trail.raced && conflict.stream == "workflow-\(trail.raced)")
            #expect(conflict.actualVersion == conflict.expectedVersion + 1)
            #expect(!conflict.lockToken.isEmpty && conflict.lockToken != "rival-token")
            #expect(conflict.winner?.lockToken == "rival-token" && conflict.winner?.instance == "rival-host:1")
            #expect(conflict.winner?.type == WorkflowVariableSet.eventType && conflict.winner?.streamVersion == conflict.expectedVersion + 1)
            #expect(try await api.request(.get, "/v1/audit/conflicts?conversation=\(trail.main)", key: api.read).decode(ConflictPage.self).conflicts.isEmpty)
            #expect(try json(try await cli(["conflicts", "--tenant", tenant, "--json"]), as: ConflictPage.self) == conflicts)
            let conflictTable = try await cli(["conflicts", "--tenant", tenant])
            #expect(conflictTable.stdout.contains("rival-token") && conflictTable.stdout.contains(conflict.lockToken))
            // The raced conversation still went on: its history records the rival's write and the retry after it.
            let raced = try await api.request(.get, "/v1/conversations/\(trail.raced)/workflow-state/history", key: api.read)
                .decode(WorkflowHistory.self)
            #expect(raced.changes.contains { $0.lockToken == "rival-token" })
            #expect(raced.changes.contains { $0.lockToken == conflict.lockToken && $0.type == AssistantMessageSent.eventType })
        }
    }

    @Test func everyAuditRouteIsTheKeysTenantsAndNeedsReadOrAdmin() async throws {
        try await APIHarness.with { api in
            let trail = try await build(api)
            let burst = try #require(
                try await api.request(.get, "/v1/conversations/\(trail.main)/workflow-state/history", key: api.read).decode(WorkflowHistory.self)
                    .changes.first { $0.type == AssistantMessageSent.eventType })
            let routes = [
                "/v1/conversations/\(trail.main)/workflow-state/history", "/v1/conversations/\(trail.main)/explain/\(burst.eventId)",
                "/v1/audit/events", "/v1/audit/conflicts",
            ]
            for uri in routes {
                #expect(try await api.request(.get, uri, key: nil).status == .unauthorized, "\(uri)")
                let ingest = try await api.request(.get, uri, key: api.ingest)
                #expect(ingest.status == .forbidden && ingest.errorCode == "missing_scope", "\(uri)")
                #expect(try await api.request(.get, uri, key: api.read).status == .ok, "\(uri)")
                #expect(try await api.request(.get, uri, key: api.admin).status == .ok, "\(uri)")
            }
            // Another tenant sees none of it: the conversation is unknown there, its trail empty.
            #expect(try await api.request(.get, routes[0], key: api.stranger).status == .notFound)
            #expect(try await api.request(.get, routes[1], key: api.stranger).status == .notFound)
            let theirs = try await api.request(.get, "/v1/audit/events?visitor=\(trail.visitor)", key: api.stranger).decode(AuditPage.self)
            #expect(theirs.events.isEmpty)
            let allTheirs = try await api.request(.get, "/v1/audit/events?limit=1000", key: api.stranger).decode(AuditPage.self)
            #expect(allTheirs.events.allSatisfy { !$0.stream.hasSuffix(trail.main) && !$0.stream.hasSuffix(trail.raced) })
            #expect(try await api.request(.get, routes[3], key: api.stranger).decode(ConflictPage.self).conflicts.isEmpty)

            // The heads (an anchor) are the admin's, and only of the key's tenant.
            #expect(try await api.request(.get, "/v1/audit/heads", key: api.read).status == .forbidden)
            let heads = try await api.request(.get, "/v1/audit/heads", key: api.admin)
            #expect(heads.status == .ok, "\(heads.text)")
            let anchor = try heads.decode(ChainAnchor.self)
            #expect(anchor.tenant == api.tenant.rawValue && anchor.heads.allSatisfy { $0.tenant == api.tenant.rawValue })
            #expect(Set(anchor.heads.map(\.stream)).isSuperset(of: ["messages-\(trail.main)", "workflow-\(trail.main)", "audit-\(api.tenant.rawValue)"]))
        }
    }

    @Test func verifyFromTheCommandLineFindsATamperedEventAndChecksAnAnchor() async throws {
        try await APIHarness.with { api in
            let trail = try await build(api)
            let tenant = api.tenant.rawValue
            let ok = try await cli(["verify", "--tenant", tenant])
            #expect(ok.status == 0, "\(ok.stderr)")
            #expect(ok.stdout.contains("OK: \(try await api.tenantEventCount()) events"))
            #expect(ok.stderr.contains("verify events:") && !ok.stderr.contains("\r"))

            let anchorFile = FileManager.default.temporaryDirectory.appendingPathComponent("anchor-\(UUID()).json").path
            defer { try? FileManager.default.removeItem(atPath: anchorFile) }
            let anchored = try await cli(["anchor", "--tenant", tenant, "--output", anchorFile])
            #expect(anchored.status == 0 && anchored.stderr.contains("anchored"), "\(anchored.stderr)")
            #expect(try await cli(["verify", "--tenant", tenant, "--anchor", anchorFile]).status == 0)

            // Someone with the power to switch the triggers off edits the refund message's text.
            let rows = try await api.pg.query(
                """
                SELECT global_position FROM events WHERE tenant_id = \(api.tenant.rawValue) AND stream_name = \("messages-" + trail.main)
                  AND data ->> 'messageId' = 'm4'
                """)
            var edited: Int64 = 0
            for try await position in rows.decode(Int64.self) { edited = position }
            try await api.pg.withConnection { connection in
                try await connection.query("BEGIN", logger: TestDatabase.logger)
                try await connection.query("SET LOCAL session_replication_role = replica", logger: TestDatabase.logger)
                try await connection.query(
                    "UPDATE events SET data = jsonb_set(data, '{text}', '\"never mind\"') WHERE global_position = \(edited)", logger: TestDatabase.logger)
                try await connection.query("COMMIT", logger: TestDatabase.logger)
            }
            // Over HTTP, for the one conversation.
            let verified = try await api.request(.get, "/v1/conversations/\(trail.main)/verify", key: api.read)
            #expect(verified.status == .ok, "\(verified.text)")
            let conversationReport = try verified.decode(ChainReport.self)
            #expect(conversationReport.issueCount == 1 && conversationReport.issues.first?.globalPosition == edited)
            #expect(conversationReport.issues.first?.kind == .hashMismatch && conversationReport.streams == 2)
            #expect(try await api.request(.get, "/v1/conversations/\(trail.raced)/verify", key: api.read).decode(ChainReport.self).isIntact)
            #expect(try await api.request(.get, "/v1/conversations/\(trail.main)/verify", key: api.stranger).status == .notFound)
            #expect(try await api.request(.get, "/v1/conversations/\(trail.main)/verify", key: api.ingest).status == .forbidden)
            let caught = try await cli(["verify", "--tenant", tenant])
            #expect(caught.status == 1)
            #expect(caught.stdout.contains("hash_mismatch") && caught.stdout.contains("position \(edited)") && caught.stdout.contains("FAILED: 1 finding"))
            let failed = try await cli(["verify", "--tenant", tenant, "--json"])
            #expect(failed.status == 1)
            let report = try JSONDecoder.iso8601.decode(ChainReport.self, from: Data(failed.stdout.utf8))
            #expect(report.issues.map(\.globalPosition) == [edited])
            // Only the edited stream is wrong.
            #expect(try await cli(["verify", "--tenant", tenant, "--stream", "workflow-\(trail.main)"]).status == 0)
            #expect(try await cli(["verify", "--tenant", tenant, "--stream", "messages-\(trail.main)"]).status == 1)

            // Bad input: an unreadable or foreign anchor, a bad stream name.
            let missing = try await cli(["verify", "--anchor", "/nonexistent/anchor.json"])
            #expect(missing.status != 0 && missing.stderr.contains("cannot read"))
            try Data(#"{"hello": 1}"#.utf8).write(to: URL(fileURLWithPath: anchorFile))
            let foreign = try await cli(["verify", "--anchor", anchorFile])
            #expect(foreign.status != 0 && foreign.stderr.contains("not a convo anchor"))
            let badStream = try await cli(["verify", "--stream", "no dash"])
            #expect(badStream.status != 0)
        }
    }
}

extension APIHarness {
    /// How many events the harness's tenant has.
    func tenantEventCount() async throws -> Int64 {
        let rows = try await pg.query("SELECT count(*) FROM events WHERE tenant_id = \(tenant.rawValue)")
        for try await count in rows.decode(Int64.self) { return count }
        return 0
    }
}
