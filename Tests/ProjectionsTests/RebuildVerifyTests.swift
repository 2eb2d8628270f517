import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
import Projections
import SharedTypes
import Testing

@Suite struct RebuildVerifyTests {
    @Test func aRebuildWhileAppendsContinueMissesNothingAndEndsEqualToAFreshFold() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.run(turns: 40, conversations: 8)
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
                    #expect(summaries.allSatisfy { $0.events > 0 && $0.rows > 0 })
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

    @Test func verifyFindsARowChangedBehindConvosBackAndADeletedRow() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.run(turns: 9, conversations: 3)
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
