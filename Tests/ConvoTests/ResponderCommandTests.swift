import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
import Projections
import Responder
import SharedTypes
import Testing

@Suite struct ResponderCommandTests {
    static let echo = """
        {"id": "echo", "start": "wait", "nodes": [
          {"id": "wait", "type": "wait_for_input", "saveAs": "last", "next": "say"},
          {"id": "say", "type": "message", "text": "You said {{last}}", "next": "wait"}
        ]}
        """

    func temporaryFile(_ contents: String) throws -> String {
        // Named for this run: ./scripts/test removes them when the run ends.
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("convo-file-\(TestRun.tag)-\(UUID().uuidString).json").path
        try contents.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func twoProcessesSendingToOneVisitorProcessEveryMessageOnceInOrder() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            _ = try await WorkflowRepository(client: store.client, logger: TestDatabase.logger).publish(Array(Self.echo.utf8), tenant: tenant, publishedBy: "test")
            let conversation = ConversationID(rawValue: "c-\(UUID().uuidString.prefix(12))")!
            func send(_ prefix: String) async throws -> ConvoProcess.Output {
                try await ConvoProcess.run(
                    ["send", conversation.rawValue, "--visitor", "v-1", "--text", "hello from \(prefix)", "--message-id", prefix, "--count", "100",
                     "--process", "--workflow", "echo", "--tenant", tenant.rawValue, "--log-level", "error"],
                    timeout: .seconds(240))
            }
            async let a = send("p1")
            async let b = send("p2")
            let (first, second) = try await (a, b)
            #expect(first.status == 0, "\(first.stderr)")
            #expect(second.status == 0, "\(second.stderr)")

            let messages = try await store.readStreamToEnd(conversation.messagesStream, tenant: tenant)
            let workflow = try await store.readStreamToEnd(conversation.workflowStream, tenant: tenant)
            let sent = try messages.filter { $0.type == VisitorMessageReceived.eventType }.map { try $0.decode(VisitorMessageReceived.self).messageId }
            #expect(sent.count == 200 && Set(sent).count == 200)
            let consumed = try workflow.filter { $0.type == WorkflowTransitioned.eventType }.map { try $0.decode(WorkflowTransitioned.self) }
                .filter { $0.from == "wait" }.compactMap(\.causedByMessageId)
            #expect(consumed == sent)
            let state = try WorkflowState.fold(workflow)
            #expect(state.messagesConsumed == 201)
            // The two processes really ran at once: their messages interleave in the stream.
            let switches = zip(sent, sent.dropFirst()).filter { $0.prefix(2) != $1.prefix(2) }.count
            #expect(switches > 1)
            // Every workflow event was written under a lock token, and no two writers ever raced.
            #expect(try workflow.allSatisfy { try $0.metadata()["lockToken"]?.stringValue?.isEmpty == false })
            let audit = try await store.readStream(ConversationProcessor.auditStream(tenant), tenant: tenant, fromVersion: 1, maxCount: 100)
            #expect(audit.isEmpty)
        }
    }

    @Test func workflowsValidateReportsEveryProblemAndExitsNonZero() async throws {
        let good = try temporaryFile(Self.echo)
        let valid = try await ConvoProcess.run(["workflows", "validate", good])
        #expect(valid.status == 0)
        #expect(valid.stdout.contains("valid workflow 'echo' with 2 nodes"))
        let bad = try temporaryFile(
            #"{"id": "t", "start": "a", "nodes": [{"id": "a", "type": "trigger", "next": "b"}, {"id": "b", "type": "tool", "tool": "nope", "next": "zz"}]}"#)
        let invalid = try await ConvoProcess.run(["workflows", "validate", bad])
        #expect(invalid.status == 1)
        #expect(invalid.stderr.contains("unknown node type 'trigger'"))
        #expect(invalid.stderr.contains("unknown tool 'nope'"))
        let json = try await ConvoProcess.run(["workflows", "validate", bad, "--json"])
        #expect(json.status == 1)
        struct Report: Decodable {
            var valid: Bool
            var issues: [WorkflowIssue]
        }
        let report = try JSONDecoder().decode(Report.self, from: Data(json.stdout.utf8))
        #expect(report.valid == false && report.issues.count >= 2)
        let missing = try await ConvoProcess.run(["workflows", "validate", "/nonexistent/workflow.json"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("cannot read /nonexistent/workflow.json"))
        let demo = try await ConvoProcess.run(["workflows", "validate", URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Workflows/support.json").standardized.path])
        #expect(demo.status == 0, "\(demo.stderr)")
    }

    @Test func workflowsPublishMakesVersionsAndRefusesBadFiles() async throws {
        try await TestDatabase.withStore { _ in try await publishCases() }
    }

    private func publishCases() async throws {
        let tenant = TestDatabase.uniqueTenant()
        let file = try temporaryFile(Self.echo)
        let first = try await ConvoProcess.run(["workflows", "publish", file, "--tenant", tenant.rawValue, "--json"])
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.contains(#""version" : 1"#) && first.stdout.contains(#""created" : true"#))
        let same = try await ConvoProcess.run(["workflows", "publish", file, "--tenant", tenant.rawValue])
        #expect(same.stdout.contains("already has this content"))
        let changed = try temporaryFile(Self.echo.replacingOccurrences(of: "You said", with: "Heard"))
        let second = try await ConvoProcess.run(["workflows", "publish", changed, "--tenant", tenant.rawValue])
        #expect(second.stdout.contains("published echo v2"))
        let bad = try temporaryFile(#"{"id": "t", "start": "a", "nodes": [{"id": "a", "type": "trigger"}]}"#)
        let refused = try await ConvoProcess.run(["workflows", "publish", bad, "--tenant", tenant.rawValue])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("trigger"))
        let unreachable = try await ConvoProcess.run(["workflows", "publish", file, "--database-url", "postgres://convo@127.0.0.1:1/convo", "--connect-timeout", "2"])
        #expect(unreachable.status != 0)
        #expect(unreachable.stderr.contains("cannot reach PostgreSQL"))
    }

    @Test func toolsListShowsTheCatalogueAsTextAndJSON() async throws {
        let text = try await ConvoProcess.run(["tools", "list"])
        #expect(text.status == 0)
        for tool in ToolName.allCases { #expect(text.stdout.contains(tool.rawValue)) }
        let json = try await ConvoProcess.run(["tools", "list", "--json"])
        #expect(try JSONDecoder().decode([ToolDefinition].self, from: Data(json.stdout.utf8)) == ToolCatalogue.all)
    }

    @Test func theSystemUserIsSeededAndCannotBeDeletedOrDemoted() async throws {
        try await TestDatabase.withStore { store in
            let rows = try await store.client.query("SELECT email, role FROM users WHERE id = \(SYSTEM_USER_ID)")
            var found: [(String, String)] = []
            for try await row in rows.decode((String, String).self) { found.append(row) }
            #expect(found.count == 1)
            #expect(found.first?.0 == SystemActor.email && found.first?.1 == UserRole.system.rawValue)
            for statement: PostgresQuery in [
                "DELETE FROM users WHERE id = \(SYSTEM_USER_ID)",
                "UPDATE users SET role = 'admin' WHERE id = \(SYSTEM_USER_ID)",
                "UPDATE users SET id = gen_random_uuid() WHERE id = \(SYSTEM_USER_ID)",
            ] {
                let error = try await #require(throws: PSQLError.self) { try await store.client.query(statement) }
                #expect(error.serverInfo?[.sqlState] == "CV005")
            }
            // Other users are ordinary rows.
            let id = UUID()
            try await store.client.query("INSERT INTO users (id, email, name, role) VALUES (\(id), \("admin-\(id)@example.com"), 'Admin', 'admin')")
            // A person (agent or supervisor) belongs to a tenant.
            let homeless = try await #require(throws: PSQLError.self) { try await store.client.query("UPDATE users SET role = 'agent' WHERE id = \(id)") }
            #expect(homeless.serverInfo?[.sqlState] == "23514")
            try await store.client.query("UPDATE users SET name = 'Admin 2' WHERE id = \(id)")
            try await store.client.query("DELETE FROM users WHERE id = \(id)")
            // Migrating again does not seed a second System user or fail.
            try await Migrator(client: store.client, logger: TestDatabase.logger).migrate()
            let count = try await store.client.query("SELECT count(*) FROM users WHERE role = 'system'")
            for try await value in count.decode(Int.self) { #expect(value == 1) }
        }
    }
}
