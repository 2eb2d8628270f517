import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
import Projections
import SharedTypes
import Synchronization
import Testing

@Suite struct RebuildVerifyTests {
    @Test func aRebuildWhileAppendsContinueMissesNothingAndEndsEqualToAFreshFold() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.run(turns: 40, conversations: 8)
                // Readers withhold events behind any open transaction of the cluster (other tests' too): the
                // rebuild is to start with these events readable.
                #expect(try await settled(store))
                let runners = RunnerTests.runners(store)
                try await RunnerTests.running(runners) {
                    #expect(try await eventually { runners.allSatisfy { $0.state == .running } })
                    // Small batches and a low swap threshold: several catch-up passes while appends go on.
                    let rebuilder = ProjectionRebuilder(
                        store: store, configuration: .init(batchSize: 25, swapThreshold: 10), logger: TestDatabase.logger)
                    let summaries = try await withThrowingTaskGroup(of: [ProjectionRebuilder.Summary]?.self) { group in
                        group.addTask {
                            try await traffic.run(turns: 120, conversations: 12, prefix: "live")
                            return nil
                        }
                        group.addTask { try await rebuilder.rebuild(ProjectionRegistry.standard, reason: "test") }
                        var summaries: [ProjectionRebuilder.Summary] = []
                        for try await result in group { if let result { summaries = result } }
                        return summaries
                    }
                    #expect(summaries.map(\.projection).sorted() == ["conversations", "visitors", "workflow_state"])
                    #expect(summaries.allSatisfy { $0.events > 0 && $0.rows > 0 }, "\(summaries)")
                    let caughtUp = try await RunnerTests.caughtUp(runners, store)
                    #expect(caughtUp)
                }
                try await RunnerTests.verifyClean(store)
                let statuses = try await ProjectionStatus.read(ProjectionRegistry.standard, store: store, logger: TestDatabase.logger)
                #expect(statuses.allSatisfy { $0.lastRebuild?.outcome == "swapped" && $0.lastRebuild?.reason == "test" })
                // Nothing of the rebuild is left behind.
                let leftovers = try await store.client.query("SELECT count(*) FROM pg_tables WHERE tablename ~ '_r[0-9]+$'")
                for try await count in leftovers.decode(Int64.self) { #expect(count == 0) }
            }
        }
    }

    @Test func aRebuildDecryptsOnlyThePersonalMembersItsFoldsReadAndEqualsAFreshFold() async throws {
        // The standard folds read variables and tool arguments, never a text: a rebuild leaves texts sealed.
        #expect(PersonalDataOpening.read(by: ProjectionRegistry.standard) == .only([WorkflowVariableSet.eventType, ToolCalled.eventType]))
        #expect(PersonalDataOpening.read(by: ProjectionRegistry.standard + [NoDeclaration()]) == .all)
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.run(turns: 12, conversations: 3)
                // A visitor whose profile a tool set (personal arguments) and whose variable holds their words.
                let tenant = traffic.tenant
                let visitor = VisitorUID(rawValue: "v-profile")!, id = ConversationID(rawValue: "profile")!
                let subject = PersonalDataSubject(visitor: visitor, mayCreateKey: true)
                try await store.append(
                    [
                        try NewEvent(type: ConversationStarted.eventType, encoding: ConversationStarted(visitorUid: visitor, startedAt: Date())),
                        try NewEvent(
                            type: VisitorMessageReceived.eventType,
                            encoding: VisitorMessageReceived(messageId: "m1", visitorUid: visitor, text: "I am Ada, ada@example.com", sentAt: Date()), subject: subject),
                    ], to: id.messagesStream, tenant: tenant, expectedVersion: .noStream)
                let metadata = EventMetadata(actorId: SystemActor.actorID, extra: ["visitorUid": .string(visitor.rawValue)])
                let decided: [WorkflowEvent] = [
                    .started(WorkflowStarted(workflowId: "support", workflowVersion: 1, startNodeId: "ask")),
                    .variableSet(WorkflowVariableSet(name: "answer", value: .string("I am Ada, ada@example.com"), nodeId: "ask")),
                    .toolCalled(
                        ToolCalled(
                            tool: ToolName.updateVisitorProfile.rawValue, arguments: ["name": "Ada", "email": "ada@example.com"], outcome: .succeeded,
                            actorId: SystemActor.actorID, nodeId: "ask")),
                    .assistantMessageSent(AssistantMessageSent(text: "Thank you, Ada", nodeId: "ask", inReplyTo: ["m1"], provider: "workflow")),
                ]
                try await store.append(
                    try decided.map { try NewEvent(type: $0.eventType, encoding: $0, metadata: metadata, subject: subject) }, to: id.workflowStream,
                    tenant: tenant, expectedVersion: .noStream)
                #expect(try await settled(store))
                func checkTables() async throws {
                    // The verifier folds every event fully opened: the tables equal that fold.
                    try await RunnerTests.verifyClean(store)
                    let profile = try await store.client.query(
                        "SELECT name, email FROM visitors WHERE tenant_id = \(tenant.rawValue) AND visitor_uid = \(visitor.rawValue)")
                    var rows = 0
                    for try await (name, email) in profile.decode((String?, String?).self) {
                        rows += 1
                        #expect(name == "Ada" && email == "ada@example.com")
                    }
                    #expect(rows == 1)
                    let variables = try await store.client.query(
                        "SELECT variables::text FROM workflow_state WHERE tenant_id = \(tenant.rawValue) AND conversation_id = \(id.rawValue)")
                    var stored: [String] = []
                    for try await text in variables.decode(String.self) { stored.append(text) }
                    #expect(stored.count == 1 && stored[0].contains("I am Ada, ada@example.com") && !stored[0].contains("pd1:"))
                }
                // The runners (each opening what its own fold reads), then a rebuild of all three.
                let runners = RunnerTests.runners(store)
                let caughtUp = try await RunnerTests.running(runners) { try await RunnerTests.caughtUp(runners, store) }
                #expect(caughtUp)
                try await checkTables()
                let summaries = try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild(ProjectionRegistry.standard, reason: "test")
                #expect(summaries.count == 3)
                try await checkTables()
            }
        }
    }

    /// A projection that says nothing of what personal data it reads.
    struct NoDeclaration: Projection {
        var name: String { "no_declaration" }
        var version: Int { 1 }
        func keys(of event: ProjectedEvent) throws -> [ConversationKey] { [] }
        func apply(_ event: ProjectedEvent, to row: ConversationRow?, key: ConversationKey) throws -> ConversationRow { throw FoldError(position: event.globalPosition, eventType: event.type, reason: "unused") }
    }

    @Test func verifyFindsARowChangedBehindConvosBackAndADeletedRow() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.run(turns: 9, conversations: 3)
                // Readers withhold events behind any open transaction of the cluster (other tests' too).
                #expect(try await settled(store))
                _ = try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild(ProjectionRegistry.standard, reason: "test")
                let verifier = ProjectionVerifier(store: store, logger: TestDatabase.logger)
                #expect(try await verifier.verify(WorkflowStateProjection()).isClean)

                try await store.client.query("UPDATE workflow_state SET current_node = 'elsewhere', status = 'completed' WHERE conversation_id = 'c1'")
                try await store.client.query("DELETE FROM conversations WHERE conversation_id = 'c2'")
                try await store.client.query("UPDATE visitors SET email = 'forged@example.com' WHERE visitor_uid = 'v-c0'")

                let state = try await verifier.verify(WorkflowStateProjection())
                let changed = try #require(state.differences.first)
                #expect(state.differences.count == 1 && changed.kind == .changed && changed.key.hasSuffix("/c1"))
                #expect(changed.fields.map(\.column) == ["current_node", "status"])
                #expect(changed.fields.first?.stored == "elsewhere" && changed.fields.first?.expected == "wait")

                let conversations = try await verifier.verify(ConversationsProjection())
                #expect(conversations.differences.map(\.kind) == [.missing])
                #expect(conversations.differences.first?.key.hasSuffix("/c2") == true)

                let visitors = try await verifier.verify(VisitorsProjection())
                #expect(visitors.differences.first?.fields.map(\.column) == ["email"])

                // Scoped to another conversation, the damage is out of sight; scoped to it, found.
                #expect(try await verifier.verify(WorkflowStateProjection(), conversation: (traffic.tenant, ConversationID(rawValue: "c0")!)).isClean)
                #expect(try await !verifier.verify(WorkflowStateProjection(), conversation: (traffic.tenant, ConversationID(rawValue: "c1")!)).isClean)
                #expect(try await !verifier.verify(VisitorsProjection(), conversation: (traffic.tenant, ConversationID(rawValue: "c0")!)).isClean)

                // A rebuild repairs them.
                _ = try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild(ProjectionRegistry.standard, reason: "repair")
                for projection in ProjectionRegistry.standard { #expect(try await verifier.verify(projection).isClean) }
            }
        }
    }

    @Test func verifyOfOneConversationReadsOnlyItsOwnStreams() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.run(turns: 3, conversations: 3)
                #expect(try await settled(store))
                _ = try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild(ProjectionRegistry.standard, reason: "test")
                // Another conversation's workflow events no longer fold: only a verify that reads them fails.
                try await store.client.withConnection { connection in
                    try await connection.query("BEGIN", logger: TestDatabase.logger)
                    try await connection.query("SET LOCAL session_replication_role = replica", logger: TestDatabase.logger)
                    try await connection.query("UPDATE events SET data = '{}' WHERE stream_name = 'workflow-c2'", logger: TestDatabase.logger)
                    try await connection.query("COMMIT", logger: TestDatabase.logger)
                }
                let verifier = ProjectionVerifier(store: store, logger: TestDatabase.logger)
                let c0 = (traffic.tenant, ConversationID(rawValue: "c0")!)
                #expect(try await verifier.verify(WorkflowStateProjection(), conversation: c0).isClean)
                #expect(try await verifier.verify(ConversationsProjection(), conversation: c0).isClean)
                await #expect(throws: ProjectionError.self) { try await verifier.verify(WorkflowStateProjection()) }
                await #expect(throws: ProjectionError.self) { try await verifier.verify(WorkflowStateProjection(), conversation: (traffic.tenant, ConversationID(rawValue: "c2")!)) }
            }
        }
    }

    @Test func timeTravelGivesTheStateAtEachVersionAndMoment() async throws {
        try await TestDatabase.withStore { store in
            let traffic = Traffic(store: store)
            try await traffic.turn("tt")
            try await traffic.turn("tt")
            let id = ConversationID(rawValue: "tt")!
            let events = try await store.readStreamToEnd(id.workflowStream, tenant: traffic.tenant)
            #expect(events.count == 13)
            for version in [0, 1, 3, 7, 13] {
                let state = try await WorkflowState.history(of: id, tenant: traffic.tenant, atVersion: Int64(version), store: store)
                #expect(state == (try WorkflowState.fold(events.prefix(version))), "version \(version)")
            }
            #expect(try await WorkflowState.history(of: id, tenant: traffic.tenant, atVersion: 3, store: store).currentNode == "say")
            #expect(try await WorkflowState.history(of: id, tenant: traffic.tenant, atVersion: 7, store: store).variables["last"] == "message 1")
            #expect(try await WorkflowState.history(of: id, tenant: traffic.tenant, store: store).variables["last"] == "message 2")
            // By time: the first turn's events were recorded before the second's.
            let firstTurn = events[6].recordedAt
            let then = try await WorkflowState.history(of: id, tenant: traffic.tenant, at: firstTurn, store: store)
            #expect(then.version == 7 && then.messagesConsumed == 2)
            #expect(try await WorkflowState.history(of: id, tenant: traffic.tenant, at: events[0].recordedAt.addingTimeInterval(-60), store: store).version == 0)
        }
    }

    @Test func readingTheStateFoldsTheTailTheRunnerHasNotStoredYet() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.turn("ryw")
                _ = try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild([WorkflowStateProjection()], reason: "test")
                // No runner: the stored row stays at the first turn while the stream moves on.
                try await traffic.turn("ryw")
                let id = ConversationID(rawValue: "ryw")!
                let current = try await WorkflowStateProjection().current(id, tenant: traffic.tenant, store: store, logger: TestDatabase.logger)
                #expect(current.version == 13 && current.variables["last"] == "message 2")
                // A row someone moved past the events is not believed.
                try await store.client.query("UPDATE workflow_state SET stream_version = 99 WHERE conversation_id = 'ryw'")
                let again = try await WorkflowStateProjection().current(id, tenant: traffic.tenant, store: store, logger: TestDatabase.logger)
                #expect(again == current)
            }
        }
    }
}

/// How many events a rebuild has reported.
final class Seen: Sendable {
    let events = Atomic<Int64>(0)
}

@Suite struct InterruptedRebuildTests {
    @Test func aRebuildStoppedHalfwayLeavesTheLiveTablesAsTheyWereAndTheNextOneCleansUp() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                try await Traffic(store: store).run(turns: 60, conversations: 6)
                let projection = ConversationsProjection()
                _ = try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild([projection], reason: "first")
                try await store.client.query("UPDATE conversations SET note_count = 42 WHERE conversation_id = 'c1'")
                let before = try #require(try await ProjectionStatus.read([projection], store: store, logger: TestDatabase.logger).first)
                // Readers withhold events behind any open transaction of the cluster (other tests' too): the
                // rebuild below is to fold these events in its scan, not all at once in its swap.
                #expect(try await settled(store))

                // Stop a rebuild once it has folded some events but not all.
                let seen = Seen()
                let slow = ProjectionRebuilder(store: store, configuration: .init(batchSize: 5), logger: TestDatabase.logger)
                await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        _ = try await slow.rebuild([projection], reason: "stopped") { progress in
                            seen.events.store(progress.events, ordering: .relaxed)
                            // Cancelled as Ctrl-C or a shutdown would, from the rebuild's own task once the
                            // first batch is folded: however fast this machine folds the rest.
                            if progress.events > 0 { withUnsafeCurrentTask { $0?.cancel() } }
                        }
                    }
                    await #expect(throws: (any Error).self) { try await group.next() }
                }
                #expect(seen.events.load(ordering: .relaxed) < (try await store.countEvents()))
                let after = try #require(try await ProjectionStatus.read([projection], store: store, logger: TestDatabase.logger).first)
                #expect(after.checkpoint == before.checkpoint && after.state == "stopped")
                #expect(after.lastRebuild?.reason == "stopped" && after.lastRebuild?.outcome == "interrupted", "\(String(describing: after.lastRebuild))")
                // The live rows are the old ones, tampered row included: the half-built table never replaced them.
                let notes = try await store.client.query("SELECT note_count FROM conversations WHERE conversation_id = 'c1'")
                for try await count in notes.decode(Int64.self) { #expect(count == 42) }
                let leftovers = try await store.client.query("SELECT count(*) FROM pg_tables WHERE tablename ~ '_r[0-9]+$'")
                for try await count in leftovers.decode(Int64.self) { #expect(count == 0) }

                // A crash leaves a half-built table and a rebuild recorded as running: status says interrupted,
                // and the next rebuild drops the table.
                try await store.client.query("CREATE TABLE conversations_r999999 (x int)")
                try await store.client.query("INSERT INTO projection_rebuilds (name, version, reason) VALUES ('conversations', 1, 'crashed')")
                let crashed = try #require(try await ProjectionStatus.read([projection], store: store, logger: TestDatabase.logger).first)
                #expect(crashed.lastRebuild?.reason == "crashed" && crashed.lastRebuild?.outcome == "interrupted")
                _ = try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild([projection], reason: "again")
                let orphan = try await store.client.query("SELECT to_regclass('conversations_r999999') IS NULL")
                for try await gone in orphan.decode(Bool.self) { #expect(gone) }
                let outcomes = try await store.client.query("SELECT reason, outcome FROM projection_rebuilds ORDER BY id")
                var recorded: [String: String] = [:]
                for try await (reason, outcome) in outcomes.decode((String, String).self) { recorded[reason] = outcome }
                #expect(recorded == ["first": "swapped", "stopped": "interrupted", "crashed": "interrupted", "again": "swapped"])
                #expect(try await ProjectionVerifier(store: store, logger: TestDatabase.logger).verify(projection).isClean)
            }
        }
    }

    /// A leased rebuild's session says what it is in `pg_stat_activity` while it runs (`convo rebuild NAMES
    /// PID@HOST`), and goes back to the pool without the name.
    @Test func aLeasedRebuildsSessionIsNamedWhileItRuns() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                try await Traffic(store: store).run(turns: 20, conversations: 4)
                #expect(try await settled(store))
                let name = "convo rebuild conversations \(ProcessInfo.processInfo.processIdentifier)@\(ProcessInstance.host)"
                func named() async throws -> Int64 {
                    // This database's sessions only: other tests of this process rebuild too, under the same name.
                    let rows = try await store.client.query(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = \(name) AND datname = current_database()")
                    var count: Int64 = 0
                    for try await value in rows.decode(Int64.self) { count = value }
                    return count
                }
                let leased = ProjectionRebuilder(store: store, configuration: .init(batchSize: 5, sessionLease: .seconds(20)), logger: TestDatabase.logger)
                let halfway = AsyncStream<Void>.makeStream()
                let release = DispatchSemaphore(value: 0)
                let first = Seen()
                let rebuild = Task {
                    defer { halfway.continuation.finish() }
                    return try await leased.rebuild([ConversationsProjection()], reason: "named") { progress in
                        // Held here once (bounded) while the test looks: the progress callback is synchronous.
                        guard progress.events > 0, first.events.compareExchange(expected: 0, desired: 1, ordering: .relaxed).exchanged else { return }
                        halfway.continuation.yield()
                        _ = release.wait(timeout: .now() + 20)
                    }
                }
                var reached = false
                for await _ in halfway.stream {
                    reached = true
                    break
                }
                let whileRunning = try await named()
                release.signal()
                _ = try await rebuild.value
                #expect(reached && whileRunning == 1, "sessions named \(name) while the rebuild ran: \(whileRunning)")
                #expect(try await named() == 0)
            }
        }
    }

    @Test func aSecondRebuildOfTheSameProjectionIsRefusedWhileOneRuns() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                try await Traffic(store: store).run(turns: 3, conversations: 1)
                let projection = VisitorsProjection()
                try await store.client.withConnection { holder in
                    // Another process's rebuild, as far as the lock is concerned.
                    try await holder.query("SELECT pg_advisory_lock(\(Int32(0x434F_4E56)), hashtext('convo.projection.rebuild.visitors'))", logger: TestDatabase.logger)
                    let error = await #expect(throws: ProjectionError.self) {
                        try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild([WorkflowStateProjection(), projection], reason: "second")
                    }
                    #expect(error?.code == .busy)
                    let status = try #require(try await ProjectionStatus.read([projection], store: store, logger: TestDatabase.logger).first)
                    #expect(status.state == "rebuilding")
                    try await holder.query("SELECT pg_advisory_unlock_all()", logger: TestDatabase.logger)
                }
                // The lock the refused rebuild took first (workflow_state) was given back.
                let summaries = try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild([WorkflowStateProjection(), projection], reason: "after")
                #expect(summaries.count == 2)
            }
        }
    }
}
