import ConvoTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// An instance that stops without closing its connections (SIGSTOP: a frozen process, a paused VM) while
/// it is the one running the projections and sending an endpoint's webhooks. Its PostgreSQL sessions are
/// leases (`--lease-timeout`): PostgreSQL ends them once no heartbeat came for that long, their advisory
/// locks go free, and the other instance takes the work over while the frozen one still sleeps. When it
/// wakes it finds its sessions gone and stands by; nothing is applied or delivered out of order.
@Suite(.serialized, .timeLimit(.minutes(5))) struct FrozenInstanceTests {
    @Test func aFrozenInstancesRunnersAndWebhookSenderAreTakenOverOnceItsLeaseEnds() async throws {
        let fleet = try await FaultFleet(environment: ["CONVO_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1,1,1,1,1,1,1,1"])
        let receiver = try await WebhookReceiver(secrets: [WebhookDeliveryTests.secret])
        let options = ["--lease-timeout", "3", "--projection-stale-seconds", "2"]
        // The first instance alone: it takes every runner lock and the endpoint's sender lock.
        let frozen = try await fleet.serve(options)
        #expect(try await eventually(timeout: .seconds(60)) { await fleet.projectionsCaughtUp() })
        let desk = try await WebhookDeliveryTests.put(fleet, frozen, "desk", url: receiver.url)
        let start = try #require(desk.health?.checkpoint)
        #expect(try await eventually(timeout: .seconds(20)) { try await WebhookDeliveryTests.endpoint(fleet, frozen, "desk").health?.activeSenders == 1 })
        let other = try await fleet.serve(options)
        #expect(try await eventually(timeout: .seconds(60)) { await fleet.get(other, "/readyz").status == 200 })
        #expect(try await eventually(timeout: .seconds(20)) { (try? await fleet.projectionStatus()).map { $0.count == 3 && $0.allSatisfy { $0.standby == 1 } } == true })
        #expect(try await fleet.projectionStatus().allSatisfy { $0.runningIn.count == 1 && $0.runningIn[0].hasPrefix("\(frozen.pid)@") })
        let conversations = (0..<6).map { "frozen-\($0)" }
        try await WebhookDeliveryTests.ingest(fleet, [frozen, other], conversations: conversations, messages: 1)
        #expect(try await eventually(timeout: .seconds(30)) { await fleet.projectionsCaughtUp() })

        // Its leases, named in pg_stat_activity: the LISTEN, a runner per projection, the endpoints' sender.
        var sessions: [String] = []
        #expect(try await eventually(timeout: .seconds(20)) {
            sessions = try await Self.leasedSessions(fleet, of: frozen.pid)
            return Self.count("listen", sessions) == 1 && Self.count("projection", sessions) == 3 && Self.count("webhooks", sessions) == 1
        }, "\(sessions)")

        frozen.send(SIGSTOP)
        defer { frozen.send(SIGCONT) }
        try await WebhookDeliveryTests.ingest(fleet, [other], conversations: conversations, messages: 2, from: 1)
        // Without the lease the projections would wait for as long as the freeze lasts (see
        // PostgresFaultTests.aFrozenRunnerIsReportedByReadyzStatusAndVerify); with it, the other instance runs them.
        var statuses: [FaultFleet.ProjectionState] = []
        let takenOver = try await eventually(timeout: .seconds(30)) {
            statuses = (try? await fleet.projectionStatus()) ?? []
            return await fleet.projectionsCaughtUp()
        }
        #expect(takenOver, "\(statuses)")
        // `status` says where: every runner is in the other instance's session now.
        statuses = try await fleet.projectionStatus()
        #expect(statuses.allSatisfy { $0.runningIn.count == 1 && $0.runningIn[0].hasPrefix("\(other.pid)@") }, "\(statuses)")
        // The API, which tenants' keys read, reports the runners but not the service's hosts.
        let listed = await fleet.get(other, "/v1/projections", authorized: true)
        #expect(listed.status == 200 && listed.body.contains("\"activeRunners\":1"), "\(listed)")
        #expect(!listed.body.contains("runningIn") && !listed.body.contains("\(other.pid)@"), "\(listed.body)")
        // Every session it held as a lease is ended, its LISTEN too: PostgreSQL's notification queue is not held
        // back by a listener that reads nothing.
        #expect(try await eventually(timeout: .seconds(20)) {
            sessions = try await Self.leasedSessions(fleet, of: frozen.pid)
            return sessions.isEmpty
        }, "\(sessions)")
        #expect(Self.count("listen", try await Self.leasedSessions(fleet, of: other.pid)) == 1)
        #expect(try await eventually(timeout: .seconds(20)) { await fleet.get(other, "/readyz").status == 200 })
        // And it sends the endpoint's webhooks: everything owed so far is accepted while the first still sleeps.
        var owed = 0
        var accepted = 0
        let delivered = try await eventually(timeout: .seconds(60)) {
            guard (try? await fleet.allProcessed(conversations).done) == true else { return false }
            let expected = try await WebhookDeliveryTests.expected(fleet, after: start)
            let ids = Set(try receiver.entries().filter { $0.status == 200 }.map(\.id))
            (owed, accepted) = (expected.count, ids.count)
            return !expected.isEmpty && Set(expected.keys).isSubset(of: ids)
        }
        #expect(delivered, "\(owed) owed, \(accepted) accepted")
        let sentByOther = Set(try await WebhookDeliveryTests.deliveries(fleet, other, "desk").flatMap { $0.attempts.map(\.instance) })
        #expect(sentByOther.contains { $0.hasSuffix(":\(other.pid)") }, "the other instance took the endpoint over: \(sentByOther)")

        // The frozen instance wakes: its sessions are gone, it stands by for every runner and serves on.
        frozen.send(SIGCONT)
        #expect(try await eventually(timeout: .seconds(30)) {
            statuses = (try? await fleet.projectionStatus()) ?? []
            return statuses.count == 3 && statuses.allSatisfy { $0.activeRunners == 1 && $0.standby == 1 }
        }, "\(statuses)")
        #expect(try await eventually(timeout: .seconds(30)) { await fleet.get(frozen, "/readyz").status == 200 })
        // It listens again, and stands by on a lease per projection.
        #expect(try await eventually(timeout: .seconds(20)) {
            sessions = try await Self.leasedSessions(fleet, of: frozen.pid)
            return Self.count("listen", sessions) == 1 && Self.count("projection", sessions) == 3
        }, "\(sessions)")
        try await WebhookDeliveryTests.ingest(fleet, [frozen, other], conversations: conversations, messages: 1, from: 3)
        #expect(try await eventually(timeout: .seconds(30)) { await fleet.projectionsCaughtUp() })
        let all = try await eventually(timeout: .seconds(60)) {
            guard (try? await fleet.allProcessed(conversations).done) == true else { return false }
            let expected = try await WebhookDeliveryTests.expected(fleet, after: start)
            let ids = Set(try receiver.entries().filter { $0.status == 200 }.map(\.id))
            return Set(expected.keys).isSubset(of: ids)
        }
        #expect(all)
        let entries = try receiver.entries()
        #expect(entries.allSatisfy { $0.verified }, "\(entries.filter { !$0.verified }.prefix(3))")
        #expect(WebhookDeliveryTests.orderKept(entries).isEmpty, "\(WebhookDeliveryTests.orderKept(entries).prefix(5))")
        #expect(try await eventually(timeout: .seconds(30)) { try await WebhookDeliveryTests.endpoint(fleet, other, "desk").health?.activeSenders == 1 })

        let verify = try await ConvoProcess.run(["projections", "verify", "--all"], environment: fleet.env)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        for server in [frozen, other] { #expect(try await server.stop(timeout: .seconds(40)) == 0, "\(server.failureSummary)") }
    }

    /// The `application_name`s of the sessions process `pid` holds as leases (`convo ROLE PID@HOST`).
    static func leasedSessions(_ fleet: FaultFleet, of pid: Int32) async throws -> [String] {
        try await fleet.withStore { store in
            let rows = try await store.client.query(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE \("convo % \(pid)@%")", logger: TestDatabase.logger)
            var names: [String] = []
            for try await name in rows.decode(String.self) { names.append(name) }
            return names
        }
    }

    /// How many of `sessions` hold a lease for `role` (its first word).
    static func count(_ role: String, _ sessions: [String]) -> Int {
        sessions.filter { $0.split(separator: " ").dropFirst().first.map(String.init) == role }.count
    }
}
