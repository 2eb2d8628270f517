import ConvoTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// PostgreSQL restarted or a projection runner frozen under load, with real `convo serve` processes on a
/// cluster of the test's own: nothing stops silently, and nothing is lost or stored twice.
@Suite(.serialized, .timeLimit(.minutes(5))) struct PostgresFaultTests {
    @Test func projectionsResumeWithinSecondsOfAPostgresRestartUnderLoad() async throws {
        let fleet = try await FaultFleet()
        let servers = [try await fleet.serve(), try await fleet.serve()]
        for server in servers {
            #expect(try await eventually(timeout: .seconds(60)) { await fleet.get(server, "/readyz").status == 200 }, "\(server.output.suffix(2000))")
        }
        let load = MessageLoad(conversations: 24)
        let readiness = [ReadinessLog(), ReadinessLog()]
        let restarted = try await withThrowingTaskGroup(of: Void.self) { group -> ContinuousClock.Instant in
            group.addTask { await load.run(fleet: fleet, servers: servers, workers: 6) }
            for (log, server) in zip(readiness, servers) { group.addTask { await log.run(fleet: fleet, server: server) } }
            defer {
                load.stop()
                for log in readiness { log.stop() }
            }
            #expect(try await eventually(timeout: .seconds(30)) { load.recorded.filter { $0.status == 202 }.count >= 60 })
            try await fleet.postgres.restart()
            let restarted = ContinuousClock.now
            let before = load.recorded.count
            // Ingest goes on after the restart.
            #expect(try await eventually(timeout: .seconds(30)) { load.recorded.dropFirst(before).filter { $0.status == 202 }.count >= 60 })
            load.stop()
            // Every projection back at lag 0 with one active runner, within 10 s of the load ending.
            let caughtUp = try await eventually(timeout: .seconds(10)) { await fleet.projectionsCaughtUp() }
            let statuses = try? await fleet.projectionStatus()
            #expect(caughtUp, "\(statuses.map { "\($0)" } ?? "")")
            // Both report ready again within 10 s of PostgreSQL's return, and stay so.
            for log in readiness {
                let firstReady = log.recorded.first { $0.at > restarted && $0.status == 200 }
                #expect(firstReady.map { $0.at - restarted < .seconds(10) } == true, "\(log.recorded.suffix(5).map(\.body))")
            }
            #expect(try await eventually(timeout: .seconds(10)) {
                var ready = true
                for server in servers where await fleet.get(server, "/readyz").status != 200 { ready = false }
                return ready
            })
            return restarted
        }
        _ = restarted

        // Nothing acknowledged was lost, nothing stored twice.
        let answers = load.recorded
        let stored = try await fleet.storedMessageIds(load.conversations)
        for answer in answers where answer.status == 202 || answer.status == 200 {
            #expect(stored[answer.conversation]?.filter { $0 == answer.messageId }.count == 1, "\(answer)")
        }
        for (conversation, ids) in stored { #expect(Set(ids).count == ids.count, "\(conversation) stored a message twice") }

        for server in servers {
            let status = try await server.stop(timeout: .seconds(40))
            #expect(status == 0, "\(server.failureSummary)")
        }
        let verify = try await ConvoProcess.run(["projections", "verify", "--all"], environment: fleet.env)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let audit = try await ConvoProcess.run(["audit", "verify", "--tenant", fleet.tenant], environment: fleet.env)
        #expect(audit.status == 0, "\(audit.stdout)\(audit.stderr)")
    }

    @Test func aFrozenRunnerIsReportedByReadyzStatusAndVerify() async throws {
        let fleet = try await FaultFleet()
        let runner = try await fleet.serve(["--projection-stale-seconds", "2"])
        #expect(try await eventually(timeout: .seconds(60)) { await fleet.projectionsCaughtUp() })
        let ingest = try await fleet.serve(["--no-projections", "--no-responder", "--projection-stale-seconds", "2"])
        #expect(try await eventually(timeout: .seconds(30)) { await fleet.get(ingest, "/readyz").status == 200 })

        // The process holding every runner lock stops (SIGSTOP): its sessions and locks stay, it applies nothing.
        runner.send(SIGSTOP)
        defer { runner.send(SIGCONT) }
        for index in 0..<5 {
            #expect(await fleet.post(ingest, conversation: "frozen-\(index)", visitor: "v-\(index)", messageId: "m").status == 202)
        }
        var notReady = ""
        #expect(try await eventually(timeout: .seconds(20)) {
            let answer = await fleet.get(ingest, "/readyz")
            notReady = answer.body
            return answer.status == 503 && answer.body.contains("stale")
        }, "\(notReady)")
        let statuses = try await fleet.projectionStatus()
        #expect(statuses.allSatisfy { $0.lag > 0 && $0.waitingSeconds > 2 && $0.activeRunners == 1 }, "\(statuses)")
        let verify = try await ConvoProcess.run(["projections", "verify", "--all", "--max-waiting-seconds", "2"], environment: fleet.env)
        #expect(verify.status == 3, "\(verify.stdout)\(verify.stderr)")
        #expect(verify.stdout.contains("events behind"))

        runner.send(SIGCONT)
        #expect(try await eventually(timeout: .seconds(20)) { await fleet.get(ingest, "/readyz").status == 200 })
        #expect(try await eventually(timeout: .seconds(10)) { await fleet.projectionsCaughtUp() })
        let clean = try await ConvoProcess.run(["projections", "verify", "--all"], environment: fleet.env)
        #expect(clean.status == 0, "\(clean.stdout)\(clean.stderr)")
        for server in [runner, ingest] { #expect(try await server.stop(timeout: .seconds(40)) == 0, "\(server.failureSummary)") }
    }
}
