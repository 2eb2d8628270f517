import Metrics
import Synchronization

/// The latest events of all tenants, read once for every follower of them in this process (the projection
/// runners, the event streams' feed) instead of once by each.
///
/// What a follower reads after a position is final: readers withhold what commits behind an older open
/// transaction, so no event can later appear between events already handed out. The tail keeps such a
/// stretch, every event in (`after`, `upTo`], unopened. A follower inside it is served from memory; one at
/// its end reads the next page for everyone (one read at a time, the others at the end wait for it and
/// share it); one behind it, or ahead of it while another read is under way, reads on its own as before.
/// Each follower opens its copy's personal members itself, as it asks.
final class EventTail: Sendable {
    struct State {
        /// The stretch held: every event after `after` up to `upTo` (`nil` until the first read).
        var after: Int64?
        var upTo: Int64 = 0
        var events: [RecordedEvent] = []
        /// The read under way, at `upTo`.
        var reading: (after: Int64, task: Task<[RecordedEvent], any Error>)?
        /// Reads made for the tail, pages served from what it holds, and followers that waited for a read
        /// another one started (for tests).
        var reads = 0
        var served = 0
        var joined = 0
    }

    let capacity: Int
    let pageSize: Int
    let read: @Sendable (Int64, Int) async throws -> [RecordedEvent]
    private let state = Mutex(State())
    /// Reads made for the tail, and pages followers took from it or from another's read instead of reading.
    private let readCounter = Counter(label: "convo.eventstore.tail.reads")
    private let sharedCounter = Counter(label: "convo.eventstore.tail.shared")

    /// - Parameters:
    ///   - capacity: the most events held; the oldest go first.
    ///   - read: the events after a position, at most a count, final (withheld behind open transactions).
    init(capacity: Int, pageSize: Int, read: @escaping @Sendable (Int64, Int) async throws -> [RecordedEvent]) {
        self.capacity = capacity
        self.pageSize = pageSize
        self.read = read
    }

    var counts: (reads: Int, served: Int, joined: Int) { state.withLock { ($0.reads, $0.served, $0.joined) } }

    private enum Plan {
        case served([RecordedEvent])
        case wait(Task<[RecordedEvent], any Error>)
        case alone
    }

    /// The events after `position`, at most `maxCount`, unopened: from the tail, from the read at its end,
    /// or read alone.
    func events(after position: Int64, maxCount: Int) async throws -> [RecordedEvent] {
        let plan = state.withLock { state -> Plan in
            if let after = state.after, after <= position, position < state.upTo {
                state.served += 1
                return .served(Self.slice(state.events, after: position, maxCount: maxCount))
            }
            if let reading = state.reading {
                guard reading.after == position else { return .alone }
                state.joined += 1
                sharedCounter.increment()
                return .wait(reading.task)
            }
            // At the end, or ahead of it (the stretch is left behind and starts again here).
            guard state.after == nil || position >= state.upTo else { return .alone }
            if position > state.upTo || state.after == nil {
                state.after = position
                state.upTo = position
                state.events.removeAll(keepingCapacity: true)
            }
            state.reads += 1
            readCounter.increment()
            let task = Task { [read, pageSize] in
                do {
                    let page = try await read(position, pageSize)
                    self.keep(page, after: position)
                    return page
                } catch {
                    self.state.withLock { if $0.reading?.after == position { $0.reading = nil } }
                    throw error
                }
            }
            state.reading = (position, task)
            return .wait(task)
        }
        switch plan {
        case .served(let events):
            sharedCounter.increment()
            return events
        case .wait(let task):
            // The read goes on for the others (and the tail) when this follower is cancelled; it stops waiting.
            let outcome = FirstOutcome<[RecordedEvent]>()
            Task { outcome.offer(await task.result) }
            let page = try await withTaskCancellationHandler {
                await outcome.value()
            } onCancel: {
                outcome.offer(.failure(CancellationError()))
            }.get()
            return page.count > maxCount ? Array(page.prefix(maxCount)) : page
        case .alone:
            return try await read(position, maxCount)
        }
    }

    /// Adds a page read at the end, and drops the oldest events past the capacity.
    private func keep(_ page: [RecordedEvent], after position: Int64) {
        state.withLock { state in
            if state.reading?.after == position { state.reading = nil }
            guard state.upTo == position, let last = page.last else { return }
            state.events += page
            state.upTo = last.globalPosition
            if state.events.count > capacity {
                let dropped = state.events.count - capacity
                state.after = state.events[dropped - 1].globalPosition
                state.events.removeFirst(dropped)
            }
        }
    }

    /// The events after `position`, at most `maxCount`, of a stretch in position order.
    static func slice(_ events: [RecordedEvent], after position: Int64, maxCount: Int) -> [RecordedEvent] {
        var low = 0
        var high = events.count
        while low < high {
            let middle = (low + high) / 2
            if events[middle].globalPosition <= position { low = middle + 1 } else { high = middle }
        }
        return Array(events[low..<Swift.min(events.count, low + maxCount)])
    }
}
