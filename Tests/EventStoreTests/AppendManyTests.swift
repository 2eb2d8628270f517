import ConvoTestSupport
@testable import EventStore
import Foundation
import SharedTypes
import Testing

@Suite struct AppendManyTests {
    /// How many events the streams hold, each stream's versions expected to run from 1 without a gap.
    static func wholeStreamsCount(_ streams: [StreamName], store: PostgresEventStore, tenant: TenantID) async throws -> Int {
        var total = 0
        for stream in streams {
            let events = try await store.readStreamToEnd(stream, tenant: tenant)
            #expect(events.map(\.streamVersion) == (0..<Int64(events.count)).map { $0 + 1 }, "\(stream)")
            total += events.count
        }
        return total
    }

    @Test func eachAppendOfACallKeepsItsOwnExpectationIdempotencyAndError() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let (a, b, c, d) = (TestDatabase.uniqueStream(), TestDatabase.uniqueStream(), TestDatabase.uniqueStream(), TestDatabase.uniqueStream())
            let existing = try await store.append([note("b1"), note("b2")], to: b, tenant: tenant, expectedVersion: .noStream)
            let elsewhere = UUID()
            try await store.append([note("d1", id: elsewhere)], to: d, tenant: tenant, expectedVersion: .noStream)
            let retriedID = existing.events[1].eventId

            let results = try await store.appendMany([
                AppendRequest([note("a1"), note("a2")], to: a, tenant: tenant, expectedVersion: .noStream),
                AppendRequest([note("b3")], to: b, tenant: tenant, expectedVersion: .exact(1)),  // stale: b is at 2
                AppendRequest([note("a3")], to: a, tenant: tenant, expectedVersion: .exact(2)),  // sees the first request's events
                AppendRequest([note("c1", id: elsewhere)], to: c, tenant: tenant, expectedVersion: .any),  // the id is d's
                AppendRequest([note("b2", id: retriedID)], to: b, tenant: tenant, expectedVersion: .any),  // a retry of b's second event
                AppendRequest([note("b3")], to: b, tenant: tenant, expectedVersion: .streamExists),
            ])
            #expect(results.count == 6)
            let first = try results[0].get()
            #expect(first.events.map(\.streamVersion) == [1, 2] && !first.isDuplicate)
            #expect(throws: EventStoreError.self) { try results[1].get() }
            if case .failure(let error) = results[1] { #expect(error.code == .wrongExpectedVersion && error.actual == 2) }
            #expect(try results[2].get().events.map(\.streamVersion) == [3])
            if case .failure(let error) = results[3] { #expect(error.code == .duplicateEventID) } else { Issue.record("expected duplicateEventID") }
            // A retry of the stored second event of b's append, at its place: answered with its stored row.
            let retried = try results[4].get()
            #expect(retried.isDuplicate && retried.events.map(\.eventId) == [retriedID] && retried.events[0].globalPosition == existing.events[1].globalPosition)
            #expect(try results[5].get().events.map(\.streamVersion) == [3])

            // One transaction: the positions of what it wrote are consecutive after its transaction id.
            let written = try [results[0].get(), results[2].get(), results[5].get()].flatMap(\.events).map(\.globalPosition)
            #expect(written == Array(written[0]..<(written[0] + 4)))
            #expect(try await store.readStreamToEnd(a, tenant: tenant).map(\.streamVersion) == [1, 2, 3])
            #expect(try await store.readStreamToEnd(c, tenant: tenant).isEmpty)

            // The same append twice in one call (a retry racing its original): stored once, the second a duplicate.
            let twice = [note("e1"), note("e2")]
            let e = TestDatabase.uniqueStream()
            let pair = try await store.appendMany([
                AppendRequest(twice, to: e, tenant: tenant, expectedVersion: .any), AppendRequest(twice, to: e, tenant: tenant, expectedVersion: .any),
            ])
            let (original, retry) = (try pair[0].get(), try pair[1].get())
            #expect(!original.isDuplicate && retry.isDuplicate && original.events == retry.events)
            #expect(try await store.readStreamToEnd(e, tenant: tenant).count == 2)

            // What fails the whole call is thrown: here an append without events.
            await #expect(throws: EventStoreError.self) {
                try await store.appendMany([AppendRequest([], to: a, tenant: tenant, expectedVersion: .any)])
            }
        }
    }

    @Test func concurrentCallsAndSingleAppendsToSharedStreamsLoseNothing() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let streams = (0..<4).map { _ in TestDatabase.uniqueStream() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for caller in 0..<16 {
                    group.addTask {
                        for round in 0..<10 {
                            if caller % 4 == 0 {
                                let stream = streams[round % streams.count]
                                try await store.append([note("single \(caller)/\(round)")], to: stream, tenant: tenant, expectedVersion: .any)
                            } else {
                                let requests = streams.map { AppendRequest([note("many \(caller)/\(round)")], to: $0, tenant: tenant, expectedVersion: .any) }
                                for result in try await store.appendMany(requests) { _ = try result.get() }
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let total = try await Self.wholeStreamsCount(streams, store: store, tenant: tenant)
            // 12 callers × 10 rounds × 4 streams, and 4 callers × 10 single appends.
            #expect(total == 12 * 10 * 4 + 4 * 10)
        }
    }

    /// One event per append, each to its own stream: the one-statement path. Its answers must be those of
    /// convo_append_many, and a retry in the batch hands the whole call to convo_append_many.
    @Test func singleEventAppendsToDistinctStreamsKeepEveryExpectationInOneStatement() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let streams = (0..<7).map { _ in TestDatabase.uniqueStream() }
            let before = try await store.append([note("s1-1"), note("s1-2")], to: streams[1], tenant: tenant, expectedVersion: .noStream)
            try await store.append([note("s2-1")], to: streams[2], tenant: tenant, expectedVersion: .noStream)
            try await store.append([note("s5-1")], to: streams[5], tenant: tenant, expectedVersion: .noStream)

            let results = try await store.appendMany([
                AppendRequest([note("new")], to: streams[0], tenant: tenant, expectedVersion: .noStream),
                AppendRequest([note("exists")], to: streams[1], tenant: tenant, expectedVersion: .streamExists),
                AppendRequest([note("stale")], to: streams[2], tenant: tenant, expectedVersion: .exact(0)),  // at 1
                AppendRequest([note("missing")], to: streams[3], tenant: tenant, expectedVersion: .streamExists),
                AppendRequest([note("any")], to: streams[4], tenant: tenant, expectedVersion: .any),
                AppendRequest([note("taken")], to: streams[5], tenant: tenant, expectedVersion: .noStream),  // at 1
                AppendRequest([note("exact")], to: streams[6], tenant: tenant, expectedVersion: .exact(0)),
            ])
            #expect(try results[0].get().streamVersion == 1)
            #expect(try results[1].get().streamVersion == 3)
            #expect(try results[4].get().streamVersion == 1)
            #expect(try results[6].get().streamVersion == 1)
            for (index, actual) in [(2, 1), (3, 0), (5, 1)] {
                guard case .failure(let error) = results[index] else {
                    Issue.record("append \(index) should have failed")
                    continue
                }
                #expect(error.code == .wrongExpectedVersion && error.actual == Int64(actual), "append \(index)")
            }
            // One transaction: consecutive positions, in the order of the requests, after every earlier append.
            let positions = try [0, 1, 4, 6].map { try results[$0].get().lastPosition }
            #expect(positions == Array(positions[0]..<(positions[0] + 4)))
            #expect(positions[0] > before.lastPosition)
            #expect(try await store.readStreamToEnd(streams[3], tenant: tenant).isEmpty)
            #expect(try await store.readStreamToEnd(streams[2], tenant: tenant).count == 1)
            #expect(try await store.verifyChains(tenant: tenant).issues == [])

            // A retried event among new ones: the call goes to convo_append_many, which answers the retry with
            // the stored row and stores the rest once.
            let stored = try results[0].get().events[0]
            let again = try await store.appendMany([
                AppendRequest([note("new", id: stored.eventId)], to: streams[0], tenant: tenant, expectedVersion: .streamExists),
                AppendRequest([note("later")], to: streams[4], tenant: tenant, expectedVersion: .exact(1)),
            ])
            let retry = try again[0].get()
            #expect(retry.isDuplicate && retry.events == [stored])
            #expect(try again[1].get().streamVersion == 2)
            #expect(try await store.readStreamToEnd(streams[0], tenant: tenant).count == 1)
            #expect(try await store.verifyChains(tenant: tenant).issues == [])

            // Retries whose expectation their original met (no stream, a version), beside a new append and a
            // real conflict, in the one statement: the retries are answered with the stored rows, not as
            // conflicts; the new one is written, the conflict stays one.
            let exact = try results[6].get().events[0]
            let third = try await store.appendMany([
                AppendRequest([note("new", id: stored.eventId)], to: streams[0], tenant: tenant, expectedVersion: .noStream),
                AppendRequest([note("exact", id: exact.eventId)], to: streams[6], tenant: tenant, expectedVersion: .exact(0)),
                AppendRequest([note("latest")], to: streams[4], tenant: tenant, expectedVersion: .exact(2)),
                AppendRequest([note("stale again")], to: streams[2], tenant: tenant, expectedVersion: .exact(0)),
            ])
            #expect(try third[0].get().isDuplicate && third[0].get().events == [stored])
            #expect(try third[1].get().isDuplicate && third[1].get().events == [exact])
            #expect(try third[2].get().streamVersion == 3 && !third[2].get().isDuplicate)
            guard case .failure(let conflict) = third[3] else { Issue.record("a stale append was written"); return }
            #expect(conflict.code == .wrongExpectedVersion && conflict.actual == 1)
            #expect(try await store.readStreamToEnd(streams[6], tenant: tenant).count == 1)
            #expect(try await store.verifyChains(tenant: tenant).issues == [])
        }
    }

    /// Appends of several events each (a new conversation's pair beside single messages), each stream once:
    /// the one statement writes them, each event's hash over the one before it in its stream, and answers
    /// every expectation and retry as convo_append_many does.
    @Test func appendsOfSeveralEventsToDistinctStreamsAreWrittenByOneStatement() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let streams = (0..<6).map { _ in TestDatabase.uniqueStream() }
            try await store.append([note("s1-1"), note("s1-2")], to: streams[1], tenant: tenant, expectedVersion: .noStream)
            try await store.append([note("s2-1")], to: streams[2], tenant: tenant, expectedVersion: .noStream)
            let byStatement = store.batchStatementEvents.load(ordering: .relaxed)

            let results = try await store.appendMany([
                AppendRequest([note("s0-1"), note("s0-2")], to: streams[0], tenant: tenant, expectedVersion: .noStream),
                AppendRequest([note("s1-3"), note("s1-4"), note("s1-5")], to: streams[1], tenant: tenant, expectedVersion: .exact(2)),
                AppendRequest([note("stale-1"), note("stale-2")], to: streams[2], tenant: tenant, expectedVersion: .exact(0)),  // at 1
                AppendRequest([note("s3-1")], to: streams[3], tenant: tenant, expectedVersion: .any),
                AppendRequest([note("s4-1"), note("s4-2")], to: streams[4], tenant: tenant, expectedVersion: .noStream),
            ])
            #expect(try results[0].get().events.map(\.streamVersion) == [1, 2])
            #expect(try results[1].get().events.map(\.streamVersion) == [3, 4, 5])
            guard case .failure(let conflict) = results[2] else { Issue.record("a stale append was written"); return }
            #expect(conflict.code == .wrongExpectedVersion && conflict.actual == 1)
            #expect(try results[3].get().events.map(\.streamVersion) == [1])
            #expect(try results[4].get().events.map(\.streamVersion) == [1, 2])
            // One statement wrote all eight, at consecutive positions in the order of the requests.
            #expect(store.batchStatementEvents.load(ordering: .relaxed) - byStatement == 8)
            let positions = try [0, 1, 3, 4].flatMap { try results[$0].get().events.map(\.globalPosition) }
            #expect(positions == Array(positions[0]..<(positions[0] + 8)))
            let s1 = try await store.readStreamToEnd(streams[1], tenant: tenant)
            #expect(try s1.map { try $0.decode(Note.self).text } == (1...5).map { "s1-\($0)" })
            #expect(s1.map(\.streamVersion) == [1, 2, 3, 4, 5])
            #expect(try await store.readStreamToEnd(streams[2], tenant: tenant).count == 1)
            #expect(try await store.verifyChains(tenant: tenant).issues == [])

            // A retry of the stored pair beside a new pair: the retry is answered with the stored events
            // (through convo_append_many), the new pair written by the statement, once.
            let stored = try results[0].get().events
            let again = try await store.appendMany([
                AppendRequest(
                    [note("s0-1", id: stored[0].eventId), note("s0-2", id: stored[1].eventId)], to: streams[0], tenant: tenant,
                    expectedVersion: .noStream),
                AppendRequest([note("s5-1"), note("s5-2")], to: streams[5], tenant: tenant, expectedVersion: .noStream),
            ])
            let retry = try again[0].get()
            #expect(retry.isDuplicate && retry.events == stored)
            #expect(try again[1].get().events.map(\.streamVersion) == [1, 2] && !again[1].get().isDuplicate)
            #expect(store.batchStatementEvents.load(ordering: .relaxed) - byStatement == 10)
            #expect(try await store.readStreamToEnd(streams[0], tenant: tenant).count == 2)
            #expect(try await store.verifyChains(tenant: tenant).issues == [])
        }
    }

    /// Batches of pairs and single events racing for the same streams: the statement writes what it can,
    /// convo_append_many the rest; nothing is lost, no chain forks.
    @Test func racingBatchesOfSeveralEventsLoseNothing() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let streams = (0..<8).map { _ in TestDatabase.uniqueStream() }
            let byStatement = store.batchStatementEvents.load(ordering: .relaxed)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for caller in 0..<12 {
                    group.addTask {
                        for round in 0..<8 {
                            let requests = streams.shuffled().prefix(5).enumerated().map { place, stream in
                                AppendRequest(
                                    (0...(place % 2)).map { note("c\(caller) r\(round) e\($0)") }, to: stream, tenant: tenant, expectedVersion: .any)
                            }
                            for result in try await store.appendMany(Array(requests)) { _ = try result.get() }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let total = try await Self.wholeStreamsCount(streams, store: store, tenant: tenant)
            // Each batch: five appends, the second and fourth of two events.
            #expect(total == 12 * 8 * 7)
            #expect(store.batchStatementEvents.load(ordering: .relaxed) > byStatement)
            #expect(try await store.verifyChains(tenant: tenant).issues == [])
        }
    }

    /// Batches racing for the same streams: the one-statement path loses a version to a racer, writes
    /// nothing, and convo_append_many stores the batch; nothing is lost, no chain forks.
    @Test func racingBatchesOfSingleEventsLoseNothing() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let streams = (0..<8).map { _ in TestDatabase.uniqueStream() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for caller in 0..<12 {
                    group.addTask {
                        for round in 0..<8 {
                            // Each batch takes every stream once, in an order of its own.
                            let order = streams.indices.map { (caller + round + $0 * 3) % streams.count }
                            let requests = Set(order).sorted().map { streams[$0] }.shuffled().map {
                                AppendRequest([note("c\(caller) r\(round)")], to: $0, tenant: tenant, expectedVersion: .any)
                            }
                            for result in try await store.appendMany(requests) { _ = try result.get() }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let total = try await Self.wholeStreamsCount(streams, store: store, tenant: tenant)
            #expect(total == 12 * 8 * streams.count)
            #expect(try await store.verifyChains(tenant: tenant).issues == [])
        }
    }
}
