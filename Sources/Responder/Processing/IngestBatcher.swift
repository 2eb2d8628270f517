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
        /// The most messages waiting for a batch: past it a message is refused at once
        /// (``ResponderError/Code/overloaded``) instead of waiting for a deadline it would miss. Default: 10,000.
        public var maxQueued: Int

        public init(maxBatch: Int = 512, writers: Int = 2, maxQueued: Int = 10_000) {
            self.maxBatch = maxBatch
            self.writers = writers
            self.maxQueued = max(1, maxQueued)
        }
    }

    struct Pending: Sendable {
        let message: IncomingMessage
        let ticket: IngestTicket
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
    private let shed = Counter(label: "convo.ingest.shed")
    private let givenUp = Counter(label: "convo.ingest.cancelled")
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
    /// Cancelling the caller (a request past its deadline) answers at once: a message still queued is taken
    /// out and never written (``ResponderError/Code/notStored``); one whose batch is being written may or may
    /// not be stored (``EventStoreError/Code/outcomeUnknown``: retry with the same message id).
    ///
    /// - Throws: as ``MessageIngestor/ingest(_:)``; ``ResponderError/Code/overloaded`` when the queue is full;
    ///   ``EventStoreError`` with ``EventStoreError/Code/unavailable`` once the batcher has stopped.
    public func ingest(_ message: IncomingMessage) async throws -> IngestResult {
        try MessageIngestor.validate(message)
        let ticket = IngestTicket()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                guard ticket.install(continuation) else { return }
                enum Admission { case queued, full, stopped }
                let admission = queue.withLock { queue -> Admission in
                    if queue.stopped { return .stopped }
                    if queue.items.count >= configuration.maxQueued { return .full }
                    queue.items.append(Pending(message: message, ticket: ticket))
                    return .queued
                }
                switch admission {
                case .queued:
                    wakeContinuation.yield()
                case .full:
                    shed.increment()
                    ticket.answer(.failure(ResponderError(code: .overloaded, message: "too many messages are waiting to be stored; retry shortly")))
                case .stopped:
                    ticket.answer(.failure(EventStoreError(code: .unavailable, message: "the server is shutting down; retry elsewhere")))
                }
            }
        } onCancel: {
            if ticket.cancel() { givenUp.increment() }
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
        for pending in left { pending.ticket.answer(.failure(EventStoreError(code: .unavailable, message: "the server stopped; retry"))) }
    }

    private func write() async {
        var wakeUps = wake.makeAsyncIterator()
        while true {
            let taken = queue.withLock { queue -> [Pending] in
                let count = min(queue.items.count, configuration.maxBatch)
                defer { queue.items.removeFirst(count) }
                return Array(queue.items.prefix(count))
            }
            // A message whose request gave up while it waited is not written.
            let batch = taken.filter { $0.ticket.take() }
            if batch.isEmpty && !taken.isEmpty { continue }
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
            // The visitors' data keys not in memory are read beside the conversations' first events (a new
            // visitor, always in a new conversation, has both read), not after them by the append.
            let keysToRead = store.vault.keysToRead(for: batch.map { ($0.message.tenant, $0.message.visitorUid) })
            if !unknown.isEmpty {
                async let keysRead: Void = store.vault.readKeys(keysToRead)
                let firsts = try await store.readFirstEvents(unknown.map { ($0.tenant, $0.stream) })
                for (key, event) in firsts where event.type == ConversationStarted.eventType {
                    known[key] = try event.decode(ConversationStarted.self).visitorUid
                }
                await keysRead
            } else {
                await store.vault.readKeys(keysToRead)
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
            // Only now is anything of the messages sent: a request that gave up before this (its conversation's
            // owner being looked up, PostgreSQL away) was answered "not stored", and its message is left out.
            let wanted = placed.map { batch[$0.index].ticket.startWriting() }
            if wanted.contains(false) {
                requests = zip(requests, wanted).filter(\.1).map(\.0)
                placed = zip(placed, wanted).filter(\.1).map(\.0)
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
        } catch where Self.isOneMessagesFault(error) {
            // The batch failed for something one of its messages holds (a value PostgreSQL refused): nothing
            // of it was written. Each message is stored alone, so it fails only for its own reason.
            logger.notice("a batch failed; storing its messages one by one", metadata: ["convo.error": "\(error)", "convo.batch": "\(batch.count)"])
            alone = batch.indices.filter { outcomes[$0] == nil }
        } catch {
            // PostgreSQL unavailable, slow or failing, or the outcome unknown: each message would fail the same
            // way, and storing them one by one would only multiply the load on a database already in trouble.
            for index in batch.indices where outcomes[index] == nil { outcomes[index] = .failure(error) }
            alone = []
        }
        for index in alone where batch[index].ticket.startWriting() {
            do {
                outcomes[index] = .success(try await ingestor.ingest(batch[index].message))
            } catch {
                outcomes[index] = .failure(error)
            }
        }
        for (pending, outcome) in zip(batch, outcomes) {
            pending.ticket.answer(outcome ?? .failure(EventStoreError(code: .storageFailure, message: "the message was not stored")))
        }
    }
}

extension IngestBatcher {
    /// Whether a batch's failure may be one message's doing: PostgreSQL refused a value it was given
    /// (``EventStoreError/Code/invalidArgument``), or a message's event could not be encoded. Only then are
    /// its messages tried one by one.
    static func isOneMessagesFault(_ error: any Error) -> Bool {
        if error is EncodingError { return true }
        return (error as? EventStoreError)?.code == .invalidArgument
    }
}

/// One message's wait for its batch: answered exactly once, by its batch, by a refusal, or by its caller
/// giving up (then "not stored" until its batch is sent, "outcome unknown" once it is being written).
final class IngestTicket: Sendable {
    private enum State {
        case new
        case queued(CheckedContinuation<IngestResult, any Error>)
        /// In a writer's batch, nothing of it sent yet.
        case taken(CheckedContinuation<IngestResult, any Error>)
        case writing(CheckedContinuation<IngestResult, any Error>)
        case cancelledEarly
        case answered
    }

    private let state = Mutex(State.new)

    /// Keeps the caller's continuation; `false` (and the continuation resumed) when the caller gave up first.
    func install(_ continuation: CheckedContinuation<IngestResult, any Error>) -> Bool {
        let early = state.withLock { state -> Bool in
            if case .cancelledEarly = state {
                state = .answered
                return true
            }
            state = .queued(continuation)
            return false
        }
        if early { continuation.resume(throwing: Self.notStored) }
        return !early
    }

    /// A writer takes the message into its batch; `false` when its caller has already given up.
    func take() -> Bool {
        state.withLock { state in
            guard case .queued(let continuation) = state else { return false }
            state = .taken(continuation)
            return true
        }
    }

    /// The message is about to be sent to PostgreSQL (again, when its batch's failure sends it alone); `false`
    /// when its caller has already given up (it was answered "not stored": it must not be sent).
    func startWriting() -> Bool {
        state.withLock { state in
            switch state {
            case .taken(let continuation):
                state = .writing(continuation)
                return true
            case .writing:
                return true
            case .new, .queued, .cancelledEarly, .answered:
                return false
            }
        }
    }

    /// Answers the caller, unless it was answered already.
    func answer(_ result: Result<IngestResult, any Error>) {
        let continuation = state.withLock { state -> CheckedContinuation<IngestResult, any Error>? in
            switch state {
            case .queued(let continuation), .taken(let continuation), .writing(let continuation):
                state = .answered
                return continuation
            case .new, .cancelledEarly, .answered:
                return nil
            }
        }
        continuation?.resume(with: result)
    }

    /// The caller gave up: answered now, as not stored (queued) or outcome unknown (being written).
    /// - Returns: whether this answered the caller.
    @discardableResult
    func cancel() -> Bool {
        let (continuation, error) = state.withLock { state -> (CheckedContinuation<IngestResult, any Error>?, (any Error)?) in
            switch state {
            case .new:
                state = .cancelledEarly
                return (nil, nil)
            case .queued(let continuation), .taken(let continuation):
                state = .answered
                return (continuation, Self.notStored)
            case .writing(let continuation):
                state = .answered
                return (
                    continuation,
                    EventStoreError(
                        code: .outcomeUnknown,
                        message: "the message's batch was being written when the request gave up: it may be stored; retry with the same messageId")
                )
            case .cancelledEarly, .answered:
                return (nil, nil)
            }
        }
        guard let continuation, let error else { return false }
        continuation.resume(throwing: error)
        return true
    }

    static let notStored = ResponderError(code: .notStored, message: "the message was given up before it was written: not stored")
}
