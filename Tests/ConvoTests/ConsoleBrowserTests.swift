import ConvoTestSupport
import EventStore
import Foundation
import Testing

/// The console and the demo in headless Chromium, driven by Selenium (`Tests/console/console_test.py`)
/// against a real `convo serve --demo-tenant` on a database of its own: sign-in, the inbox, a conversation
/// updated live, "why this reply?", the chain's verification, an agent's take-over and reply, keyboard reach,
/// sign-out, a read-only key that sees no agent action, a tampered event that verification flags; a visitor
/// chatting in the demo whose conversation reaches the console live and who sees the agent's reply; a
/// workflow published with an error marked on its node, then fixed and compared; the operations page. A
/// failure keeps the page's screenshot under `.convo/test/`.
@Suite(.timeLimit(.minutes(5))) struct ConsoleBrowserTests {
    @Test func anAgentSignsInWatchesAConversationLiveAndAnswersInARealBrowser() async throws {
        let environment = ProcessInfo.processInfo.environment
        guard let python = environment["CONVO_TEST_PYTHON"] else {
            throw ServeProcess.Failure(description: "CONVO_TEST_PYTHON is not set: run the tests through ./scripts/test, which installs Selenium")
        }
        // A database of its own: the projections of the shared one stop at other tests' made-up event types.
        try await TestDatabase.withFreshDatabase { database in try await run(python: python, database: database) }
    }

    func run(python: String, database: DatabaseURL) async throws {
        let env = ["CONVO_DATABASE_URL": database.description, "CONVO_REDIS_URL": try TestDatabase.redisURL, "CONVO_LOG_LEVEL": "warning"]
        let migrated = try await ConvoProcess.run(["migrate"], environment: env)
        guard migrated.status == 0 else { throw ServeProcess.Failure(description: "migrate: \(migrated.stderr)") }
        let tenant = TestDatabase.uniqueTenant().rawValue
        func key(_ arguments: [String]) async throws -> String {
            struct Made: Decodable { var key: String }
            let made = try await ConvoProcess.run(arguments + ["--tenant", tenant, "--json"], environment: env)
            guard made.status == 0 else { throw ServeProcess.Failure(description: "\(arguments): \(made.stderr)") }
            return try JSONDecoder().decode(Made.self, from: Data(made.stdout.utf8)).key
        }
        let agent = try await key(["agents", "create", "--email", "ada@example.com", "--name", "Ada"])
        let read = try await key(["keys", "create", "--scopes", "read"])
        let ingest = try await key(["keys", "create", "--scopes", "ingest"])
        let admin = try await key(["keys", "create", "--scopes", "read,admin"])
        let server = try await ServeProcess(environment: env, arguments: ["--demo-tenant", tenant])
        let conversation = "console-\(UUID().uuidString.prefix(8).lowercased())"
        let artifacts = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.convo/test").standardized
        try FileManager.default.createDirectory(at: artifacts, withIntermediateDirectories: true)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../console/console_test.py").standardized
        let run = try await ConvoProcess.run(
            executable: URL(fileURLWithPath: python), [script.path],
            environment: [
                "CONVO_CONSOLE_URL": server.baseURL, "CONVO_CONSOLE_AGENT_KEY": agent, "CONVO_CONSOLE_READ_KEY": read, "CONVO_CONSOLE_INGEST_KEY": ingest,
                "CONVO_CONSOLE_ADMIN_KEY": admin,
                "CONVO_CONSOLE_SCREENSHOTS": ProcessInfo.processInfo.environment["CONVO_CONSOLE_SCREENSHOTS"] ?? "",
                "CONVO_CONSOLE_CONVERSATION": conversation, "CONVO_CONSOLE_ARTIFACTS": artifacts.path, "CONVO_CONSOLE_DATABASE_URL": database.description,
            ], timeout: .seconds(270))
        #expect(run.status == 0 && run.stdout.contains("every step passed"), "\(run.stdout)\n\(run.stderr.suffix(3000))\n\(server.failureSummary)")
        #expect(try await server.stop() == 0, "\(server.failureSummary)")
    }
}
