import EventStore
import Foundation
import Logging
import ServiceLifecycle
import SharedTypes
import Synchronization

/// Live events for `GET /v1/conversations/{id}/stream`: one subscription to the store per process, fanned out
/// to the listeners of each conversation, so a thousand open streams cost one query per wake-up, not a
/// thousand. A listener that falls too far behind is ended; its client reconnects with `Last-Event-ID` and
/// catches up from the database.
///
/// With no listener the feed reads no events: an instance that only ingests would otherwise read back
/// every batch it writes. It moves its position to the store's head once a second instead, and follows
/// again as soon as a listener registers.
final class ConversationFeed: Service, Sendable {
    enum Item: Sendable {
        case event(RecordedEvent)
        /// Sent to every listener now and then, so proxies keep idle streams open.
        case heartbeat
    }

    /// What a listener follows: one conversation of a tenant, or (`conversation` `nil`) every conversation of it.
    struct Key: Hashable, Sendable {
        var tenant: TenantID
        var conversation: ConversationID?
    }

    /// A registered listener: its items, and the position the feed had handed out before it registered
    /// (everything after comes through `items`).
    struct Listener: Sendable {
        let id: UUID
        let key: Key
        let items: AsyncStream<Item>
    }

    /// How many listeners (open event streams) the process holds, in all and per tenant: past either, a new
    /// stream is refused (429), so no tenant can take every stream, nor all of them the server's memory.
    struct Limits: Sendable {
        var total: Int
        var perTenant: Int

        init(total: Int = 2000, perTenant: Int = 200) {
            self.total = max(1, total)
            self.perTenant = max(1, perTenant)
        }
    }

    let store: PostgresEventStore
    let heartbeat: Duration
    let limits: Limits
    let logger: Logger
    /// Items a listener may have waiting before it is ended: a client too slow to read them is
    /// disconnected, and catches up from the database when it reconnects with `Last-Event-ID`.
    static let bufferLimit = 1000
    /// The listeners by conversation, and how many registered since start: one lock for both, so the idle
    /// feed sees a listener stored exactly when it sees it counted. `total` and `perTenant` count the places
    /// taken (``Place``), registered as listeners or not yet.
    private struct Listeners {
        var entries: [Key: [UUID: AsyncStream<Item>.Continuation]] = [:]
        var registrations = 0
        var total = 0
        var perTenant: [TenantID: Int] = [:]
    }
    private let listeners = Mutex(Listeners())
    private let stopped = Atomic<Bool>(false)
    /// How often an idle feed moves its position to the head, and looks for a listener.
    static let idleAdvance = Duration.seconds(1)
    static let idleCheck = Duration.milliseconds(50)

    init(store: PostgresEventStore, heartbeat: Duration = .seconds(15), limits: Limits = .init(), logger: Logger) {
        self.store = store
        self.heartbeat = heartbeat
        self.limits = limits
        self.logger = logger
    }

    /// A listener's place in the limits, taken when its request is admitted: a stream answered 200 holds its
    /// place from then on, before its body runs (the next request of the tenant sees it counted), and a
    /// place whose response was dropped unwritten is given back when it goes.
    final class Place: Sendable {
        let tenant: TenantID
        private let feed: ConversationFeed
        private let taken = Atomic<Bool>(false)

        fileprivate init(tenant: TenantID, feed: ConversationFeed) {
            self.tenant = tenant
            self.feed = feed
        }

        /// Whether this call is the one that turns the place into a listener (once only).
        fileprivate func take() -> Bool { !taken.exchange(true, ordering: .acquiringAndReleasing) }

        deinit { if !taken.load(ordering: .acquiring) { feed.giveBack(tenant) } }
    }

    /// A place for a new listener of `tenant`, counted now; `nil` when the limits are reached.
    func place(for tenant: TenantID) -> Place? {
        let admitted = listeners.withLock { listeners -> Bool in
            guard listeners.total < limits.total, listeners.perTenant[tenant, default: 0] < limits.perTenant else { return false }
            listeners.total += 1
            listeners.perTenant[tenant, default: 0] += 1
            return true
        }
        return admitted ? Place(tenant: tenant, feed: self) : nil
    }

    private func giveBack(_ tenant: TenantID) {
        listeners.withLock { listeners in
            // (Not below zero: the feed's end, shutting down, forgets every count at once.)
            listeners.total = max(0, listeners.total - 1)
            listeners.perTenant[tenant, default: 1] -= 1
            if listeners.perTenant[tenant, default: 0] <= 0 { listeners.perTenant[tenant] = nil }
        }
    }

    /// Registers a listener of a conversation's new events (of all the tenant's conversations when
    /// `conversation` is `nil`) in a place taken with ``place(for:)``; `nil` when the place was used already.
    /// Call ``remove(_:)`` when done: it gives the place back.
    func listen(in place: Place, conversation: ConversationID?) -> Listener? {
        guard place.take() else { return nil }
        let key = Key(tenant: place.tenant, conversation: conversation)
        let id = UUID()
        let (items, continuation) = AsyncStream<Item>.makeStream(bufferingPolicy: .bufferingOldest(Self.bufferLimit))
        listeners.withLock { listeners in
            listeners.entries[key, default: [:]][id] = continuation
            listeners.registrations += 1
        }
        if stopped.load(ordering: .relaxed) { continuation.finish() }
        return Listener(id: id, key: key, items: items)
    }

    func remove(_ listener: Listener) {
        let continuation = listeners.withLock { listeners -> AsyncStream<Item>.Continuation? in
            guard let removed = listeners.entries[listener.key]?.removeValue(forKey: listener.id) else { return nil }
            if listeners.entries[listener.key]?.isEmpty == true { listeners.entries[listener.key] = nil }
            listeners.total -= 1
            listeners.perTenant[listener.key.tenant, default: 1] -= 1
            if listeners.perTenant[listener.key.tenant] == 0 { listeners.perTenant[listener.key.tenant] = nil }
            return removed
        }
        continuation?.finish()
    }

    var listenerCount: Int { listeners.withLock { $0.total } }

    func run() async throws {
        defer {
            stopped.store(true, ordering: .relaxed)
            // Shutting down: every open stream ends, its client reconnects to another instance.
            let all = listeners.withLock { listeners in
                defer {
                    listeners.entries.removeAll()
                    listeners.total = 0
                    listeners.perTenant.removeAll()
                }
                return listeners.entries.values.flatMap(\.values)
            }
            for continuation in all { continuation.finish() }
        }
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.follow() }
                group.addTask { await self.beat() }
                await group.next()
                group.cancelAll()
            }
        }
    }

    private func follow() async {
        var position: Int64?
        while !Task.isCancelled {
            do {
                var start: Int64
                if let position { start = position } else { start = try await store.headPosition(.allTenants) }
                if listenerCount == 0 { start = try await idle(from: start) }
                position = start
                var events = store.subscribe(.allTenants, after: start).makeAsyncIterator()
                while let batch = try await events.nextBatch() {
                    dispatch(batch)
                    position = batch[batch.count - 1].globalPosition
                    // The last listener left: stop reading (the next pass waits in `idle`).
                    if listenerCount == 0 { break }
                }
                if Task.isCancelled { return }
            } catch {
                if Task.isCancelled { return }
                logger.warning("conversation feed interrupted; resuming", metadata: ["convo.error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Waits for a listener, moving `position` to the head now and then, and returns where to follow from.
    ///
    /// The head is the position below which every event has committed, taken in the query's snapshot: an
    /// event that commits later lies above it. The position moves there only when no listener registered
    /// before the query ended, so a listener never misses an event committed after it registered (what came
    /// before, its route reads from the store).
    private func idle(from position: Int64) async throws -> Int64 {
        var position = position
        let clock = ContinuousClock()
        var advanced = clock.now
        while listenerCount == 0 {
            try await Task.sleep(for: Self.idleCheck)
            guard clock.now - advanced >= Self.idleAdvance else { continue }
            // Nobody may listen when the head is read, and nobody may have registered by the time it was read:
            // a listener that came during the sleep above (or during the query) is owed the events committed
            // after it registered, the ones below the head too.
            guard let seen = listeners.withLock({ $0.entries.isEmpty ? $0.registrations : nil }) else { break }
            let head = try await store.headPosition(.allTenants)
            if listeners.withLock({ $0.registrations }) == seen { position = max(position, head) }
            advanced = clock.now
        }
        return position
    }

    private func beat() async {
        while (try? await Task.sleep(for: heartbeat)) != nil {
            let all = listeners.withLock { $0.entries.values.flatMap(\.values) }
            for continuation in all { continuation.yield(.heartbeat) }
        }
    }

    private func dispatch(_ batch: [RecordedEvent]) {
        var overflowing: [AsyncStream<Item>.Continuation] = []
        listeners.withLock { listeners in
            guard !listeners.entries.isEmpty else { return }
            for event in batch where event.stream.category == "messages" || event.stream.category == "workflow" {
                guard let conversation = ConversationID(rawValue: event.stream.id) else { continue }
                for key in [Key(tenant: event.tenant, conversation: conversation), Key(tenant: event.tenant, conversation: nil)] {
                    guard let targets = listeners.entries[key] else { continue }
                    for continuation in targets.values {
                        if case .dropped = continuation.yield(.event(event)) { overflowing.append(continuation) }
                    }
                }
            }
        }
        for continuation in overflowing { continuation.finish() }
    }
}
