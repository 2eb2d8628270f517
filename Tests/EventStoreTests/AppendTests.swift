import ConvoTestSupport
import EventStore
import Foundation
import SharedTypes
import Testing

@Suite struct AppendTests {
    @Test func appendToNewStreamNumbersEventsFromOne() async throws {
        try await TestDatabase.withStore { store in
            let stream = TestDatabase.uniqueStream()
            let tenant = TestDatabase.uniqueTenant()
            let result = try await store.append([note("a"), note("b"), note("c")], to: stream, tenant: tenant, expectedVersion: .noStream)
            #expect(result.events.map(\.streamVersion) == [1, 2, 3])
            #expect(!result.isDuplicate)
            let positions = result.events.map(\.globalPosition)
            #expect(positions == positions.sorted() && Set(positions).count == 3)

            let read = try await store.readStream(stream, tenant: tenant, fromVersion: 1, maxCount: 10)
            #expect(read.map(\.streamVersion) == [1, 2, 3])
            #expect(try read.map { try $0.decode(Note.self).text } == ["a", "b", "c"])
            #expect(try read[0].metadata().actorId == "test")
            #expect(read.allSatisfy { $0.tenant == tenant && $0.stream == stream && $0.type == "NoteTaken" })
            #expect(try await store.streamVersion(stream, tenant: tenant) == 3)
        }
    }

    @Test func appendWithStaleExpectedVersionIsRejected() async throws {
        try await TestDatabase.withStore { store in
            let stream = TestDatabase.uniqueStream()
            let tenant = TestDatabase.uniqueTenant()
            await #expect(throws: EventStoreError.self) {
                try await store.append([note("x")], to: stream, tenant: tenant, expectedVersion: .streamExists)
            }
            try await store.append([note("a"), note("b")], to: stream, tenant: tenant, expectedVersion: .noStream)
            for expected in [ExpectedVersion.noStream, .exact(1), .exact(3)] {
                let error = try await #require(throws: EventStoreError.self) {
                    try await store.append([note("late")], to: stream, tenant: tenant, expectedVersion: expected)
                }
                #expect(error.code == .wrongExpectedVersion)
                #expect(error.actual == 2)
                #expect(error.expected == expected)
                #expect(error.stream == stream)
            }
            let ok = try await store.append([note("c")], to: stream, tenant: tenant, expectedVersion: .exact(2))
            #expect(ok.streamVersion == 3)
            let exists = try await store.append([note("d")], to: stream, tenant: tenant, expectedVersion: .streamExists)
            #expect(exists.streamVersion == 4)
            #expect(try await store.readStream(stream, tenant: tenant, fromVersion: 1, maxCount: 100).count == 4)
        }
    }

    @Test func fiftyConcurrentAppendsAtOneExpectedVersionLetExactlyOneWin() async throws {
        try await TestDatabase.withStore { store in
            let stream = TestDatabase.uniqueStream()
            let tenant = TestDatabase.uniqueTenant()
            try await store.append([note("first")], to: stream, tenant: tenant, expectedVersion: .noStream)
            let outcomes = await withTaskGroup(of: Result<AppendResult, any Error>.self) { group in
                for index in 0..<50 {
                    group.addTask {
                        do {
                            return .success(try await store.append([note("racer \(index)")], to: stream, tenant: tenant, expectedVersion: .exact(1)))
                        } catch {
                            return .failure(error)
                        }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let winners = outcomes.compactMap { try? $0.get() }
            #expect(winners.count == 1)
            #expect(winners.first?.streamVersion == 2)
            let losers = outcomes.compactMap { outcome -> EventStoreError? in
                if case .failure(let error) = outcome { return error as? EventStoreError }
                return nil
            }
            #expect(losers.count == 49)
            #expect(losers.allSatisfy { $0.code == .wrongExpectedVersion && $0.actual == 2 })
            let versions = try await store.readStream(stream, tenant: tenant, fromVersion: 1, maxCount: 100).map(\.streamVersion)
            #expect(versions == [1, 2])
        }
    }

    @Test func concurrentAppendsWithAnyVersionLeaveNoGapOrDuplicate() async throws {
        try await TestDatabase.withStore { store in
            let stream = TestDatabase.uniqueStream()
            let tenant = TestDatabase.uniqueTenant()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<100 {
                    group.addTask {
                        _ = try await store.append([note("\(index)a"), note("\(index)b")], to: stream, tenant: tenant, expectedVersion: .any)
                    }
                }
                try await group.waitForAll()
            }
            let events = try await store.readStream(stream, tenant: tenant, fromVersion: 1, maxCount: 1000)
            #expect(events.map(\.streamVersion) == Array(1...200))
            // The two events of each append sit next to each other.
            let texts = try events.map { try $0.decode(Note.self).text }
            for pair in stride(from: 0, to: texts.count, by: 2) {
                #expect(texts[pair].dropLast() == texts[pair + 1].dropLast())
            }
            let positions = events.map(\.globalPosition)
            #expect(positions == positions.sorted())
        }
    }

    @Test func appendingTheSameEventIdsAgainReturnsTheOriginalResult() async throws {
        try await TestDatabase.withStore { store in
            let stream = TestDatabase.uniqueStream()
            let tenant = TestDatabase.uniqueTenant()
            let events = [note("a"), note("b")]
            let first = try await store.append(events, to: stream, tenant: tenant, expectedVersion: .noStream)
            try await store.append([note("c")], to: stream, tenant: tenant, expectedVersion: .exact(2))
            // The retry's expectation is stale by now; the ids decide.
            let again = try await store.append(events, to: stream, tenant: tenant, expectedVersion: .noStream)
            #expect(again.isDuplicate)
            #expect(again.events == first.events)
            let any = try await store.append(events, to: stream, tenant: tenant, expectedVersion: .any)
            #expect(any.isDuplicate && any.events == first.events)
            #expect(try await store.streamVersion(stream, tenant: tenant) == 3)
        }
    }

    @Test func concurrentRetriesOfOneAppendWriteItOnce() async throws {
        try await TestDatabase.withStore { store in
            let stream = TestDatabase.uniqueStream()
            let tenant = TestDatabase.uniqueTenant()
            let events = [note("once")]
            let results = try await withThrowingTaskGroup(of: AppendResult.self) { group in
                for _ in 0..<20 {
                    group.addTask { try await store.append(events, to: stream, tenant: tenant, expectedVersion: .any) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(results.filter { !$0.isDuplicate }.count == 1)
            #expect(Set(results.map(\.lastPosition)).count == 1)
            #expect(try await store.streamVersion(stream, tenant: tenant) == 1)
        }
    }

    @Test func anEventIdStoredElsewhereIsRejectedAndNothingIsWritten() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let taken = note("taken")
            try await store.append([taken], to: TestDatabase.uniqueStream(), tenant: tenant, expectedVersion: .any)
            let other = TestDatabase.uniqueStream()
            let error = try await #require(throws: EventStoreError.self) {
                try await store.append([note("new"), taken], to: other, tenant: tenant, expectedVersion: .any)
            }
            #expect(error.code == .duplicateEventID)
            #expect(try await store.streamVersion(other, tenant: tenant) == 0)
            // The same ids in another order at the same place are not a retry either.
            let stream = TestDatabase.uniqueStream()
            let a = note("a")
            let b = note("b")
            try await store.append([a, b], to: stream, tenant: tenant, expectedVersion: .noStream)
            let reordered = try await #require(throws: EventStoreError.self) {
                try await store.append([b, a], to: stream, tenant: tenant, expectedVersion: .any)
            }
            #expect(reordered.code == .duplicateEventID)
        }
    }

    @Test func invalidAppendsAreRefusedBeforeTouchingTheDatabase() async throws {
        try await TestDatabase.withStore { store in
            let stream = TestDatabase.uniqueStream()
            let tenant = TestDatabase.uniqueTenant()
            let repeated = note("twice")
            let cases: [[NewEvent]] = [
                [],
                [repeated, repeated],
                [NewEvent(type: "", data: .init(string: "{}"))],
                Array(repeating: (), count: 1001).map { note("many") },
            ]
            for events in cases {
                let error = try await #require(throws: EventStoreError.self) {
                    try await store.append(events, to: stream, tenant: tenant, expectedVersion: .any)
                }
                #expect(error.code == .invalidArgument)
            }
            let badJSON = NewEvent(type: "Broken", data: .init(string: "{not json"))
            let error = try await #require(throws: EventStoreError.self) {
                try await store.append([badJSON], to: stream, tenant: tenant, expectedVersion: .any)
            }
            #expect(error.code == .invalidArgument)
            #expect(try await store.streamVersion(stream, tenant: tenant) == 0)
        }
    }

    /// The one-statement path of exact appends hands what it cannot settle to convo_append: concurrent
    /// retries of one append are answered as duplicates, an id stored elsewhere is refused, nothing partial.
    @Test func exactAppendsRacingTheirOwnRetriesAndReusedIdsAreSettledLikeTheOthers() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let stream = TestDatabase.uniqueStream()
            let events = [note("a"), note("b")]
            let results = try await withThrowingTaskGroup(of: AppendResult.self) { group in
                for _ in 0..<20 {
                    group.addTask { try await store.append(events, to: stream, tenant: tenant, expectedVersion: .noStream) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(results.filter { !$0.isDuplicate }.count == 1)
            #expect(results.allSatisfy { $0.events == results[0].events })
            #expect(try await store.streamVersion(stream, tenant: tenant) == 2)

            let other = TestDatabase.uniqueStream()
            let reused = try await #require(throws: EventStoreError.self) {
                try await store.append([note("new"), events[0]], to: other, tenant: tenant, expectedVersion: .noStream)
            }
            #expect(reused.code == .duplicateEventID)
            #expect(try await store.streamVersion(other, tenant: tenant) == 0)
            let stale = try await #require(throws: EventStoreError.self) {
                try await store.append([note("late")], to: stream, tenant: tenant, expectedVersion: .exact(1))
            }
            #expect(stale.code == .wrongExpectedVersion && stale.actual == 2)
            #expect(try await store.verifyChains(tenant: tenant).isIntact)
        }
    }

}
