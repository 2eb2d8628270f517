import EventStore
import Projections
import Foundation
import Logging
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
        /// How long to wait before retrying a visitor whose processing failed (Redis or PostgreSQL down). Default: 2 s.
        public var retryDelay: Duration
        /// Whose conversations this service processes. Default: every tenant's.
        public var scope: TenantScope

        public init(
            sweepInterval: Duration = .seconds(30), maxConcurrentVisitors: Int = 64, retryDelay: Duration = .seconds(2), scope: TenantScope = .allTenants
        ) {
            self.scope = scope
            self.sweepInterval = sweepInterval
            self.maxConcurrentVisitors = max(1, maxConcurrentVisitors)
            self.retryDelay = retryDelay
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
    /// Work queued or running, so a burst for one conversation is processed once, plus whether more came in.
    private let inFlight = Mutex<[Work: Bool]>([:])
    /// Whether ``run()`` is processing: until it starts and after it ends, nothing takes work off the queue.
    private let running = Atomic<Bool>(false)

    public init(processor: ConversationProcessor, store: PostgresEventStore, configuration: Configuration = Configuration(), logger: Logger) {
        self.processor = processor
        self.store = store
        self.configuration = configuration
        self.logger = logger
        (queue, enqueue) = AsyncStream.makeStream()
    }

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
        await withDiscardingTaskGroup { group in
            group.addTask { await self.follow(after: start) }
            group.addTask { await self.sweepPeriodically() }
            group.addTask { await self.work() }
            group.addTask {
                try? await gracefulShutdown()
                self.enqueue.finish()
            }
        }
    }

    /// Processes the conversation soon: for callers that just ingested a message in this process.
    ///
    /// A service that is not running (an ingest-only `convo serve`, or one stopping) keeps nothing: its queue
    /// would only grow, one entry per conversation. The message is not lost: the instances that process
    /// find it through their subscription, and the sweep at their start.
    public func messageIngested(tenant: TenantID, visitor: VisitorUID, conversation: ConversationID) {
        guard running.load(ordering: .relaxed) else { return }
        schedule(Work(tenant: tenant, visitor: visitor, conversation: conversation))
    }

    /// Conversations queued or being processed by this instance.
    public var scheduledCount: Int { inFlight.withLock { $0.count } }

    /// Schedules a visitor's conversation; a schedule for work already queued or running is folded into it.
    func schedule(_ work: Work) {
        let isNew = inFlight.withLock { inFlight in
            if inFlight[work] != nil {
                inFlight[work] = true
                return false
            }
            inFlight[work] = false
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
            do {
                try await processor.process(tenant: work.tenant, visitor: work.visitor, conversation: work.conversation)
            } catch {
                if !Task.isCancelled {
                    logger.warning(
                        "processing failed; retrying later",
                        metadata: ["convo.conversation": "\(work.conversation)", "convo.error": "\(error)"])
                    try? await Task.sleep(for: configuration.retryDelay)
                    inFlight.withLock { $0[work] = true }
                }
            }
            // Stopping (shutdown or cancellation) ends the retries: the sweep of the next start finds the rest.
            again = inFlight.withLock { inFlight in
                if inFlight[work] == true && !Task.isShuttingDownGracefully && !Task.isCancelled {
                    inFlight[work] = false
                    return true
                }
                inFlight[work] = nil
                return false
            }
        }
    }

    private func follow(after start: Int64) async {
        var position = start
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                for try await event in store.subscribe(configuration.scope, after: position).cancelOnGracefulShutdown() {
                    position = event.globalPosition
                    guard event.type == VisitorMessageReceived.eventType, event.stream.category == "messages",
                        let conversation = ConversationID(rawValue: event.stream.id)
                    else { continue }
                    let message = try event.decode(VisitorMessageReceived.self)
                    schedule(Work(tenant: event.tenant, visitor: message.visitorUid, conversation: conversation))
                }
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { return }
                logger.warning("event subscription failed; resuming", metadata: ["convo.error": "\(error)"])
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.configuration.retryDelay) }
            }
        }
    }

    private func sweepPeriodically() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                let found = try await sweep()
                if !found.isEmpty { logger.info("sweep found conversations with pending messages", metadata: ["convo.count": "\(found.count)"]) }
                for work in found { schedule(work) }
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
