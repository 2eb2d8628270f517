import ConvoTestSupport
import EventStore
import Foundation
import Testing

@Suite struct MigrateCommandTests {
    @Test func migrateAppliesEverythingThenReportsUpToDate() async throws {
        try await TestDatabase.withFreshDatabase { database in
            let url = "postgres://\(database.username)@\(database.host):\(database.port)/\(database.database)"
            let first = try await ConvoProcess.run(["migrate"], environment: ["CONVO_DATABASE_URL": url])
            #expect(first.status == 0, "\(first.stderr)")
            for migration in Migration.all { #expect(first.stdout.contains("applied \(migration.fileName)")) }
            let again = try await ConvoProcess.run(["migrate", "--database-url", url])
            #expect(again.status == 0)
            #expect(again.stdout.contains("is up to date"))
            #expect(!again.stdout.contains("applied 0"))
            let status = try await ConvoProcess.run(["migrate", "--status", "--database-url", url])
            #expect(status.stdout.split(separator: "\n").count == Migration.all.count)
            #expect(!status.stdout.contains("pending"))
        }
    }

    @Test func twoMigrateProcessesAtOnceBothSucceed() async throws {
        try await TestDatabase.withFreshDatabase { database in
            let url = "postgres://\(database.username)@\(database.host):\(database.port)/\(database.database)"
            async let a = ConvoProcess.run(["migrate", "--database-url", url])
            async let b = ConvoProcess.run(["migrate", "--database-url", url])
            let (first, second) = try await (a, b)
            #expect(first.status == 0 && second.status == 0, "\(first.stderr) \(second.stderr)")
            let applied = (first.stdout + second.stdout).components(separatedBy: "applied 0").count - 1
            #expect(applied == Migration.all.count)
        }
    }

    @Test func badArgumentsAndAnUnreachableDatabaseExitNonZeroWithAMessage() async throws {
        let badURL = try await ConvoProcess.run(["migrate", "--database-url", "mysql://nope"])
        #expect(badURL.status == 64)
        #expect(badURL.stderr.contains("postgres://"))
        let badLevel = try await ConvoProcess.run(["migrate", "--log-level", "loud"])
        #expect(badLevel.status == 64)
        #expect(badLevel.stderr.contains("unknown log level"))
        let unreachable = try await ConvoProcess.run(["migrate", "--connect-timeout", "1.5", "--database-url", "postgres://convo@127.0.0.1:1/convo"])
        #expect(unreachable.status == 1)
        #expect(unreachable.stderr.contains("cannot reach PostgreSQL at postgres://convo@127.0.0.1:1/convo within 1.5 seconds"))
        let unknown = try await ConvoProcess.run(["no-such-command"])
        #expect(unknown.status == 64)
    }
}
