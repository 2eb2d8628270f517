import ConvoTestSupport
import Foundation
import Testing

/// schemathesis (PyPI, installed by ./scripts/test into .convo/venv) against a real `convo serve` and its
/// `/openapi.json`, with an admin key: every check (no server error, status codes, content types, bodies
/// conforming, schema-valid requests accepted and invalid ones refused, methods not served answered 405),
/// every phase including the stateful one, bounded by Tests/schemathesis.toml; then the agents' routes and the
/// inbox again with a supervisor's key. Zero failures.
@Suite(.timeLimit(.minutes(10))) struct ContractTests {
    @Test
    func schemathesisFindsNothing() async throws {
        guard let schemathesis = ProcessInfo.processInfo.environment["CONVO_SCHEMATHESIS"] else {
            Issue.record("CONVO_SCHEMATHESIS is not set: run the tests through ./scripts/test, which installs schemathesis")
            return
        }
        let config = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("schemathesis.toml").path
        try await TestDatabase.withFreshDatabase { database in
            let env = ["CONVO_DATABASE_URL": database.description, "CONVO_REDIS_URL": try TestDatabase.redisURL, "CI": "true", "CONVO_LOG_LEVEL": "warning"]
            let migrated = try await ConvoProcess.run(["migrate"], environment: env)
            #expect(migrated.status == 0, "\(migrated.stderr)")
            let made = try await ConvoProcess.run(["keys", "create", "--tenant", "contract", "--scopes", "ingest,read,admin", "--json"], environment: env)
            let key = try JSONDecoder().decode(FaultFleet.Created.self, from: Data(made.stdout.utf8)).key
            let server = try await ServeProcess(environment: env, arguments: ["--no-responder"])
            // A fresh database: the projections are built and every check is ok before the run.
            #expect(try await eventually(timeout: .seconds(60)) { await AbuseTests.plainGet(server, "/readyz").status == 200 })
            func schemathesisRun(key: String, _ extra: [String]) async throws {
                let output = try await PostgresServer.shell(
                    ["/bin/sh", "-c", "config=$1 url=$2 key=$3; shift 3; \"$0\" --config-file \"$config\" --no-color run \"$url\" -H \"Authorization: Bearer $key\" --checks all \"$@\"; echo \"exit status $?\"",
                     schemathesis, config, "\(server.baseURL)/openapi.json", key] + extra)
                let passed = output.contains("exit status 0\n")
                #expect(passed, "\(output.suffix(6000))")
                if passed { print(output.split(separator: "\n").filter { $0.contains("generated") || $0.contains("passed") }.joined(separator: "\n")) }
            }
            // Every route with an admin key (the agents' routes answer it 403)...
            try await schemathesisRun(key: key, [])
            // ...then the agents' routes and the inbox with a supervisor's key, so their checks and states are reached.
            let agent = try await ConvoProcess.run(
                ["agents", "create", "--tenant", "contract", "--email", "contract@example.com", "--name", "Contract", "--role", "supervisor", "--json"],
                environment: env)
            let agentKey = try JSONDecoder().decode(FaultFleet.Created.self, from: Data(agent.stdout.utf8)).key
            try await schemathesisRun(
                key: agentKey, ["--max-time", "60", "--include-path-regex", "(assignment|agent-messages|notes|handback|resolve|reopen|/v1/conversations$|/messages$)"])
            #expect(try await server.stop() == 0, "\(server.failureSummary)")
        }
    }
}
