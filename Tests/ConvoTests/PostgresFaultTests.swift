import ConvoTestSupport
import EventStore
import Logging
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
        try await withThrowingTaskGroup(of: Void.self) { group in
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
        }

        // Nothing acknowledged was lost, nothing stored twice.
        let answers = load.recorded
        let stored = try await fleet.storedMessageIds(load.conversations)
        for answer in answers where answer.status == 202 || answer.status == 200 {
            #expect(stored[answer.conversation]?.filter { $0 == answer.messageId }.count == 1, "\(answer)")
        }
        for (conversation, ids) in stored { #expect(Set(ids).count == ids.count, "\(conversation) stored a message twice") }
        // And every message is answered, none twice: the runs a restart failed are retried (after a backoff of 2 s
        // doubling), and an announcement of a message another run consumed already is dropped.
        var processed = (done: false, answeredTwice: [String]())
        let answered = try await eventually(timeout: .seconds(45)) {
            processed = try await fleet.allProcessed(load.conversations)
            return processed.done
        }
        #expect(answered && processed.answeredTwice.isEmpty, "answered twice: \(processed.answeredTwice)")

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
        // A lease longer than the test: the frozen runner keeps its locks (FrozenInstanceTests: a short one).
        let runner = try await fleet.serve(["--projection-stale-seconds", "2", "--lease-timeout", "600"])
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

    /// A transaction left open in another database of the same PostgreSQL server (a report, a session idle in
    /// transaction) holds back every reader of the events that follows them by position: the projections
    /// apply nothing (and other instances' responders and the webhooks see nothing) while messages are still
    /// accepted. `/readyz` says so instead of counting only what readers can see (nothing waiting), `convo
    /// projections status` names the session, and when it ends everything is caught up.
    @Test func aTransactionLeftOpenInAnotherDatabaseIsReportedNotHidden() async throws {
        let fleet = try await FaultFleet()
        let server = try await fleet.serve(["--projection-stale-seconds", "2"])
        #expect(await fleet.post(server, conversation: "held-0", visitor: "v-held", messageId: "m0").status == 202)
        #expect(
            try await eventually(timeout: .seconds(60)) {
                guard await fleet.projectionsCaughtUp() else { return false }
                return try await fleet.allProcessed(["held-0"]).done
            })
        #expect(try await eventually(timeout: .seconds(30)) { await fleet.get(server, "/readyz").status == 200 })

        let cluster = try DatabaseURL(fleet.postgres.url)
        try await TestDatabase.withClient(url: cluster, maximumConnections: 1) { client in
            try await client.query("CREATE DATABASE reports")
        }
        var reports = cluster
        reports.database = "reports"
        try await TestDatabase.withClient(url: reports, maximumConnections: 1) { client in
            try await client.withConnection { connection in
                // Open, with a transaction id, and left so.
                let logger = Logger(label: "held")
                try await connection.query("BEGIN", logger: logger)
                let rows = try await connection.query("SELECT pg_backend_pid(), txid_current()", logger: logger)
                var pid = 0
                for try await (backend, _) in rows.decode((Int, Int64).self) { pid = backend }
                let conversations = (1...3).map { "held-\($0)" }
                for conversation in conversations {
                    #expect(await fleet.post(server, conversation: conversation, visitor: "v-held", messageId: "m0").status == 202)
                }
                var answer = (status: 0, body: "")
                let reported = try await eventually(timeout: .seconds(30)) {
                    answer = await fleet.get(server, "/readyz")
                    return answer.status == 503 && answer.body.contains("not yet readable") && answer.body.contains("holds every reader back")
                }
                #expect(reported, "\(answer)")
                // Readiness does not name sessions; the operator's status does.
                #expect(!answer.body.contains("pid \(pid)"))
                let status = try await ConvoProcess.run(["projections", "status"], environment: fleet.env)
                #expect(status.stdout.contains("held back by an open transaction: pid \(pid), database reports"), "\(status.stdout)")
                let verify = try await ConvoProcess.run(["projections", "verify", "--all", "--max-waiting-seconds", "2"], environment: fleet.env)
                #expect(verify.status == 3 && verify.stdout.contains("not yet readable") && verify.stdout.contains("pid \(pid), database reports"), "\(verify.stdout)\(verify.stderr)")
                try await connection.query("ROLLBACK", logger: logger)
                #expect(try await eventually(timeout: .seconds(30)) { await fleet.get(server, "/readyz").status == 200 })
                #expect(try await eventually(timeout: .seconds(60)) { try await fleet.allProcessed(conversations).done })
            }
        }
        #expect(try await eventually(timeout: .seconds(30)) { await fleet.projectionsCaughtUp() })
        #expect(try await server.stop() == 0, "\(server.failureSummary)")
    }

    @Test func postgresDownTwentySecondsUnderLoadAnswersEveryRequestByItsDeadlineAndStoresNothingItRefused() async throws {
        let fleet = try await FaultFleet()
        let options = ["--request-timeout", "2", "--shutdown-timeout", "5"]
        let servers = [try await fleet.serve(options), try await fleet.serve(options)]
        for server in servers { #expect(try await eventually(timeout: .seconds(60)) { await fleet.get(server, "/readyz").status == 200 }) }
        let load = MessageLoad(conversations: 16, prefix: "down")
        let readiness = ReadinessLog()
        var outage: (from: ContinuousClock.Instant, to: ContinuousClock.Instant)?
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await load.run(fleet: fleet, servers: servers, workers: 6, pause: .milliseconds(50)) }
            group.addTask { await readiness.run(fleet: fleet, server: servers[0]) }
            defer {
                load.stop()
                readiness.stop()
            }
            #expect(try await eventually(timeout: .seconds(30)) { load.recorded.filter { $0.status == 202 }.count >= 40 })
            try await fleet.postgres.stop()
            let from = ContinuousClock.now
            try await Task.sleep(for: .seconds(20))
            try await fleet.postgres.start()
            outage = (from, .now)
            let before = load.recorded.count
            #expect(try await eventually(timeout: .seconds(30)) { load.recorded.dropFirst(before).filter { $0.status == 202 }.count >= 40 })
            load.stop()
            #expect(try await eventually(timeout: .seconds(10)) { await fleet.projectionsCaughtUp() })
            #expect(try await eventually(timeout: .seconds(10)) { await fleet.get(servers[0], "/readyz").status == 200 })
        }
        let answers = load.recorded
        // Every request was answered by its deadline (2 s, and a little for the answer's way back).
        let late = answers.filter { $0.seconds > 3.5 || $0.status == 0 }
        #expect(late.isEmpty, "\(late.prefix(5))")
        // What was refused says when to retry; 503 and 504 both happened while PostgreSQL was away.
        let refused = answers.filter { $0.status == 503 }
        #expect(!refused.isEmpty)
        #expect(refused.allSatisfy { $0.retryAfter != nil }, "\(refused.prefix(3))")
        #expect(answers.allSatisfy { [200, 202, 503, 504].contains($0.status) }, "\(answers.filter { ![200, 202, 503, 504].contains($0.status) }.prefix(3))")
        // /readyz said so while PostgreSQL was away.
        if let outage {
            let during = readiness.recorded.filter { $0.at > outage.from + .seconds(3) && $0.at < outage.to - .seconds(1) }
            #expect(!during.isEmpty && during.allSatisfy { $0.status == 503 }, "\(during.map(\.status))")
        }
        // An unknown outcome is settled by retrying with the same messageId.
        for answer in answers where answer.status == 504 {
            let retried = await fleet.post(servers[0], conversation: answer.conversation, visitor: "v-\(answer.conversation)", messageId: answer.messageId)
            #expect(retried.status == 200 || retried.status == 202, "\(retried)")
        }
        let stored = try await fleet.storedMessageIds(load.conversations)
        for answer in answers {
            let copies = stored[answer.conversation]?.filter { $0 == answer.messageId }.count ?? 0
            switch answer.status {
            case 503: #expect(copies == 0, "answered 503 but stored: \(answer)")
            case 200, 202, 504: #expect(copies == 1, "\(answer) stored \(copies) times")
            default: break
            }
        }
        for server in servers {
            let status = try await server.stop(timeout: .seconds(15))
            #expect(status == 0, "\(server.failureSummary)")
        }
        let verify = try await ConvoProcess.run(["projections", "verify", "--all"], environment: fleet.env)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let audit = try await ConvoProcess.run(["audit", "verify", "--tenant", fleet.tenant], environment: fleet.env)
        #expect(audit.status == 0, "\(audit.stdout)\(audit.stderr)")
    }

    @Test func sigtermUnderLoadExitsZeroWithinTheShutdownTimeoutWithPostgresUpOrDown() async throws {
        let fleet = try await FaultFleet()
        // The default timeout and a short one with PostgreSQL up, and a short one with PostgreSQL gone.
        for round in 0..<3 {
            let timeout = round == 1 ? 30 : 2
            let server = try await fleet.serve(["--shutdown-timeout", "\(timeout)", "--request-timeout", "2"])
            #expect(try await eventually(timeout: .seconds(60)) { await fleet.get(server, "/readyz").status == 200 })
            let load = MessageLoad(conversations: 8, prefix: "term-\(round)")
            let postgresDown = round == 2
            var signalled = Date.distantFuture
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await load.run(fleet: fleet, servers: [server], workers: 8, pause: .milliseconds(5)) }
                defer { load.stop() }
                #expect(try await eventually(timeout: .seconds(30)) { load.recorded.filter { $0.status == 202 }.count >= 30 })
                if postgresDown { try await fleet.postgres.stop() }
                let started = ContinuousClock.now
                signalled = Date()
                let status = try await server.stop(timeout: .seconds(Int64(timeout) + 10))
                let took = ContinuousClock.now - started
                #expect(status == 0, "round \(round): \(server.failureSummary)")
                #expect(took < .seconds(Int64(timeout) + 2), "round \(round) took \(took)")
                print("fault: SIGTERM round \(round) (timeout \(timeout) s, PostgreSQL \(postgresDown ? "down" : "up")) exited \(status.map(String.init) ?? "-") after \(took)")
                load.stop()
            }
            if postgresDown { try await fleet.postgres.start() }
            if !postgresDown {
                // Once told to stop, the instance took no new decision: what it appended after the signal is
                // at most the decision that was in flight (a second's grace), nothing later.
                let late = try await fleet.decisions(byPid: server.pid, after: signalled.addingTimeInterval(1))
                #expect(late == 0, "round \(round): \(late) events appended by the stopping instance after the signal")
            }
            // Nothing acknowledged was lost.
            let stored = try await fleet.storedMessageIds(load.conversations)
            for answer in load.recorded where answer.status == 202 {
                #expect(stored[answer.conversation]?.filter { $0 == answer.messageId }.count == 1, "round \(round): \(answer)")
            }
        }
    }

    @Test func aFullIngestQueueRefusesAtOnceAndA503IsNeverStored() async throws {
        let fleet = try await FaultFleet()
        let server = try await fleet.serve(["--ingest-queue-limit", "4", "--request-timeout", "3", "--no-responder", "--key-cache-seconds", "120"])
        #expect(try await eventually(timeout: .seconds(60)) { await fleet.get(server, "/readyz").status == 200 })
        // The key is checked (and remembered) before PostgreSQL goes: what follows is ingest's own waiting.
        #expect(await fleet.post(server, conversation: "warm", visitor: "v", messageId: "m").status == 202)
        try await fleet.postgres.stop()
        let answers = await withTaskGroup(of: (Int, String?, String, Double, Int).self) { group in
            for index in 0..<24 {
                group.addTask {
                    let started = ContinuousClock.now
                    let answer = await fleet.post(server, conversation: "shed-\(index)", visitor: "v", messageId: "m")
                    let took = ContinuousClock.now - started
                    return (answer.status, answer.retryAfter, answer.body, took.inSeconds, index)
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        // The two batch writers take what arrived first (their batches wait for PostgreSQL to look up the
        // conversations' owners; nothing of them is sent); at most 4 more wait in the queue; all those are
        // answered 503 "not stored" at the deadline; the rest are refused at once.
        let shed = answers.filter { $0.2.contains("overloaded") }
        #expect(shed.count >= 10, "\(answers.map(\.0))")
        #expect(answers.allSatisfy { $0.0 == 503 }, "nothing was sent, so nothing is 'maybe stored': \(answers.map { ($0.0, $0.2.prefix(80)) })")
        let quick = shed.allSatisfy { $0.0 == 503 && $0.1 != nil && $0.3 < 1.5 }
        #expect(quick, "\(shed.map(\.3))")
        // Waiting ones are given up at the deadline (503, not stored, and not written when PostgreSQL returns).
        let byDeadline = answers.allSatisfy { $0.3 < 4.5 }
        #expect(byDeadline, "\(answers.map { ($0.0, $0.3) })")
        try await fleet.postgres.start()
        #expect(try await eventually(timeout: .seconds(30)) { await fleet.get(server, "/readyz").status == 200 })
        let metrics = await fleet.get(server, "/metrics").body
        #expect(metrics.contains("convo_ingest_shed"), "\(metrics.prefix(300))")
        let stored = try await fleet.storedMessageIds((0..<24).map { "shed-\($0)" })
        for answer in answers {
            let copies = stored["shed-\(answer.4)"]?.count ?? 0
            #expect(answer.0 == 503 ? copies == 0 : copies <= 1, "shed-\(answer.4) answered \(answer.0), stored \(copies) times")
        }
        #expect(try await server.stop() == 0, "\(server.failureSummary)")
    }
}
