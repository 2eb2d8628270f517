import ConvoTestSupport
import Synchronization
import Testing

@testable import convo

/// The shared deadline queue behind every request's deadline: each expiry fires once, after its deadline
/// and not long after; one finished in time never fires; thousands at once need no timer each.
@Suite struct DeadlineTimersTests {
    @Test func expiredDeadlinesFireOnceAndFinishedOnesNever() async throws {
        let timers = DeadlineTimers(after: .seconds(2))
        let fired = Mutex<[Int: Int]>([:])
        let started = ContinuousClock.now
        var kept: [(Int, DeadlineTimers.Timer)] = []
        for index in 0..<2000 {
            let timer = timers.start { fired.withLock { $0[index, default: 0] += 1 } }
            kept.append((index, timer))
        }
        // Half finish in time.
        var finishedInTime = 0
        for (index, timer) in kept where index.isMultiple(of: 2) {
            if !timers.finish(timer) { finishedInTime += 1 }
        }
        #expect(finishedInTime == 1000)
        #expect(try await eventually(timeout: .seconds(5)) { fired.withLock { $0.count } == 1000 })
        let elapsed = ContinuousClock.now - started
        #expect(elapsed >= .seconds(2))
        // Nothing more fires, and the others say they expired.
        for (index, timer) in kept where !index.isMultiple(of: 2) { #expect(timers.finish(timer)) }
        #expect(fired.withLock { $0.keys.allSatisfy { !$0.isMultiple(of: 2) } && $0.values.allSatisfy { $0 == 1 } })
    }

    @Test func aDeadlineStartedAfterTheQueueEmptiedStillFires() async throws {
        let timers = DeadlineTimers(after: .milliseconds(100))
        for _ in 0..<3 {
            let fired = Atomic<Bool>(false)
            let timer = timers.start { fired.store(true, ordering: .relaxed) }
            #expect(try await eventually(timeout: .seconds(5)) { fired.load(ordering: .relaxed) })
            #expect(timers.finish(timer))
            // Let the ticking task see an empty queue and end before the next round starts one.
            #expect(try await eventually(timeout: .seconds(5)) { !timers.isTicking })
        }
    }
}
