import AsyncHTTPClient
import ConvoTestSupport
import EventStore
import Foundation
import Responder
import SharedTypes
import NIOCore
import Testing
import Webhooks

@testable import convo

/// Forgetting a visitor (crypto-shredding), exporting what convo holds about them, and retention: on a
/// PostgreSQL cluster of the test's own, so that a `pg_dump` of it shows everything convo stored.
@Suite struct PrivacyTests {
    static func token(_ label: String) -> String { "\(label)\(UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased())" }

    static func dump(_ fleet: FaultFleet) async throws -> String {
        let bin = ProcessInfo.processInfo.environment["PG_BIN"] ?? "/usr/lib/postgresql/15/bin"
        return try await PostgresServer.shell(["\(bin)/pg_dump", "-h", "127.0.0.1", "-p", "\(fleet.postgres.port)", "-U", "convo", "convo"])
    }

    func say(_ fleet: FaultFleet, _ server: ServeProcess, _ conversation: String, _ visitor: String, _ id: String, _ text: String) async throws {
        let sent = await fleet.send(
            server, .POST, "/v1/conversations/\(conversation)/messages", json: #"{"visitorUid": "\#(visitor)", "messageId": "\#(id)", "text": "\#(text)"}"#)
        #expect(sent.status == 202, "\(sent.body)")
    }

    @Test func aForgottenVisitorIsErasedEverywhereWhileEverythingStillVerifies() async throws {
        let fleet = try await FaultFleet()
        let server = try await fleet.serve()
        let tenant = TenantID(rawValue: fleet.tenant)!
        // Visitor A in two conversations (an agent replies and notes in one), visitor B in one.
        let a = (visitor: "va-\(UUID().uuidString.prefix(6).lowercased())", c1: "ca1-\(UUID().uuidString.prefix(6).lowercased())", c2: "ca2-\(UUID().uuidString.prefix(6).lowercased())")
        let b = (visitor: "vb-\(UUID().uuidString.prefix(6).lowercased())", c: "cb-\(UUID().uuidString.prefix(6).lowercased())")
        let aTexts = [Self.token("asecret"), Self.token("asecret"), Self.token("asecret")]
        let bTexts = [Self.token("bkeep"), Self.token("bkeep")]
        try await say(fleet, server, a.c1, a.visitor, "m1", "where is my order \(aTexts[0])")
        try await say(fleet, server, a.c2, a.visitor, "m1", "my email is \(aTexts[1])@example.com")
        try await say(fleet, server, b.c, b.visitor, "m1", "where is my order \(bTexts[0])")
        try await say(fleet, server, b.c, b.visitor, "m2", "price of \(bTexts[1])")
        #expect(try await eventually { try await fleet.allProcessed([a.c1, a.c2, b.c]).done })
        let agent = try await fleet.withStore { store in
            try await AgentStore(client: store.client, logger: TestDatabase.logger).create(
                tenant: tenant, email: "ada@\(tenant.rawValue).example", name: "Ada", role: .agent)
        }
        #expect(await fleet.send(server, .POST, "/v1/conversations/\(a.c1)/assignment", key: agent.key).status == 201)
        #expect(await fleet.send(server, .POST, "/v1/conversations/\(a.c1)/agent-messages", json: #"{"text": "reply \#(aTexts[2])"}"#, key: agent.key).status == 201)
        #expect(await fleet.send(server, .POST, "/v1/conversations/\(a.c1)/notes", json: #"{"text": "note \#(aTexts[2])"}"#, key: agent.key).status == 201)
        #expect(try await eventually { await fleet.projectionsCaughtUp() })

        // Before: the events hold ciphertext only; the projections' personal values (a saved answer) are plain.
        let before = try await Self.dump(fleet)
        let eventsSection = try await PostgresServer.shell([
            "\(ProcessInfo.processInfo.environment["PG_BIN"] ?? "/usr/lib/postgresql/15/bin")/pg_dump", "-h", "127.0.0.1", "-p", "\(fleet.postgres.port)", "-U", "convo",
            "--table=events", "convo",
        ])
        let shownBefore = before.contains(aTexts[0])
        #expect(shownBefore, "the dump can show a visitor's words (a projection's saved answer)")
        let plainInEvents = (aTexts + bTexts).filter { eventsSection.contains($0) }
        #expect(plainInEvents.isEmpty, "the events table holds a visitor's words in plaintext")

        // Forget A: every instance, every read, every projection.
        let forgotten = await fleet.send(server, .DELETE, "/v1/visitors/\(a.visitor)?reason=gdpr%20request")
        #expect(forgotten.status == 200, "\(forgotten.body)")
        let erasure = try JSONDecoder.convo.decode(VisitorPrivacy.Erasure.self, from: Data(forgotten.body.utf8))
        #expect(Set(erasure.conversations) == [a.c1, a.c2] && erasure.keyGenerations == [1] && !erasure.alreadyForgotten && erasure.reason == "gdpr request")
        let again = await fleet.send(server, .DELETE, "/v1/visitors/\(a.visitor)")
        let second = try JSONDecoder.convo.decode(VisitorPrivacy.Erasure.self, from: Data(again.body.utf8))
        #expect(again.status == 200 && second.alreadyForgotten && second.erasureId == erasure.erasureId && second.reason == "gdpr request")
        #expect(await fleet.send(server, .DELETE, "/v1/visitors/nobody-\(UUID().uuidString.prefix(6))").status == 404)
        #expect(try await eventually { await fleet.projectionsCaughtUp() })

        let after = try await Self.dump(fleet)
        let leaked = aTexts.filter { after.contains($0) }
        #expect(leaked.isEmpty, "visitor A's words are still in the database")
        // Reads show the structure, the content erased.
        let transcript = await fleet.send(server, .GET, "/v1/conversations/\(a.c1)/messages")
        #expect(transcript.status == 200 && !aTexts.contains { transcript.body.contains($0) } && transcript.body.contains(PersonalData.erasedPlaceholder))
        #expect(transcript.body.contains("\"erased\":true") || transcript.body.contains("\"erased\" : true"))
        let events = await fleet.send(server, .GET, "/v1/conversations/\(a.c2)/events")
        #expect(events.status == 200 && !aTexts.contains { events.body.contains($0) } && events.body.contains(VisitorDataErased.eventType))
        let audit = await fleet.send(server, .GET, "/v1/audit/events?visitor=\(a.visitor)&limit=500")
        #expect(audit.status == 200 && !aTexts.contains { audit.body.contains($0) } && audit.body.contains(VisitorForgotten.eventType))
        let other = await fleet.send(server, .GET, "/v1/conversations/\(b.c)/messages")
        #expect(bTexts.allSatisfy { other.body.contains($0) }, "visitor B's conversation changed")

        // The log still verifies; the projections equal a fresh fold, before and after a rebuild.
        let verified = try await ConvoProcess.run(["audit", "verify", "--tenant", fleet.tenant], environment: fleet.env)
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
        let projections = try await ConvoProcess.run(["projections", "verify", "--all"], environment: fleet.env)
        #expect(projections.status == 0, "\(projections.stdout)\(projections.stderr)")
        let rebuilt = try await ConvoProcess.run(["projections", "rebuild", "--all"], environment: fleet.env, timeout: .seconds(120))
        #expect(rebuilt.status == 0, "\(rebuilt.stderr)")
        let reverified = try await ConvoProcess.run(["projections", "verify", "--all"], environment: fleet.env)
        #expect(reverified.status == 0, "\(reverified.stdout)\(reverified.stderr)")

        // Exports: B's holds exactly B's words; A's shows the structure, erased.
        let exportB = await fleet.send(server, .GET, "/v1/visitors/\(b.visitor)/export")
        #expect(exportB.status == 200)
        let bExport = try JSONDecoder.convo.decode(VisitorPrivacy.Export.self, from: Data(exportB.body.utf8))
        let bVisitorTexts = bExport.conversations.flatMap(\.messages).filter { $0.author == "visitor" }.map(\.text)
        #expect(bVisitorTexts == ["where is my order \(bTexts[0])", "price of \(bTexts[1])"] && bExport.conversations.map(\.conversationId) == [b.c])
        #expect(!aTexts.contains { exportB.body.contains($0) })
        #expect(bExport.conversations.first?.messages.contains { $0.author == "assistant" && !$0.erased } == true)
        let cliExport = try await ConvoProcess.run(["visitors", "export", a.visitor, "--tenant", fleet.tenant], environment: fleet.env)
        #expect(cliExport.status == 0 && !aTexts.contains { cliExport.stdout.contains($0) } && cliExport.stdout.contains(erasure.erasureId))
        let aExport = try JSONDecoder.convo.decode(VisitorPrivacy.Export.self, from: Data(cliExport.stdout.utf8))
        #expect(aExport.conversations.count == 2 && aExport.conversations.flatMap(\.messages).allSatisfy(\.erased) && aExport.keys.map(\.erased) == [true])

        // A comes back: new words are kept (a new key); the old ones stay erased.
        let back = Self.token("aback")
        try await say(fleet, server, a.c1, a.visitor, "m9", "hello again \(back)")
        #expect(try await eventually { await fleet.send(server, .GET, "/v1/conversations/\(a.c1)/messages").body.contains(back) })
        let cliForget = try await ConvoProcess.run(["visitors", "forget", a.visitor, "--tenant", fleet.tenant, "--reason", "asked twice", "--json"], environment: fleet.env)
        #expect(cliForget.status == 0, "\(cliForget.stderr)")
        #expect(try await eventually { !(await fleet.send(server, .GET, "/v1/conversations/\(a.c1)/messages").body.contains(back)) })
        #expect(try await server.stop() == 0, "\(server.failureSummary)")
    }
}

extension PrivacyTests {
    /// The AI is mid-reply to what the visitor said when the visitor is forgotten: the reply it was writing is
    /// never stored readable, the decision is thrown away, and the erased message counts as consumed.
    @Test func aVisitorForgottenWhileTheirMessageIsProcessedGetsNoReplyWrittenBack() async throws {
        try await APIHarness.with { api in
            let conversation = APIHarness.conversationID()
            let secret = Self.token("mid")
            #expect(try await api.post(conversation, #"{"visitorUid": "v-mid", "messageId": "m1", "text": "where is my order \#(secret)"}"#).status == .accepted)
            let gated = GatedProvider()
            let store = PostgresEventStore(client: api.pg, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
            let processor = ConversationProcessor(
                store: store, redis: RedisClient(configuration: try RedisConfiguration(url: try TestDatabase.redisURL)),
                workflows: WorkflowRepository(client: api.pg, logger: TestDatabase.logger), provider: gated, logger: TestDatabase.logger)
            let processing = Task {
                try await processor.process(tenant: api.tenant, visitor: VisitorUID(rawValue: "v-mid")!, conversation: ConversationID(rawValue: conversation)!)
            }
            #expect(try await eventually { gated.called })  // the AI holds the visitor's words now
            let forgotten = try await api.request(.delete, "/v1/visitors/v-mid?reason=test", key: api.admin)
            #expect(forgotten.status == .ok, "\(forgotten.text)")
            gated.release()
            _ = try await processing.value
            let events = try await AgentTests.workflowEvents(api, conversation)
            #expect(!events.contains { $0.type == AssistantMessageSent.eventType && !$0.isErased }, "\(events.map(\.type))")
            #expect(events.contains { $0.type == VisitorDataErased.eventType })
            // Nothing is left for the responder: the erased message is consumed, and processing again writes nothing.
            let again = try await processor.process(tenant: api.tenant, visitor: VisitorUID(rawValue: "v-mid")!, conversation: ConversationID(rawValue: conversation)!)
            #expect(again.eventsAppended == 0)
            let state = try await api.request(.get, "/v1/conversations/\(conversation)/state", key: api.read).text
            #expect(!state.contains(secret), "\(state)")
            // Only an admin forgets, and a malformed uid is a clear error.
            #expect(try await api.request(.delete, "/v1/visitors/v-mid", key: api.read).status == .forbidden)
            #expect(try await api.request(.delete, "/v1/visitors/bad%20uid", key: api.admin).errorCode == "invalid_visitor_uid")
            // Another tenant's admin sees nothing of this visitor.
            #expect(try await api.request(.get, "/v1/visitors/v-mid/export", key: api.stranger).status == .notFound)
        }
    }

    /// A tenant's retention period forgets its quiet visitors, once, by one instance of several; a dry run
    /// lists them and forgets nobody; another tenant's visitors are untouched.
    @Test func retentionForgetsQuietVisitorsOnceAcrossInstancesAfterADryRun() async throws {
        let fleet = try await FaultFleet(environment: ["CONVO_RETENTION_INTERVAL_SECONDS": "1"])
        let quiet = "vq-\(UUID().uuidString.prefix(6).lowercased())"
        // The first instance's retention passes run at its start and then hourly: the dry run below sees the
        // visitor before anyone forgets them.
        let first = try await fleet.serve(["--retention-interval", "3600"])
        try await say(fleet, first, "rq-1", quiet, "m1", "hello \(Self.token("quiet"))")
        // Another tenant without a retention period.
        let otherTenant = TestDatabase.uniqueTenant().rawValue
        let made = try await ConvoProcess.run(["keys", "create", "--tenant", otherTenant, "--scopes", "ingest,read,admin", "--json"], environment: fleet.env)
        let otherKey = try JSONDecoder().decode(FaultFleet.Created.self, from: Data(made.stdout.utf8)).key
        let kept = await fleet.send(
            first, .POST, "/v1/conversations/rk-1/messages", json: #"{"visitorUid": "vk", "messageId": "m1", "text": "keep me"}"#, key: otherKey)
        #expect(kept.status == 202)
        #expect(try await eventually { try await fleet.allProcessed(["rq-1"]).done })

        // 0.00002 days is 1.7 s: the quiet visitor passes it while the test looks.
        let set = await fleet.send(first, .PUT, "/v1/settings", json: #"{"visitorRetentionDays": 0.00002}"#)
        #expect(set.status == 200 && set.body.contains("visitorRetentionDays"), "\(set.body)")
        var listed = false
        _ = try await eventually {
            let dry = try await ConvoProcess.run(["visitors", "retention", "--tenant", fleet.tenant, "--dry-run", "--json"], environment: fleet.env)
            listed = dry.stdout.contains(quiet) || listed
            return listed
        }
        #expect(listed)
        let dryAgain = try await ConvoProcess.run(["visitors", "retention", "--tenant", fleet.tenant, "--dry-run"], environment: fleet.env)
        #expect(dryAgain.stdout.contains("would forget") && dryAgain.stdout.contains(quiet), "\(dryAgain.stdout)")
        #expect(!(await fleet.send(first, .GET, "/v1/conversations/rq-1/messages").body.contains(PersonalData.erasedPlaceholder)), "a dry run forgot")
        // Two instances with a pass every second.
        let second = try await fleet.serve()
        let third = try await fleet.serve()
        #expect(try await eventually { await fleet.send(first, .GET, "/v1/conversations/rq-1/messages").body.contains(PersonalData.erasedPlaceholder) })
        // Both instances go on running passes (two more, whoever holds the lock); the visitor was forgotten once.
        func metric(_ name: String) async -> Double {
            var total = 0.0
            for server in [second, third] {
                for line in await fleet.get(server, "/metrics").body.split(separator: "\n") where line.hasPrefix(name) {
                    total += Double(line.split(separator: " ").last ?? "0") ?? 0
                }
            }
            return total
        }
        let passes = await metric("convo_retention_passes")
        #expect(try await eventually { await metric("convo_retention_passes") >= passes + 2 })
        let records = try await fleet.withStore { store in
            try await store.readVisitorEvents(VisitorUID(rawValue: quiet)!, type: VisitorForgotten.eventType, tenant: TenantID(rawValue: fleet.tenant)!)
        }
        #expect(records.count == 1)
        #expect(try records.first?.decode(VisitorForgotten.self).requestedBy == "system:retention")
        let other = await fleet.send(first, .GET, "/v1/conversations/rk-1/messages", key: otherKey)
        #expect(other.body.contains("keep me"))
        let forgottenTotal = await metric("convo_retention_forgotten")
        #expect(forgottenTotal == 1)
        #expect(try await first.stop() == 0, "\(first.failureSummary)")
        #expect(try await second.stop() == 0, "\(second.failureSummary)")
        #expect(try await third.stop() == 0, "\(third.failureSummary)")
    }
}

extension PrivacyTests {
    /// A help desk hears of an erasure per conversation, and a message sent after it says it is erased.
    @Test func theHelpDeskIsToldOfAnErasureAndOfErasedContent() throws {
        let erased = VisitorDataErased(visitorUid: VisitorUID(rawValue: "v-1")!, messagesVersion: 3, erasureId: "e-1")
        let event = RecordedEvent(
            globalPosition: 9, eventId: UUID(), tenant: TenantID(rawValue: "t1")!, stream: StreamName(unchecked: "workflow-c-7"), streamVersion: 4,
            type: VisitorDataErased.eventType, data: ByteBuffer(data: try JSONCoding.encoder.encode(erased)), metadataJSON: ByteBuffer(string: "{}"),
            recordedAt: Date())
        let message = try #require(WebhookMessage(event))
        #expect(message.type == .erased && message.conversationId == "c-7")
        #expect(try WebhookEventType.parse(["conversation.erased"]) == [.erased])
        #expect(throws: WebhookError.self) { try WebhookEventType.parse(Array(repeating: "conversation.erased", count: 21)) }
    }
}

extension PrivacyTests {
    /// The master key rotated as an operator does it, while visitors keep writing: servers given the new key
    /// first and the old one after, `convo encryption rotate-master-key`, then the old key dropped. Nothing is lost.
    @Test func theMasterKeyIsRotatedWithTheCommandsUnderLoadAndNothingIsLost() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("convo-keys-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let (old, new) = (MasterKeyring.generateKey(), MasterKeyring.generateKey())
        let oldFile = folder.appendingPathComponent("old").path
        let bothFile = folder.appendingPathComponent("both").path
        let newFile = folder.appendingPathComponent("new").path
        try old.write(toFile: oldFile, atomically: true, encoding: .utf8)
        try "\(new)\n\(old)\n".write(toFile: bothFile, atomically: true, encoding: .utf8)
        try new.write(toFile: newFile, atomically: true, encoding: .utf8)
        let fleet = try await FaultFleet(environment: ["CONVO_MASTER_KEY_FILE": oldFile])
        var sent: [String: [String]] = [:]
        let before = try await fleet.serve()
        for index in 0..<12 {
            let text = Self.token("old\(index)-")
            try await say(fleet, before, "rot-\(index)", "v\(index)", "m0", "hello \(text)")
            sent["rot-\(index)", default: []].append(text)
        }
        // The rolling change: an instance with both keys (the new one current) takes over.
        let during = try await fleet.serve(["--master-key-file", bothFile])
        #expect(try await before.stop() == 0, "\(before.failureSummary)")
        let load = Task { () -> [String: [String]] in
            var more: [String: [String]] = [:]
            for round in 1...6 {
                for index in stride(from: round % 2, to: 24, by: 2) {
                    let text = Self.token("new\(index)-")
                    let reply = await fleet.send(
                        during, .POST, "/v1/conversations/rot-\(index)/messages",
                        json: #"{"visitorUid": "v\#(index)", "messageId": "m\#(round)", "text": "hello \#(text)"}"#)
                    if reply.status == 202 { more["rot-\(index)", default: []].append(text) }
                }
            }
            return more
        }
        let rotated = try await ConvoProcess.run(["encryption", "rotate-master-key", "--master-key-file", bothFile, "--batch-size", "3"], environment: fleet.env)
        #expect(rotated.status == 0, "\(rotated.stdout)\(rotated.stderr)")
        for (conversation, texts) in await load.value { sent[conversation, default: []] += texts }
        // Keys made meanwhile were made with the new key: nothing is left under the old one.
        let status = try await ConvoProcess.run(["encryption", "status", "--master-key-file", newFile], environment: fleet.env)
        #expect(status.status == 0 && status.stdout.contains("current") && !status.stdout.contains("missing"), "\(status.stdout)")
        #expect(try await during.stop() == 0, "\(during.failureSummary)")
        // The old key is gone: everything reads with the new one alone.
        let after = try await fleet.serve(["--master-key-file", newFile])
        for (conversation, texts) in sent {
            let transcript = await fleet.send(after, .GET, "/v1/conversations/\(conversation)/messages")
            #expect(transcript.status == 200 && texts.allSatisfy { transcript.body.contains($0) }, "\(conversation): \(transcript.body.prefix(300))")
        }
        #expect(sent.values.map(\.count).reduce(0, +) > 40)
        #expect(try await after.stop() == 0, "\(after.failureSummary)")
    }
}

extension JSONDecoder {
    /// Decodes what convo answers (dates as RFC 3339 with fractions).
    static var convo: JSONDecoder { JSONCoding.decoder }
}
