/// Events after a position, in position order, as they commit. Woken by local appends and by other
/// processes' notifications; polls as a fallback. Ends (returns `nil`) when its task is cancelled.
public struct EventSubscription: AsyncSequence, Sendable {
    public typealias Element = RecordedEvent

    let position: Int64
    let signal: WakeUpSignal
    let pollInterval: Duration
    let fetch: @Sendable (Int64) async throws -> [RecordedEvent]

    init(after position: Int64, signal: WakeUpSignal, pollInterval: Duration, fetch: @escaping @Sendable (Int64) async throws -> [RecordedEvent]) {
        self.position = position
        self.signal = signal
        self.pollInterval = pollInterval
        self.fetch = fetch
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(subscription: self, position: position)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let subscription: EventSubscription
        /// The position of the last event handed out.
        var position: Int64
        var buffer: [RecordedEvent] = []
        var index = 0
        /// Set when an append was signalled but nothing could be read: the append's transaction may still be
        /// withheld behind an older open one, so look again soon, backing off up to the poll interval.
        var heldBackDelay: Duration?
        var heldBackSince: ContinuousClock.Instant?
        static let heldBackCap = Duration.milliseconds(200)

        init(subscription: EventSubscription, position: Int64) {
            self.subscription = subscription
            self.position = position
        }

        /// The events that are ready, at least one, waiting for one when none is: for readers that apply
        /// events in batches. `nil` when the task is cancelled.
        public mutating func nextBatch() async throws -> [RecordedEvent]? {
            guard let first = try await next() else { return nil }
            var batch = [first]
            if index < buffer.count {
                batch += buffer[index...]
                index = buffer.count
                position = batch[batch.count - 1].globalPosition
            }
            return batch
        }

        public mutating func next() async throws -> RecordedEvent? {
            while true {
                if index < buffer.count {
                    let event = buffer[index]
                    index += 1
                    position = event.globalPosition
                    return event
                }
                if Task.isCancelled { return nil }
                let generation = subscription.signal.generation
                buffer = try await subscription.fetch(position)
                index = 0
                guard buffer.isEmpty else {
                    heldBackDelay = nil
                    continue
                }
                let pollInterval = subscription.pollInterval
                await subscription.signal.wait(after: generation, timeout: heldBackDelay.map { Swift.min($0, pollInterval) } ?? pollInterval)
                if subscription.signal.generation != generation {
                    heldBackDelay = .milliseconds(5)
                    heldBackSince = .now
                } else if let delay = heldBackDelay, let since = heldBackSince {
                    // Something was appended: look again at most every 200 ms, for up to a poll interval
                    // (the append may be of another scope, never to show here).
                    heldBackDelay = ContinuousClock.now - since < pollInterval ? Swift.min(delay * 2, Self.heldBackCap) : nil
                }
            }
        }
    }
}
