import NIOCore
import EventStore
import Hummingbird
import Synchronization

/// Answers 503 with `Retry-After` when a request has no response within the deadline, and cancels its work.
/// PostgresNIO's pool waits for a connection without end while PostgreSQL is unreachable; this bounds it.
/// A streamed body (the SSE route) is not limited: only the time to its first byte is. `/readyz` has its
/// own, shorter timeouts per check.
struct DeadlineMiddleware<Context: RequestContext>: RouterMiddleware {
    let deadline: Duration
    let timers: DeadlineTimers

    init(deadline: Duration) {
        self.deadline = deadline
        self.timers = DeadlineTimers(after: deadline)
    }

    /// Answers by the deadline: when it passes, the handler is cancelled and answers at once with what it
    /// knows (an ingest still queued is not stored: 503; one whose batch is being written: 504, retry with
    /// the same messageId). A handler that finishes in that moment gives its true outcome.
    ///
    /// The handler runs in a task of its own (cancelling the request's task would end its keep-alive
    /// connection too), started at once on the request's thread and awaited before this returns; its
    /// deadline is one entry in ``DeadlineTimers``, not a timer of its own.
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.uri.path == "/readyz" { return try await next(request, context) }
        return try await withoutActuallyEscaping(next) { next in
            // Awaited below on every path, so `next` does not outlive this call.
            let handler = UncheckedSendable(value: next)
            // Started on this thread, up to its first suspension (a task started on the pool was a hop to
            // another thread and back for every request).
            let work = Task.immediate { try await handler.value(request, context) }
            let timer = timers.start { work.cancel() }
            let outcome = await withTaskCancellationHandler {
                await work.result
            } onCancel: {
                work.cancel()
            }
            let expired = timers.finish(timer)
            switch outcome {
            case .success(let response): return response
            case .failure(let error) where !expired || Self.isDefinite(error): throw error
            case .failure:
                throw APIError(
                    .serviceUnavailable, "timeout",
                    "no answer within \(deadline.components.seconds) s (is PostgreSQL reachable?); nothing was stored, retry later",
                    headers: [.retryAfter: "\(APIError.retryAfterSeconds)"])
            }
        }
    }

    /// An error that says what happened to the request (a refusal of its input, or an unknown outcome), as
    /// opposed to one its cancellation caused.
    static func isDefinite(_ error: any Error) -> Bool {
        if let error = error as? APIError { return error.status.code < 500 || error.status == .gatewayTimeout }
        if let error = error as? EventStoreError { return error.code == .outcomeUnknown }
        return false
    }
}

/// Deadlines that are all the same length from their start, so they expire in the order they started: a
/// queue, checked by one task every ``tick`` while any is pending, instead of a system timer per request
/// (a `Task.sleep` each cost the server about 5% of its ingest rate). A deadline fires up to one tick late.
final class DeadlineTimers: Sendable {
    struct Timer: Sendable {
        let id: UInt64
    }

    static let tick = Duration.milliseconds(50)

    private struct Entry {
        let id: UInt64
        let due: ContinuousClock.Instant
    }

    private struct State {
        var nextID: UInt64 = 0
        var order = CircularBuffer<Entry>()
        var pending: [UInt64: @Sendable () -> Void] = [:]
        var expired = Set<UInt64>()
        var ticking = false
    }

    private let length: Duration
    private let state = Mutex(State())

    init(after length: Duration) {
        self.length = length
    }

    /// Calls `onExpiry` once the deadline passes, unless ``finish(_:)`` comes first.
    func start(onExpiry: @escaping @Sendable () -> Void) -> Timer {
        let due = ContinuousClock.now + length
        let (timer, startTicking) = state.withLock { state -> (Timer, Bool) in
            state.nextID &+= 1
            state.order.append(Entry(id: state.nextID, due: due))
            state.pending[state.nextID] = onExpiry
            let start = !state.ticking
            state.ticking = true
            return (Timer(id: state.nextID), start)
        }
        if startTicking { Task { await self.run() } }
        return timer
    }

    /// Whether a task is checking the queue (only while a deadline is pending).
    var isTicking: Bool { state.withLock { $0.ticking } }

    /// Ends the deadline. - Returns: whether it had expired.
    func finish(_ timer: Timer) -> Bool {
        state.withLock { state in
            if state.expired.remove(timer.id) != nil { return true }
            state.pending[timer.id] = nil
            return false
        }
    }

    private func run() async {
        while true {
            try? await Task.sleep(for: Self.tick)
            let now = ContinuousClock.now
            let (due, more) = state.withLock { state -> ([@Sendable () -> Void], Bool) in
                var due: [@Sendable () -> Void] = []
                while let first = state.order.first, first.due <= now || state.pending[first.id] == nil {
                    state.order.removeFirst()
                    if let onExpiry = state.pending.removeValue(forKey: first.id) {
                        state.expired.insert(first.id)
                        due.append(onExpiry)
                    }
                }
                if state.order.isEmpty { state.ticking = false }
                return (due, !state.order.isEmpty)
            }
            for onExpiry in due { onExpiry() }
            if !more { return }
        }
    }
}
