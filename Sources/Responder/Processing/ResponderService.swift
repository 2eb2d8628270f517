import EventStore
import Projections
import Foundation
import Logging
import Metrics
import PostgresNIO
import ServiceLifecycle
import SharedTypes
import Synchronization

/// The long-lived responder inside `convo serve`: processes visitors as their messages arrive (woken by
/// the event store's subscription, so messages ingested by any instance are seen), and sweeps for
/// conversations with pending messages at start-up and periodically (through the `conversations`
/// projection's unprocessed count), so a crash never strands a message.
public final class ResponderService: Service, Sendable {
    public struct Configuration: Sendable {
        /// How often to look for conversations with unprocessed messages. Default: 30 seconds.
        public var sweepInterval: Duration
        /// The most visitors processed at once by this instance. Default: 64.
        public var maxConcurrentVisitors: Int
        /// The first wait before retrying a conversation whose processing failed; it doubles with each failure
        /// in a row, up to `maxRetryDelay`. Default: 2 s.
        public var retryDelay: Duration
        /// The longest wait between retries. Default: 60 s.
        public var maxRetryDelay: Duration
        /// Failures in a row, for a reason a retry does not cure (a fold error, a missing or invalid
        /// workflow), after which a conversation is parked (``ConversationParked``) until an operator resumes
        /// it. PostgreSQL or Redis being unreachable never parks. Default: 6.
        public var maxAttempts: Int
        /// Whose conversations this service processes. Default: every tenant's.
        public var scope: TenantScope

        public init(
            sweepInterval: Duration = .seconds(30), maxConcurrentVisitors: Int = 64, retryDelay: Duration = .seconds(2),
            maxRetryDelay: Duration = .seconds(60), maxAttempts: Int = 6, scope: TenantScope = .allTenants
        ) {
            self.scope = scope
            self.sweepInterval = sweepInterval
            self.maxConcurrentVisitors = max(1, maxConcurrentVisitors)
            self.retryDelay = retryDelay
            self.maxRetryDelay = max(retryDelay, maxRetryDelay)
            self.maxAttempts = max(1, maxAttempts)
        }
    }

    struct Work: Hashable, Sendable {
        var tenant: TenantID
        var visitor: VisitorUID
        var conversation: ConversationID
    }

    public let processor: ConversationProcessor
    public let store: PostgresEventStore
    public let configuration: Configuration
    let logger: Logger
    private let queue: AsyncStream<Work>
    private let enqueue: AsyncStream<Work>.Continuation
    /// Work queued or running, so a burst for one conversation is processed once, with what came in since it
    /// started: the highest message version asked for (`0` nothing, `Int64.max` something unknown, such as a
    /// hand-back), so a run that consumed it already is not followed by one that finds nothing to do.
    private let inFlight = Mutex<[Work: Int64]>([:])
    /// Whether ``run()`` is processing: until it starts and after it ends, nothing takes work off the queue.
    private let running = Atomic<Bool>(false)
    /// Failures in a row per conversation, and what failed last.
    private let failures = Mutex<[Work: (count: Int, permanent: Int)]>([:])
    /// Conversations waiting out a backoff, by when they are due: they hold no worker meanwhile.
    private let delayed = Mutex<[Work: ContinuousClock.Instant]>([:])
    /// Conversations whose visitor's messages wait for the visitor to stop writing (their tenant's
    /// ``TenantSettings/answerAfterQuietSeconds``): they hold no worker meanwhile.
    private let holding = Mutex<[Work: Hold]>([:])
    /// Parked conversations (tenant and id), as this instance has seen them in the audit streams.
    private let parked = Mutex<Set<ParkedKey>>([])
    public let parkingLot: ParkingLot
    private let parkedCounter = Counter(label: "convo.responder.parked_total")
    private let runsCounter = Counter(label: "convo.responder.runs")
    private let runCount = Atomic<Int>(0)

    struct ParkedKey: Hashable, Sendable {
        var tenant: TenantID
        var conversation: ConversationID
    }

    /// A conversation waiting for its visitor to stop writing: processed at `due`, which each newer message
    /// moves to a quiet period after it, but never past `cap`; `version` is the newest message announced.
    struct Hold: Sendable {
        var due: ContinuousClock.Instant
        var cap: ContinuousClock.Instant
        var version: Int64
    }

    public init(processor: ConversationProcessor, store: PostgresEventStore, configuration: Configuration = Configuration(), logger: Logger) {
        self.processor = processor
        self.store = store
        self.configuration = configuration
        self.logger = logger
        self.parkingLot = ParkingLot(store: store, logger: logger)
        (queue, enqueue) = AsyncStream.makeStream()
    }

    /// Conversations this instance knows to be parked.
    public var parkedCount: Int { parked.withLock { $0.count } }

    /// Conversations waiting out a retry's backoff in this instance.
    public var backingOffCount: Int { delayed.withLock { $0.count } }

    /// Conversations whose messages wait in this instance for their visitor to stop writing.
    public var holdingCount: Int { holding.withLock { $0.count } }

    public func run() async throws {
        running.store(true, ordering: .sequentiallyConsistent)
        defer { running.store(false, ordering: .sequentiallyConsistent) }
        // PostgreSQL may be unreachable at start: wait for it (the sweep finds what arrives meanwhile) instead
        // of failing, which would take every other service of `convo serve` down with this one.
        var start: Int64?
        while start == nil {
            do {
                start = try await store.headPosition(configuration.scope)
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { return }
                logger.warning("responder waiting for PostgreSQL", metadata: ["convo.error": "\(error)"])
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.configuration.retryDelay) }
            }
        }
        guard let start else { return }
        await loadParked()
        await withDiscardingTaskGroup { group in
            group.addTask { await self.follow(after: start) }
            group.addTask { await self.retryWhenDue() }
            group.addTask { await self.sweepPeriodically() }
            group.addTask { await self.work() }
            group.addTask {
                try? await gracefulShutdown()
                self.enqueue.finish()
            }
        }
    }

    /// Processes the conversation soon: for callers that just ingested a message in this process (its version
    /// in the messages stream, when there is one: a message already consumed by then needs no second run).
    ///
    /// A service that is not running (an ingest-only `convo serve`, or one stopping) keeps nothing: its queue
    /// would only grow, one entry per conversation. The message is not lost: the instances that process
    /// find it through their subscription, and the sweep at their start.
    public func messageIngested(tenant: TenantID, visitor: VisitorUID, conversation: ConversationID, messageVersion: Int64? = nil) {
        guard running.load(ordering: .relaxed) else { return }
        announce(Work(tenant: tenant, visitor: visitor, conversation: conversation), upTo: messageVersion)
    }

    /// A visitor's message, announced by its route or by the subscription: scheduled at once, or held until
    /// the visitor has been quiet for their tenant's ``TenantSettings/answerAfterQuietSeconds``.
    func announce(_ work: Work, upTo version: Int64?) {
        if let version, version <= processor.consumedMessages(tenant: work.tenant, conversation: work.conversation) { return }
        // The settings at hand (re-read in the background once older than their cache's lifetime). Before the
        // tenant's first read ends the message waits for it (the read is one however many arrive); a first
        // read that fails answers at once.
        if let settings = processor.settings.settingsAtHand(work.tenant) {
            hold(work, upTo: version, quiet: settings.answerAfterQuiet, now: .now)
            return
        }
        Task {
            var quiet = Duration.zero
            do {
                quiet = try await processor.settings.settings(for: work.tenant).answerAfterQuiet
            } catch {
                logger.warning("could not read the tenant's settings; answering without waiting for a pause", metadata: ["convo.error": "\(error)"])
            }
            hold(work, upTo: version, quiet: quiet, now: .now)
        }
    }

    /// Schedules the work now (no quiet period) or holds it until its visitor is quiet for `quiet`: a newer
    /// message moves the end of the hold, up to ``TenantSettings/answerAfterQuietCap`` periods after it began.
    private func hold(_ work: Work, upTo version: Int64?, quiet: Duration, now: ContinuousClock.Instant) {
        guard quiet > .zero else {
            schedule(work, upTo: version)
            return
        }
        let wanted = version ?? .max
        holding.withLock { holding in
            guard var hold = holding[work] else {
                holding[work] = Hold(due: now + quiet, cap: now + quiet * TenantSettings.answerAfterQuietCap, version: wanted)
                return
            }
            // A message announced twice (by its route and by the subscription) does not move the hold.
            if wanted > hold.version || wanted == .max {
                hold.due = min(now + quiet, hold.cap)
                hold.version = max(hold.version, wanted)
            }
            holding[work] = hold
        }
    }

    /// Whether ``run()`` is taking work (from start until shutdown).
    public var isRunning: Bool { running.load(ordering: .relaxed) }

    /// Runs of the processor for a conversation by this instance (each takes the visitor's lock and reads the
    /// conversation): what its schedules cost.
    public var runs: Int { runCount.load(ordering: .relaxed) }

    /// Conversations queued or being processed by this instance.
    public var scheduledCount: Int { inFlight.withLock { $0.count } }

    /// Schedules a visitor's conversation; a schedule for work already queued or running is folded into it.
    /// `version`: the message that asks for it, when known (`nil`: anything, such as a hand-back).
    func schedule(_ work: Work, upTo version: Int64? = nil) {
        // Consumed already (announced twice, and the first run is done).
        if let version, version <= processor.consumedMessages(tenant: work.tenant, conversation: work.conversation) { return }
        let wanted = version ?? .max
        let isNew = inFlight.withLock { inFlight in
            if let existing = inFlight[work] {
                inFlight[work] = max(existing, wanted)
                return false
            }
            inFlight[work] = 0
            return true
        }
        if isNew { enqueue.yield(work) }
    }

    private func work() async {
        await withDiscardingTaskGroup { group in
            var running = 0
            var iterator = queue.makeAsyncIterator()
            let limit = configuration.maxConcurrentVisitors
            let slots = AsyncStream<Void>.makeStream()
            var slotIterator = slots.stream.makeAsyncIterator()
            while let work = await iterator.next() {
                // Once shutdown starts no new visitor is taken: what is queued stays unconsumed in the events and
                // in the visitor's pending set, for another instance (or this one's next start) to process.
                if Task.isShuttingDownGracefully {
                    inFlight.withLock { $0[work] = nil }
                    continue
                }
                if running >= limit {
                    _ = await slotIterator.next()
                    running -= 1
                }
                running += 1
                group.addTask {
                    await self.handle(work)
                    slots.continuation.yield()
                }
            }
        }
    }

    private func handle(_ work: Work) async {
        var again = true
        while again {
            if parked.withLock({ $0.contains(ParkedKey(tenant: work.tenant, conversation: work.conversation)) }) {
                inFlight.withLock { $0[work] = nil }
                return
            }
            do {
                runCount.add(1, ordering: .relaxed)
                runsCounter.increment()
                try await processor.process(tenant: work.tenant, visitor: work.visitor, conversation: work.conversation)
                failures.withLock { $0[work] = nil }
            } catch {
                if !Task.isCancelled && !Task.isShuttingDownGracefully {
                    // The worker is freed now: the conversation waits out its backoff without holding a slot.
                    await failed(work, error: error)
                }
                inFlight.withLock { $0[work] = nil }
                return
            }
            // Again when something came in meanwhile that the run did not consume (it often did: a message
            // ingested here is announced by the route and by the subscription). Stopping (shutdown or
            // cancellation) ends the retries: the sweep of the next start finds the rest.
            let consumed = processor.consumedMessages(tenant: work.tenant, conversation: work.conversation)
            again = inFlight.withLock { inFlight in
                if let wanted = inFlight[work], wanted > consumed, !Task.isShuttingDownGracefully, !Task.isCancelled {
                    inFlight[work] = 0
                    return true
                }
                inFlight[work] = nil
                return false
            }
        }
    }

    /// Counts a failure; parks the conversation after `maxAttempts` permanent failures in a row, else retries
    /// it after a backoff that doubles with each failure.
    private func failed(_ work: Work, error: any Error) async {
        let permanent = Self.isPermanent(error)
        let (count, permanentCount) = failures.withLock { failures -> (Int, Int) in
            var entry = failures[work] ?? (0, 0)
            entry.count += 1
            entry.permanent = permanent ? entry.permanent + 1 : 0
            failures[work] = entry
            return entry
        }
        let reason = String(describing: error)
        if permanentCount >= configuration.maxAttempts {
            do {
                try await parkingLot.park(
                    ConversationParked(
                        conversationId: work.conversation, visitorUid: work.visitor, error: String(reason.prefix(500)), attempts: permanentCount,
                        instance: processor.configuration.instance), tenant: work.tenant)
                parked.withLock { _ = $0.insert(ParkedKey(tenant: work.tenant, conversation: work.conversation)) }
                failures.withLock { $0[work] = nil }
                parkedCounter.increment()
                logger.error(
                    "conversation parked: its processing keeps failing; `convo conversations retry` resumes it",
                    metadata: ["convo.conversation": "\(work.conversation)", "convo.attempts": "\(permanentCount)", "convo.error": "\(reason)"])
                return
            } catch {
                logger.warning("could not park a failing conversation; retrying it later", metadata: ["convo.error": "\(error)"])
            }
        }
        let delay = Self.backoff(after: count, base: configuration.retryDelay, cap: configuration.maxRetryDelay)
        logger.warning(
            "processing failed; retrying later",
            metadata: ["convo.conversation": "\(work.conversation)", "convo.attempts": "\(count)", "convo.retry_in": "\(delay)", "convo.error": "\(reason)"])
        delayed.withLock { $0[work] = .now + delay }
    }

    /// `base` doubled for each failure after the first, at most `cap`.
    static func backoff(after failures: Int, base: Duration, cap: Duration) -> Duration {
        var delay = base
        for _ in 1..<max(1, min(failures, 32)) where delay < cap { delay = delay * 2 }
        return min(delay, cap)
    }

    /// Whether a retry cannot cure the error: anything but PostgreSQL or Redis being unreachable (or an
    /// unknown write outcome), a lost lock or a cancellation.
    static func isPermanent(_ error: any Error) -> Bool {
        if error is CancellationError { return false }
        if let error = error as? EventStoreError { return ![.unavailable, .outcomeUnknown, .wrongExpectedVersion].contains(error.code) }
        if let error = error as? ResponderError { return ![.redisUnavailable, .redisCommandFailed, .lockLost].contains(error.code) }
        return true
    }

    /// Schedules the conversations whose backoff has passed, and those whose visitor has been quiet long
    /// enough, until shutdown. Up to one tick late.
    private func retryWhenDue() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let now = ContinuousClock.now
            let due = delayed.withLock { delayed -> [Work] in
                let due = delayed.filter { $0.value <= now }.map(\.key)
                for work in due { delayed[work] = nil }
                return due
            }
            for work in due { schedule(work) }
            let quiet = holding.withLock { holding -> [(Work, Int64)] in
                let due = holding.filter { $0.value.due <= now }.map { ($0.key, $0.value.version) }
                for (work, _) in due { holding[work] = nil }
                return due
            }
            for (work, version) in quiet { schedule(work, upTo: version == .max ? nil : version) }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: Self.tick) }
        }
    }

    /// How often backoffs and quiet periods are checked.
    static let tick = Duration.milliseconds(50)

    /// The parked conversations of every tenant in scope, at start; the subscription keeps them current.
    private func loadParked() async {
        do {
            let tenant: TenantID? = if case .tenant(let tenant) = configuration.scope { tenant } else { nil }
            let entries = try await parkingLot.all(tenant: tenant)
            let keys = entries.compactMap { entry -> ParkedKey? in
                guard let tenant = TenantID(rawValue: entry.tenant), let conversation = ConversationID(rawValue: entry.conversationId) else { return nil }
                return ParkedKey(tenant: tenant, conversation: conversation)
            }
            parked.withLock { $0 = Set(keys) }
        } catch {
            logger.warning("could not read the parked conversations; the subscription and a park's own check find them", metadata: ["convo.error": "\(error)"])
        }
    }

    private func follow(after start: Int64) async {
        var position = start
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                // What is followed here (a message's visitor, parking records) is never sealed: nothing is decrypted;
                // and only those types are read (about one event in seven of an answered conversation).
                let types = [VisitorMessageReceived.eventType, ConversationParked.eventType, ConversationResumed.eventType]
                for try await event in store.subscribe(configuration.scope, after: position, types: types, opening: .only([])).cancelOnGracefulShutdown() {
                    position = event.globalPosition
                    if event.stream.category == "audit" { try observeParking(event); continue }
                    guard event.type == VisitorMessageReceived.eventType, event.stream.category == "messages",
                        let conversation = ConversationID(rawValue: event.stream.id)
                    else { continue }
                    let message = try event.decode(VisitorMessageReceived.self)
                    announce(Work(tenant: event.tenant, visitor: message.visitorUid, conversation: conversation), upTo: event.streamVersion)
                }
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { return }
                logger.warning("event subscription failed; resuming", metadata: ["convo.error": "\(error)"])
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.configuration.retryDelay) }
            }
        }
    }

    /// Keeps the parked set current from the audit streams: a park (by any instance) stops retries; a resume
    /// schedules the conversation at once.
    private func observeParking(_ event: RecordedEvent) throws {
        switch event.type {
        case ConversationParked.eventType:
            let parkedEvent = try event.decode(ConversationParked.self)
            parked.withLock { _ = $0.insert(ParkedKey(tenant: event.tenant, conversation: parkedEvent.conversationId)) }
        case ConversationResumed.eventType:
            let resumed = try event.decode(ConversationResumed.self)
            parked.withLock { _ = $0.remove(ParkedKey(tenant: event.tenant, conversation: resumed.conversationId)) }
            let work = Work(tenant: event.tenant, visitor: resumed.visitorUid, conversation: resumed.conversationId)
            failures.withLock { $0[work] = nil }
            schedule(work)
        default:
            return
        }
    }

    private func sweepPeriodically() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                let found = try await sweep()
                if !found.isEmpty { logger.info("sweep found conversations with pending messages", metadata: ["convo.count": "\(found.count)"]) }
                // A conversation waiting for its visitor to stop writing is left to its hold.
                for work in found where holding.withLock({ $0[work] == nil }) { schedule(work) }
            } catch {
                logger.warning("sweep failed", metadata: ["convo.error": "\(error)"])
            }
            // Ends at once on graceful shutdown, so a stopping server does not wait out the interval.
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.configuration.sweepInterval) }
        }
    }

    /// Conversations with visitor messages their workflow has not consumed, from the `conversations`
    /// projection: a sweep is a safety net for wake-ups that were lost (a crash between ingest and
    /// processing), so being as current as the projection is enough, and it reads an index instead of
    /// aggregating the whole events table.
    func sweep() async throws -> [Work] {
        try await ConversationsProjection().pending(configuration.scope, client: store.client, logger: logger).map {
            Work(tenant: $0.tenant, visitor: $0.visitor, conversation: $0.conversation)
        }
    }
}
