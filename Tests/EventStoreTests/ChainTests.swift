import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
import SharedTypes
import Testing

/// The hash chain: what the appends write verifies, and each way of tampering behind the store's back
/// (the immutability triggers switched off for the session, as a superuser can) is found, with its place.
@Suite struct ChainTests {
    /// Three streams of one new tenant: two by single appends (one event and batches), one by group commit.
    private func seed(_ store: PostgresEventStore) async throws -> (TenantID, [StreamName]) {
        let tenant = TestDatabase.uniqueTenant()
        let a = TestDatabase.uniqueStream("messages")
        let b = TestDatabase.uniqueStream("workflow")
        let c = TestDatabase.uniqueStream("audit")
        try await store.append([note("a1")], to: a, tenant: tenant, expectedVersion: .noStream)
        try await store.append([note("a2"), note("a3"), note("a4")], to: a, tenant: tenant, expectedVersion: .exact(1))
        try await store.append([note("a5 — ünïcødé, \"quotes\" and \\ slashes")], to: a, tenant: tenant, expectedVersion: .any)
        try await store.append([note("b1"), note("b2")], to: b, tenant: tenant, expectedVersion: .noStream)
        let results = try await store.appendMany([
            AppendRequest([note("c1")], to: c, tenant: tenant, expectedVersion: .noStream),
            AppendRequest([note("b3")], to: b, tenant: tenant, expectedVersion: .exact(2)),
            AppendRequest([note("c2"), note("c3")], to: c, tenant: tenant, expectedVersion: .exact(1)),
        ])
        for result in results { _ = try result.get() }
        return (tenant, [a, b, c])
    }

    /// Runs `sql` in one transaction with the triggers off for this session only.
    private func tamper(_ client: PostgresClient, _ statements: [PostgresQuery]) async throws {
        try await client.withConnection { connection in
            try await connection.query("BEGIN", logger: TestDatabase.logger)
            try await connection.query("SET LOCAL session_replication_role = replica", logger: TestDatabase.logger)
            for statement in statements { try await connection.query(statement, logger: TestDatabase.logger) }
            try await connection.query("COMMIT", logger: TestDatabase.logger)
        }
    }

    private func position(_ store: PostgresEventStore, _ stream: StreamName, _ tenant: TenantID, version: Int64) async throws -> Int64 {
        try #require(try await store.readStream(stream, tenant: tenant, fromVersion: version, maxCount: 1).first).globalPosition
    }

    @Test func whatTheAppendsWriteVerifiesAndSwiftAgreesWithTheDatabase() async throws {
        try await TestDatabase.withStore { store in
            let (tenant, streams) = try await seed(store)
            let report = try await store.verifyChains(tenant: tenant)
            #expect(report.issues == [])
            #expect(report.events == 11)
            #expect(report.streams == 3)
            let one = try await store.verifyChains(tenant: tenant, stream: streams[1])
            #expect(one.events == 3 && one.streams == 1 && one.isIntact)
            // Each stream's first hash is the genesis of that tenant and stream, chained as documented.
            let rows = try await store.client.query(
                """
                SELECT encode(hash, 'hex'), encode(convo_chain_genesis(tenant_id, stream_name), 'hex') FROM events
                WHERE tenant_id = \(tenant.rawValue) AND stream_name = \(streams[0].description) AND stream_version = 1
                """)
            for try await (hash, genesis) in rows.decode((String, String).self) {
                #expect(genesis == EventChain.genesis(tenant: tenant.rawValue, stream: streams[0].description).hexString)
                #expect(hash.count == 64)
            }
        }
    }

    @Test func racingAppendersNeverForkAChain() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let stream = TestDatabase.uniqueStream()
            try await store.append([note("first")], to: stream, tenant: tenant, expectedVersion: .noStream)
            // 30 appenders that compute the version (they queue), 30 with an exact one (one winner per
            // version), and 30 group-committed appends, all at once on one stream.
            let outcomes = await withTaskGroup(of: Bool.self) { group in
                for i in 0..<30 {
                    group.addTask { (try? await store.append([note("any \(i)"), note("any \(i)b")], to: stream, tenant: tenant, expectedVersion: .any)) != nil }
                    group.addTask { (try? await store.append([note("exact \(i)")], to: stream, tenant: tenant, expectedVersion: .exact(1))) != nil }
                    group.addTask {
                        let results = try? await store.appendMany([AppendRequest([note("many \(i)")], to: stream, tenant: tenant, expectedVersion: .any)])
                        return (try? results?.first?.get()) != nil
                    }
                }
                var succeeded = 0
                for await ok in group where ok { succeeded += 1 }
                return succeeded
            }
            #expect(outcomes >= 60)
            let report = try await store.verifyChains(tenant: tenant, stream: stream)
            #expect(report.issues == [])
            #expect(report.events == Int(try await store.streamVersion(stream, tenant: tenant)))
        }
    }

    @Test func anEditedRowIsFoundAtItsPosition() async throws {
        try await TestDatabase.withStore { store in
            let (tenant, streams) = try await seed(store)
            let edited = try await position(store, streams[0], tenant, version: 3)
            try await tamper(store.client, [
                "UPDATE events SET data = jsonb_build_object('text', 'something else') WHERE global_position = \(edited)"
            ])
            let report = try await store.verifyChains(tenant: tenant)
            #expect(report.issues.count == 1)
            let issue = try #require(report.issues.first)
            #expect(issue.kind == .hashMismatch)
            #expect(issue.globalPosition == edited)
            #expect(issue.stream == streams[0].description && issue.streamVersion == 3)

            // Metadata, type and time are covered too.
            let other = try await position(store, streams[1], tenant, version: 1)
            let third = try await position(store, streams[2], tenant, version: 2)
            let fourth = try await position(store, streams[0], tenant, version: 5)
            try await tamper(store.client, [
                "UPDATE events SET metadata = metadata || '{\"actorId\": \"someone-else\"}' WHERE global_position = \(other)",
                "UPDATE events SET event_type = 'Forged' WHERE global_position = \(third)",
                "UPDATE events SET recorded_at = recorded_at - interval '1 hour' WHERE global_position = \(fourth)",
            ])
            let again = try await store.verifyChains(tenant: tenant)
            #expect(Set(again.issues.map(\.globalPosition)) == [edited, other, third, fourth])
            #expect(again.issues.allSatisfy { $0.kind == .hashMismatch })
        }
    }

    @Test func aDeletedRowIsFoundAsAGap() async throws {
        try await TestDatabase.withStore { store in
            let (tenant, streams) = try await seed(store)
            let deleted = try await position(store, streams[0], tenant, version: 2)
            let next = try await position(store, streams[0], tenant, version: 3)
            try await tamper(store.client, ["DELETE FROM events WHERE global_position = \(deleted)"])
            let report = try await store.verifyChains(tenant: tenant)
            #expect(report.issues.map(\.kind) == [.versionGap])
            #expect(report.issues.first?.globalPosition == next)
            #expect(report.issues.first?.message.contains("version 2") == true)

            // The first event of a stream, too.
            let first = try await position(store, streams[1], tenant, version: 1)
            try await tamper(store.client, ["DELETE FROM events WHERE global_position = \(first)"])
            let again = try await store.verifyChains(tenant: tenant)
            #expect(again.issues.filter { $0.stream == streams[1].description }.map(\.kind) == [.versionGap])
        }
    }

    @Test func anInsertedRowIsFound() async throws {
        try await TestDatabase.withStore { store in
            let (tenant, streams) = try await seed(store)
            // At the tail, with a hash that is not the chain's (here: a well-formed hash of the wrong content).
            try await store.client.query(
                """
                INSERT INTO events (event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, hash)
                VALUES (gen_random_uuid(), \(tenant.rawValue), \(streams[1].description), 4, 'NoteTaken', '{"text": "forged"}', '{}',
                        sha256('forged'::bytea))
                """)
            let tail = try await position(store, streams[1], tenant, version: 4)
            var report = try await store.verifyChains(tenant: tenant)
            #expect(report.issues.contains { $0.kind == .hashMismatch })
            #expect(!report.issues.isEmpty && report.issues.allSatisfy { $0.globalPosition == tail })

            // In the middle: later versions shifted up by one to make room.
            let shifted = try await store.readStream(streams[0], tenant: tenant, fromVersion: 3).map(\.globalPosition)
            try await tamper(store.client, [
                "UPDATE events SET stream_version = stream_version + 100 WHERE tenant_id = \(tenant.rawValue) AND stream_name = \(streams[0].description) AND stream_version >= 3",
                "UPDATE events SET stream_version = stream_version - 99 WHERE tenant_id = \(tenant.rawValue) AND stream_name = \(streams[0].description) AND stream_version >= 100",
                """
                INSERT INTO events (event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, hash)
                VALUES (gen_random_uuid(), \(tenant.rawValue), \(streams[0].description), 3, 'NoteTaken', '{"text": "inserted"}', '{}', sha256('x'::bytea))
                """,
            ])
            report = try await store.verifyChains(tenant: tenant, stream: streams[0])
            let inserted = try await position(store, streams[0], tenant, version: 3)
            // The inserted row and every renumbered one after it.
            #expect(Set(report.issues.compactMap(\.globalPosition)) == Set([inserted] + shifted))
        }
    }

    @Test func reorderedRowsAreFound() async throws {
        try await TestDatabase.withStore { store in
            let (tenant, streams) = try await seed(store)
            let events = try await store.readStream(streams[0], tenant: tenant)
            let (second, third) = (events[1], events[2])
            // Swap the contents of versions 2 and 3 (ids, payloads), leaving versions and positions in place.
            try await tamper(store.client, [
                "UPDATE events SET stream_version = stream_version + 1000 WHERE global_position IN (\(second.globalPosition), \(third.globalPosition))",
                "UPDATE events SET stream_version = 3 WHERE global_position = \(second.globalPosition)",
                "UPDATE events SET stream_version = 2 WHERE global_position = \(third.globalPosition)",
            ])
            let report = try await store.verifyChains(tenant: tenant, stream: streams[0])
            #expect(!report.isIntact)
            #expect(report.issues.contains { $0.kind == .positionOrder })
            #expect(Set(report.issues.compactMap(\.globalPosition)).isSuperset(of: [second.globalPosition, third.globalPosition]))
        }
    }

    @Test func anAnchorFindsADeletedTailADeletedStreamAndARewrittenHistory() async throws {
        try await TestDatabase.withStore { store in
            let (tenant, streams) = try await seed(store)
            let anchor = ChainAnchor(createdAt: Date(), tenant: tenant.rawValue, heads: try await store.streamHeads(tenant: tenant))
            #expect(anchor.heads.count == 3)
            #expect(try await store.verifyChains(tenant: tenant, anchor: anchor).isIntact)
            #expect(try await store.verifyChains(tenant: tenant, anchor: anchor).anchoredHeads == 3)

            // The chains alone cannot see a deleted tail or a deleted stream.
            let tail = try await position(store, streams[0], tenant, version: 5)
            try await tamper(store.client, [
                "DELETE FROM events WHERE global_position = \(tail)",
                "DELETE FROM events WHERE tenant_id = \(tenant.rawValue) AND stream_name = \(streams[2].description)",
            ])
            #expect(try await store.verifyChains(tenant: tenant).isIntact)
            let report = try await store.verifyChains(tenant: tenant, anchor: anchor)
            #expect(report.issues.map(\.kind) == [.anchorMissing, .anchorMissing])
            #expect(Set(report.issues.map(\.stream)) == [streams[0].description, streams[2].description])

            // Nor a history rewritten with freshly computed hashes; the anchored head's hash can.
            let head = try await position(store, streams[1], tenant, version: 3)
            try await tamper(store.client, [
                "UPDATE events SET data = '{\"text\": \"rewritten\"}' WHERE global_position = \(head)",
                """
                UPDATE events e SET hash = convo_event_hash(p.hash, e.global_position, e.stream_version, e.event_id, e.recorded_at, e.event_type, e.data, e.metadata)
                FROM events p WHERE e.global_position = \(head) AND p.tenant_id = e.tenant_id AND p.stream_name = e.stream_name
                  AND p.stream_version = e.stream_version - 1
                """,
            ])
            #expect(try await store.verifyChains(tenant: tenant, stream: streams[1]).isIntact)
            let rewritten = try await store.verifyChains(tenant: tenant, stream: streams[1], anchor: anchor)
            #expect(rewritten.issues.map(\.kind) == [.anchorChanged])
            #expect(rewritten.issues.first?.globalPosition == head)
        }
    }

    @Test func aReportKeepsTheFirstFindingsAndCountsThemAll() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let stream = TestDatabase.uniqueStream()
            let count = ChainReport.maxIssues + 1
            // Rows written around the store, none with its chain's hash.
            try await store.client.query(
                """
                INSERT INTO events (event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, hash)
                SELECT gen_random_uuid(), \(tenant.rawValue), \(stream.description), v, 'NoteTaken', '{}', '{}', sha256(int8send(v))
                FROM generate_series(1, \(count)) AS v
                """)
            let report = try await store.verifyChains(tenant: tenant)
            #expect(report.events == count)
            #expect(report.issueCount == count)
            #expect(report.issues.count == ChainReport.maxIssues)
            #expect(!report.isIntact)
        }
    }

    @Test func theMigrationChainsTheEventsStoredBeforeIt() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withClient(url: url) { client in
                let before = Migration.all.filter { $0.version < 10 }
                try await Migrator(client: client, migrations: before, logger: TestDatabase.logger).migrate()
                let tenant = TestDatabase.uniqueTenant()
                let stream = TestDatabase.uniqueStream()
                let other = TestDatabase.uniqueStream()
                // Events appended as the old schema did (its convo_append, of 0004).
                for (target, expected, texts) in [(stream, 0, ["one", "two"]), (stream, 2, ["three"]), (other, 0, ["other"])] {
                    let ids = texts.map { _ in UUID() }
                    let data = texts.map { #"{"text": "\#($0)"}"# }
                    try await client.query(
                        """
                        SELECT * FROM convo_append(\(tenant.rawValue), \(target.description), \(Int64(expected)), \(ids),
                                                   \(texts.map { _ in "NoteTaken" }), \(data)::jsonb[], \(texts.map { _ in "{}" })::jsonb[])
                        """)
                }

                try await Migrator(client: client, logger: TestDatabase.logger).migrate()
                let store = PostgresEventStore(client: client, keyring: TestDatabase.keyring, logger: TestDatabase.logger)
                try await store.append([note("four")], to: stream, tenant: tenant, expectedVersion: .exact(3))
                let report = try await store.verifyChains()
                #expect(report.issues == [])
                #expect(report.events == 5)
                // The triggers are back on after the backfill.
                await #expect(throws: PSQLError.self) {
                    try await client.query("UPDATE events SET data = '{}' WHERE tenant_id = \(tenant.rawValue)")
                }
            }
        }
    }
}
