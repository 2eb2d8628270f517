import EventStore
import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle
import SharedTypes
import Synchronization

/// The long-lived responder inside `convo serve`: processes visitors as their messages arrive (woken by
/// the event store's subscription, so messages ingested by any instance are seen), and sweeps for
/// conversations with pending messages at start-up and periodically, so a crash never strands a message.
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

    public init(processor: ConversationProcessor, store: PostgresEventStore, configuration: Configuration = Configuration(), logger: Logger) {
        self.processor = processor
        self.store = store
        self.configuration = configuration
        self.logger = logger
        (queue, enqueue) = AsyncStream.makeStream()
    }

    public func run() async throws {
        let start = try await store.headPosition(configuration.scope)
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
    public func messageIngested(tenant: TenantID, visitor: VisitorUID, conversation: ConversationID) {
        schedule(Work(tenant: tenant, visitor: visitor, conversation: conversation))
    }

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
                try? await Task.sleep(for: configuration.retryDelay)
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
            try? await Task.sleep(for: configuration.sweepInterval)
        }
    }

    /// Conversations whose `messages-` stream is ahead of what their workflow has consumed.
    func sweep() async throws -> [Work] {
        try await Self.conversationsWithPendingMessages(client: store.client, scope: configuration.scope, logger: logger).map {
            Work(tenant: $0.tenant, visitor: $0.visitor, conversation: $0.conversation)
        }
    }

    /// Every conversation whose last visitor message is not consumed by its workflow yet.
    public static func conversationsWithPendingMessages(
        client: PostgresClient, scope: TenantScope = .allTenants, logger: Logger
    ) async throws -> [(tenant: TenantID, visitor: VisitorUID, conversation: ConversationID)] {
        let tenant: String?
        switch scope {
        case .allTenants: tenant = nil
        case .tenant(let id): tenant = id.rawValue
        }
        let query: PostgresQuery = """
            WITH messages AS (
                SELECT tenant_id, substr(stream_name, 10) AS conversation, max(stream_version) AS last_message
                FROM events WHERE stream_category = 'messages' AND event_type = 'VisitorMessageReceived'
                  AND (\(tenant)::text IS NULL OR tenant_id = \(tenant))
                GROUP BY tenant_id, stream_name
            ), consumed AS (
                SELECT tenant_id, substr(stream_name, 10) AS conversation, max((data->>'upToVersion')::bigint) AS up_to
                FROM events WHERE stream_category = 'workflow' AND event_type = 'MessagesProcessed'
                  AND (\(tenant)::text IS NULL OR tenant_id = \(tenant))
                GROUP BY tenant_id, stream_name
            )
            SELECT m.tenant_id, m.conversation,
                   (SELECT e.data->>'visitorUid' FROM events e
                    WHERE e.tenant_id = m.tenant_id AND e.stream_name = 'messages-' || m.conversation AND e.stream_version = 1)
            FROM messages m LEFT JOIN consumed c USING (tenant_id, conversation)
            WHERE coalesce(c.up_to, 0) < m.last_message
            """
        var found: [(TenantID, VisitorUID, ConversationID)] = []
        do {
            for try await (tenant, conversation, visitor) in try await client.query(query, logger: logger).decode((String, String, String?).self) {
                guard let tenant = TenantID(rawValue: tenant), let conversation = ConversationID(rawValue: conversation),
                    let visitor = visitor.flatMap(VisitorUID.init(rawValue:))
                else { continue }
                found.append((tenant, visitor, conversation))
            }
        } catch {
            throw PostgresEventStore.mapError(error, operation: "look for pending messages")
        }
        return found
    }
}
