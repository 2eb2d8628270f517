import EventStore
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import SharedTypes
import Synchronization

/// Group commit for ingest: the messages of concurrent requests are stored together, one
/// ``PostgresEventStore/appendMany(_:)`` call (one transaction, one round trip) per batch, while each
/// request keeps its own idempotency, checks and error. A batch is whatever arrived while the previous one
/// was being written, so a lone request waits for nobody and a crowd shares commits.
///
/// The visitor a conversation belongs to never changes (its `ConversationStarted` event is immutable), so
/// it is remembered: a batch reads the first events only of conversations it has not seen. The rare cases
/// a batch cannot settle on its own (a conversation started by another writer meanwhile, a retried
/// message, several first messages of one new conversation) go through ``MessageIngestor``, one by one.
public final class IngestBatcher: Service, Sendable {
    public struct Configuration: Sendable {
        /// The most messages one batch stores. Default: 512.
        public var maxBatch: Int
        /// How many batches may be written at once. Default: 2.
        public var writers: Int

        public init(maxBatch: Int = 512, writers: Int = 2) {
            self.maxBatch = maxBatch
            self.writers = writers
        }
    }

    struct Pending: Sendable {
        let message: IncomingMessage
        let continuation: CheckedContinuation<IngestResult, any Error>
    }

    let store: PostgresEventStore
    let ingestor: MessageIngestor
    let configuration: Configuration
    let logger: Logger
    private let queue = Mutex<(items: [Pending], stopped: Bool)>(([], false))
    private let wake: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation
    private let owners = Mutex<[StreamKey: VisitorUID]>([:])
    private static let maxOwners = 100_000
    private let batchSize = Recorder(label: "convo.ingest.batch_size")
    private let batchCount = Atomic<Int>(0)
    private let messageCount = Atomic<Int>(0)

    /// Batches written and the messages they carried, since start.
    public var written: (batches: Int, messages: Int) { (batchCount.load(ordering: .relaxed), messageCount.load(ordering: .relaxed)) }

    public init(store: PostgresEventStore, configuration: Configuration = .init(), logger: Logger) {
        self.store = store
        self.ingestor = MessageIngestor(store: store, logger: logger)
        self.configuration = configuration
        self.logger = logger
        (wake, wakeContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Stores the message with the next batch.
    ///
    /// - Throws: as ``MessageIngestor/ingest(_:)``; ``EventStoreError`` with ``EventStoreError/Code/unavailable``
    ///   once the batcher has stopped.
    public func ingest(_ message: IncomingMessage) async throws -> IngestResult {
        try MessageIngestor.validate(message)
        return try await withCheckedThrowingContinuation { continuation in
            let accepted = queue.withLock { queue in
                guard !queue.stopped else { return false }
                queue.items.append(Pending(message: message, continuation: continuation))
                return true
            }
            guard accepted else {
                continuation.resume(throwing: EventStoreError(code: .unavailable, message: "the server is shutting down; retry elsewhere"))
                return
            }
            wakeContinuation.yield()
        }
    }

    /// Writes batches until graceful shutdown, then writes what is queued and refuses new messages.
    public func run() async throws {
        await withDiscardingTaskGroup { group in
            for _ in 0..<max(1, configuration.writers) {
                group.addTask { await self.write() }
            }
            group.addTask {
                try? await gracefulShutdown()
                self.queue.withLock { $0.stopped = true }
                self.wakeContinuation.finish()
            }
        }
        // Cancelled rather than shut down: nothing will write what is left.
        let left = queue.withLock { queue in
            queue.stopped = true
            defer { queue.items.removeAll() }
            return queue.items
        }
        for pending in left { pending.continuation.resume(throwing: EventStoreError(code: .unavailable, message: "the server stopped; retry")) }
    }

    private func write() async {
        var wakeUps = wake.makeAsyncIterator()
        while true {
            let batch = queue.withLock { queue -> [Pending] in
                let count = min(queue.items.count, configuration.maxBatch)
                defer { queue.items.removeFirst(count) }
                return Array(queue.items.prefix(count))
            }
            if batch.isEmpty {
                // Woken for an empty queue (another writer took it), or finished: the queue is drained.
                guard await wakeUps.next() != nil else {
                    if queue.withLock({ $0.items.isEmpty }) { return }
                    continue
                }
                continue
            }
            // More may be waiting than one batch takes: let another writer start on it.
            if queue.withLock({ !$0.items.isEmpty }) { wakeContinuation.yield() }
            batchSize.record(batch.count)
            batchCount.add(1, ordering: .relaxed)
            messageCount.add(batch.count, ordering: .relaxed)
            await store(batch)
        }
    }

    /// Stores a batch; every pending message is answered exactly once, at the end.
    private func store(_ batch: [Pending]) async {
        var outcomes = [Result<IngestResult, any Error>?](repeating: nil, count: batch.count)
        var alone: [Int] = []
        do {
            let keys = batch.map { StreamKey(tenant: $0.message.tenant, stream: $0.message.conversationId.messagesStream) }
            var known = owners.withLock { owners in keys.reduce(into: [StreamKey: VisitorUID]()) { $0[$1] = owners[$1] } }
            let unknown = Set(keys.filter { known[$0] == nil })
            if !unknown.isEmpty {
                let firsts = try await store.readFirstEvents(unknown.map { ($0.tenant, $0.stream) })
                for (key, event) in firsts where event.type == ConversationStarted.eventType {
                    known[key] = try event.decode(ConversationStarted.self).visitorUid
                }
            }
            var requests: [AppendRequest] = []
            var placed: [(index: Int, starts: Bool)] = []
            var startedHere = Set<StreamKey>()
            for (index, key) in keys.enumerated() {
                let message = batch[index].message
                if let owner = known[key] {
                    guard owner == message.visitorUid else {
                        outcomes[index] = .failure(
                            ResponderError(
                                code: .conversationOwnedByAnotherVisitor, message: "conversation \(message.conversationId) belongs to another visitor"))
                        continue
                    }
                    requests.append(AppendRequest([try MessageIngestor.receivedEvent(message)], to: key.stream, tenant: key.tenant, expectedVersion: .streamExists))
                    placed.append((index, false))
                } else if startedHere.contains(key) {
                    // Another first message of a new conversation: after this batch, once the first has settled it.
                    alone.append(index)
                } else {
                    startedHere.insert(key)
                    requests.append(
                        AppendRequest(
                            [try MessageIngestor.startedEvent(message), try MessageIngestor.receivedEvent(message)], to: key.stream,
                            tenant: key.tenant, expectedVersion: .noStream))
                    placed.append((index, true))
                }
            }
            let results = requests.isEmpty ? [] : try await store.appendMany(requests)
            var learned: [StreamKey: VisitorUID] = [:]
            for ((index, starts), result) in zip(placed, results) {
                switch result {
                case .success(let append) where !append.isDuplicate:
                    let stored = append.events[append.events.count - 1]
                    learned[keys[index]] = batch[index].message.visitorUid
                    outcomes[index] = .success(
                        IngestResult(
                            eventId: stored.eventId, streamVersion: stored.streamVersion, globalPosition: stored.globalPosition, isDuplicate: false,
                            startedConversation: starts))
                default:
                    // A retry (its content must match), or a conversation someone else started meanwhile: one by one.
                    alone.append(index)
                }
            }
            owners.withLock { owners in
                if owners.count + learned.count > Self.maxOwners { owners.removeAll(keepingCapacity: true) }
                owners.merge(learned) { _, new in new }
            }
        } catch {
            // The batch failed as a whole (PostgreSQL unavailable, say): nothing of it was written.
            for index in batch.indices where outcomes[index] == nil { outcomes[index] = .failure(error) }
            alone = []
        }
        for index in alone {
            do {
                outcomes[index] = .success(try await ingestor.ingest(batch[index].message))
            } catch {
                outcomes[index] = .failure(error)
            }
        }
        for (pending, outcome) in zip(batch, outcomes) {
            pending.continuation.resume(with: outcome ?? .failure(EventStoreError(code: .storageFailure, message: "the message was not stored")))
        }
    }
}
