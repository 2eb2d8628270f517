import ConvoTestSupport
import EventStore
import Foundation
import Testing

@testable import Projections

@Suite struct LagTests {
    /// The measures of a status read: one per distinct checkpoint (the projections held back by one open
    /// transaction all stop at the same one), each what the store's own counts give for it. That the store is
    /// asked once per checkpoint follows from the one entry; it is not counted here.
    @Test func eachDistinctCheckpointGetsOneMeasureEqualToTheStoresOwn() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                try await Traffic(store: store).run(turns: 10, conversations: 3)
                #expect(try await settled(store))
                let positions = try await store.readAll(.allTenants, after: 0, maxCount: 1000).map(\.globalPosition)
                #expect(positions.count > 20)
                let middle = positions[positions.count / 2]
                let last = positions[positions.count - 1]
                let lags = try await ProjectionStatus.Lag.measure(
                    after: [0, middle, 0, last, middle], countingUpTo: ProjectionStatus.lagCountLimit, store: store)
                #expect(Set(lags.keys) == [0, middle, last])
                #expect(lags[0]?.events == Int64(positions.count))
                #expect(lags[middle]?.events == Int64(positions.filter { $0 > middle }.count))
                #expect(lags[last]?.events == 0 && lags[last]?.waitingSeconds == 0)
                for (checkpoint, lag) in lags {
                    #expect(lag.events == (try await store.countEvents(after: checkpoint, limit: ProjectionStatus.lagCountLimit)))
                    #expect(lag.heldBack == nil)
                }
                #expect((lags[0]?.waitingSeconds ?? -1) > 0)
            }
        }
    }

    /// A status read often (readiness, metrics, tenants) counts a backlog only up to its limit and says "at
    /// least"; an operator's status counts it all (up to a million).
    @Test func aLagCountStopsAtItsLimitAndSaysAtLeast() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let traffic = Traffic(store: store)
                try await traffic.run(turns: 4, conversations: 2)
                #expect(try await settled(store))
                _ = try await ProjectionRebuilder(store: store, logger: TestDatabase.logger).rebuild(ProjectionRegistry.standard, reason: "test")
                try await traffic.run(turns: 6, conversations: 2, prefix: "after")
                #expect(try await settled(store))
                let full = try await ProjectionStatus.read(ProjectionRegistry.standard, store: store, logger: TestDatabase.logger)
                let capped = try await ProjectionStatus.read(ProjectionRegistry.standard, store: store, countingUpTo: 5, logger: TestDatabase.logger)
                #expect(full.count == 3 && capped.count == 3)
                for (whole, counted) in zip(full, capped) {
                    #expect(whole.storedVersion != nil && whole.lag > 5 && whole.lagCountedUpTo == ProjectionStatus.lagCountLimit, "\(whole)")
                    #expect(whole.lag == (try await store.countEvents(after: whole.checkpoint)))
                    #expect(whole.lagText == "\(whole.lag)")
                    #expect(whole.problem(staleAfter: .seconds(600)) == "no active runner in any process; \(whole.lag) events behind")
                    #expect(counted.lag == 5 && counted.lagCountedUpTo == 5 && counted.lagText == "at least 5", "\(counted)")
                    #expect(counted.problem(staleAfter: .seconds(600)) == "no active runner in any process; at least 5 events behind")
                }
            }
        }
    }
}
