import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
import Projections
import Testing

/// `convo projections …` and `convo state`, run as an operator runs them: separate processes.
@Suite struct ProjectionsCommandTests {
    struct Status: Decodable {
        var name: String
        var state: String
        var storedVersion: Int?
        var checkpoint: Int64
        var lag: Int64
        var lagCountedUpTo: Int64
    }

    @Test func rebuildVerifyStatusAndStateFromTheCommandLine() async throws {
        try await TestDatabase.withFreshDatabase { database in
            let url = "postgres://\(database.username)@\(database.host):\(database.port)/\(database.database)"
            let env = ["CONVO_DATABASE_URL": url, "CI": "true"]
            #expect(try await ConvoProcess.run(["migrate"], environment: env).status == 0)
            for conversation in ["cli-a", "cli-b"] {
                let sent = try await ConvoProcess.run(
                    ["send", conversation, "--visitor", "v-\(conversation)", "--text", "hello", "--count", "2", "--process"], environment: env)
                #expect(sent.status == 0, "\(sent.stderr)")
            }

            let notBuilt = try await ConvoProcess.run(["projections", "status", "--json"], environment: env)
            #expect(notBuilt.status == 0, "\(notBuilt.stderr)")
            let before = try JSONDecoder().decode([Status].self, from: Data(notBuilt.stdout.utf8))
            #expect(before.map(\.name) == ["workflow_state", "conversations", "visitors"] && before.allSatisfy { $0.state == "not_built" })

            // Readers take an event once no older transaction can still commit before it, and PostgreSQL judges
            // that across the whole cluster, which other tests share: a rebuild while one of theirs is open
            // folds what is readable and leaves the rest to a runner (there is none here). Wait until all of
            // this test's events are readable; a transaction begun later cannot hide them again.
            let readable = try await TestDatabase.withStore(url: database) { try await settled($0, timeout: .seconds(60)) }
            #expect(readable)
            let rebuilt = try await ConvoProcess.run(["projections", "rebuild", "--all"], environment: env)
            #expect(rebuilt.status == 0, "\(rebuilt.stderr)")
            #expect(rebuilt.stdout.contains("workflow_state v1: rebuilt from"))
            // Not a terminal: plain progress lines, no carriage returns.
            #expect(rebuilt.stderr.contains("events/s") && !rebuilt.stderr.contains("\r"))

            let status = try await ConvoProcess.run(["projections", "status", "--json"], environment: env)
            let versions = Dictionary(uniqueKeysWithValues: ProjectionRegistry.standard.map { ($0.name, $0.version) })
            let after = try JSONDecoder().decode([Status].self, from: Data(status.stdout.utf8))
            #expect(after.allSatisfy { $0.state == "stopped" && $0.storedVersion == versions[$0.name] && $0.checkpoint > 0 && $0.lag == 0 }, "\(status.stdout)")
            // The operator's status counts a backlog up to a million (readiness and the routes up to 10,000).
            #expect(after.allSatisfy { $0.lagCountedUpTo == 1_000_000 }, "\(status.stdout)")

            let clean = try await ConvoProcess.run(["projections", "verify", "--all"], environment: env)
            #expect(clean.status == 0, "\(clean.stdout)\(clean.stderr)")

            try await TestDatabase.withClient(url: database, maximumConnections: 2) { client in
                try await client.query("UPDATE workflow_state SET current_node = 'tampered' WHERE conversation_id = 'cli-a'")
            }
            let dirty = try await ConvoProcess.run(["projections", "verify", "workflow_state"], environment: env)
            #expect(dirty.status == 1)
            #expect(dirty.stdout.contains("changed default/cli-a") && dirty.stdout.contains("current_node: stored tampered"), "\(dirty.stdout)")
            let scoped = try await ConvoProcess.run(["projections", "verify", "workflow_state", "--conversation", "cli-b"], environment: env)
            #expect(scoped.status == 0, "\(scoped.stdout)")

            let state = try await ConvoProcess.run(["state", "cli-a", "--json"], environment: env)
            #expect(state.status == 0 && state.stdout.contains("\"currentNode\""), "\(state.stderr)")
            let early = try await ConvoProcess.run(["state", "cli-a", "--at-version", "1"], environment: env)
            #expect(early.status == 0 && early.stdout.contains("version:    1"), "\(early.stdout)")
            let missing = try await ConvoProcess.run(["state", "no-such-conversation"], environment: env)
            #expect(missing.status == 1 && missing.stderr.contains("no conversation"), "\(missing.stderr)")
        }
    }

    @Test func badArgumentsUnknownNamesAndAnUnreachableDatabaseExitNonZero() async throws {
        let unknown = try await ConvoProcess.run(["projections", "rebuild", "bogus"])
        #expect(unknown.status != 0 && unknown.stderr.contains("no projection 'bogus'"))
        let neither = try await ConvoProcess.run(["projections", "verify"])
        #expect(neither.status != 0 && neither.stderr.contains("--all"))
        let both = try await ConvoProcess.run(["state", "c", "--at-version", "1", "--at", "2026-01-01T00:00:00Z"])
        #expect(both.status != 0)
        let badTime = try await ConvoProcess.run(["state", "c", "--at", "yesterday"])
        #expect(badTime.status != 0 && badTime.stderr.contains("'yesterday' is invalid for '--at"), "\(badTime.stderr)")
        let badTenant = try await ConvoProcess.run(["projections", "verify", "--all", "--conversation", "c", "--tenant", "Not A Tenant"])
        #expect(badTenant.status != 0 && badTenant.stderr.contains("--tenant"), "\(badTenant.stderr)")
        let badConversation = try await ConvoProcess.run(["state", "has space"])
        #expect(badConversation.status != 0 && badConversation.stderr.contains("'has space' is invalid"), "\(badConversation.stderr)")
        let unreachable = try await ConvoProcess.run(
            ["projections", "status", "--database-url", "postgres://convo@127.0.0.1:1/convo", "--connect-timeout", "1"])
        #expect(unreachable.status != 0 && unreachable.stderr.contains("cannot reach PostgreSQL"))
    }
}
