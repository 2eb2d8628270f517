#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import EventStore
import Foundation
import Logging
import Metrics
import Projections
import ServiceLifecycle
import SharedTypes
import Synchronization

/// Advances visitors' workflows: under the visitor's lock, reads the workflow stream, folds the state,
/// decides on every pending message in order and appends the result at the exact version read.
///
/// A visitor with work pending is written to the Redis set `visitorPending:{tenant:visitor}` before the
/// lock is tried, so a worker that finds the lock held can return at once: the holder takes the set's
/// members before it lets go and looks at the set once more after releasing (no lost wake-up).
public struct ConversationProcessor: Sendable {
    public struct Configuration: Sendable {
        /// The visitor lock's time to live. Default: 30 seconds.
        public var lockTTL: Duration
        /// How often a held lock is renewed; `nil` never (tests of a stale holder). Default: a third of the ttl.
        public var renewEvery: Duration?
        /// The workflow new conversations start. Default: ``WorkflowRepository/defaultWorkflowID``.
        public var defaultWorkflowID: String
        /// Names this process in conflict events.
        public var instance: String
        /// Whether to take the visitor lock. Only the benchmark turns it off, to measure what the lock
        /// costs: without it the expected-version check still fences racing writers, but they waste work.
        public var locking: Bool
        /// Whether the lock takes the keys of versions before the hash tag too (``VisitorLock/legacyKeys``).
        public var legacyLockKeys: Bool

        public init(
            lockTTL: Duration = .seconds(30), renewEvery: Duration?? = nil, defaultWorkflowID: String = WorkflowRepository.defaultWorkflowID,
            instance: String = ConversationProcessor.defaultInstance, locking: Bool = true, legacyLockKeys: Bool = false
        ) {
            self.locking = locking
            self.legacyLockKeys = legacyLockKeys
            self.lockTTL = lockTTL
            self.renewEvery = renewEvery ?? lockTTL / 3
            self.defaultWorkflowID = defaultWorkflowID
            self.instance = instance
        }
    }

    /// `host:pid` (``ProcessInstance/name``).
    public static let defaultInstance: String = ProcessInstance.name

    /// What one call did.
    public struct Outcome: Sendable, Equatable {
        /// Another worker held the visitor's lock; it will handle what is pending.
        public var busy: Bool
        public var eventsAppended: Int
        public var conflicts: Int
    }

    public let store: any EventStore
    public let lock: VisitorLock
    public let workflows: WorkflowRepository
    public let provider: any AIProvider
    public let engine: WorkflowEngine
    public let configuration: Configuration
    /// The tenants' settings (whether a visitor message reopens a resolved conversation).
    public let settings: TenantSettingsStore
    let logger: Logger
    /// Folded states of recently processed conversations, shared by copies of this processor.
    private let states = StateCache(capacity: 10_000)

    private let conflictsCounter = Counter(label: "convo.responder.conflicts")
    private let lockLostCounter = Counter(label: "convo.responder.lock_lost")
    private let busyCounter = Counter(label: "convo.responder.busy")
    private let processedCounter = Counter(label: "convo.responder.messages_processed")
    private let aiLatency = Timer(label: "convo.ai.latency")
    private let aiFailures = Counter(label: "convo.ai.failures")

    public init(
        store: any EventStore, redis: RedisClient, workflows: WorkflowRepository, provider: any AIProvider = RuleProvider(),
        engine: WorkflowEngine = WorkflowEngine(), configuration: Configuration = Configuration(), logger: Logger
    ) {
        self.store = store
        self.lock = VisitorLock(redis: redis, ttl: configuration.lockTTL, legacyKeys: configuration.legacyLockKeys)
        self.workflows = workflows
        self.provider = provider
        self.engine = engine
        self.configuration = configuration
        self.settings = TenantSettingsStore(client: workflows.client, logger: logger)
        self.logger = logger
    }

    /// Processes the conversation's pending messages, and every other conversation of the visitor that
    /// was handed to this worker meanwhile; returns at once when another worker holds the visitor's lock.
    ///
    /// - Throws: ``ResponderError`` when Redis is unavailable or the lock was lost, ``EventStoreError`` when
    ///   PostgreSQL fails. Nothing is lost either way: the messages stay pending for the next attempt.
    @discardableResult
    public func process(tenant: TenantID, visitor: VisitorUID, conversation: ConversationID) async throws -> Outcome {
        let owner = VisitorLock.Visitor(tenant: tenant, visitor: visitor)
        guard configuration.locking else {
            let unlocked = VisitorLock.Lease(visitor: owner, token: "unlocked", ttl: configuration.lockTTL)
            return try await drain(tenant: tenant, visitor: visitor, conversation: conversation, lease: unlocked, lost: LostFlag())
        }
        try await lock.markPending(owner, conversation: conversation)
        var outcome = Outcome(busy: false, eventsAppended: 0, conflicts: 0)
        while true {
            guard let lease = try await lock.acquire(owner) else {
                busyCounter.increment()
                logger.debug("visitor is busy, its lock holder takes over", metadata: ["convo.visitor": "\(visitor)"])
                outcome.busy = true
                return outcome
            }
            let lost = LostFlag()
            do {
                try await withRenewal(lease, lost: lost) {
                    // A stopping instance takes no further conversation of the visitor: they stay in the pending set.
                    while !Task.isShuttingDownGracefully, let id = try await lock.takePending(lease) {
                        do {
                            let drained = try await drain(tenant: tenant, visitor: visitor, conversation: id, lease: lease, lost: lost)
                            outcome.eventsAppended += drained.eventsAppended
                            outcome.conflicts += drained.conflicts
                        } catch {
                            // Hand it back so the next attempt (or the sweep) finds it.
                            try? await lock.markPending(owner, conversation: id)
                            throw error
                        }
                    }
                }
            } catch {
                _ = try? await lock.release(lease)
                throw error
            }
            let release = try await lock.release(lease)
            if !release.wasHeld {
                lockLostCounter.increment()
                logger.warning("visitor lock had expired before release", metadata: ["convo.visitor": "\(visitor)", "convo.lock": "\(lease.token)"])
            }
            // A worker that found the lock held while we released has left its conversation in the set. A stopping
            // instance leaves it there for the others.
            guard release.pending > 0, !Task.isShuttingDownGracefully else { return outcome }
        }
    }

    /// Runs `body` while renewing the lease every `renewEvery`; a failed renewal sets `lost`.
    private func withRenewal(_ lease: VisitorLock.Lease, lost: LostFlag, _ body: () async throws -> Void) async throws {
        guard let interval = configuration.renewEvery else { return try await body() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    if Task.isCancelled { return }
                    let renewed: Bool
                    do {
                        renewed = try await lock.renew(lease)
                    } catch {
                        logger.warning("could not renew the visitor lock", metadata: ["convo.lock": "\(lease.token)", "convo.error": "\(error)"])
                        continue
                    }
                    if !renewed {
                        lost.set()
                        lockLostCounter.increment()
                        logger.warning("visitor lock lost: another worker holds it now", metadata: ["convo.lock": "\(lease.token)"])
                        return
                    }
                }
            }
            defer { group.cancelAll() }
            try await body()
        }
    }

    /// Handles the conversation's pending messages until none is left.
    func drain(tenant: TenantID, visitor: VisitorUID, conversation: ConversationID, lease: VisitorLock.Lease, lost: LostFlag) async throws -> Outcome {
        var outcome = Outcome(busy: false, eventsAppended: 0, conflicts: 0)
        // The state and the first pending messages in one query; later rounds read only new messages.
        var (state, first) = try await readStateAndPending(tenant: tenant, conversation: conversation)
        var definition: WorkflowDefinition?
        while true {
            // The decision in flight is finished; a stopping instance starts no new one. What is left stays
            // unconsumed, and the conversation goes back to the visitor's pending set.
            if Task.isShuttingDownGracefully {
                try? await lock.markPending(VisitorLock.Visitor(tenant: tenant, visitor: visitor), conversation: conversation)
                return outcome
            }
            let (pending, messagesVersion, owner) =
                if let read = first.take() { read } else { try await readPending(tenant: tenant, conversation: conversation, after: state.messagesConsumed) }
            guard owner == nil || owner == visitor else {
                logger.error("conversation belongs to another visitor; not processed", metadata: ["convo.conversation": "\(conversation)"])
                return outcome
            }
            guard !pending.isEmpty || state.status == .running else { return outcome }
            if definition == nil {
                definition = try await workflow(for: state, tenant: tenant)
            }
            guard let definition else {
                throw ResponderError(
                    code: .workflowNotFound, message: "conversation \(conversation): its workflow \(state.workflowId ?? configuration.defaultWorkflowID) is not published")
            }
            // Only a resolved conversation's decision depends on the tenant's settings.
            let tenantSettings = state.status == .resolved ? try await settings.settings(for: tenant) : TenantSettings()
            var decision = engine.decide(state: state, definition: definition, pending: pending, settings: tenantSettings)
            if case .askAI(let request) = decision {
                let aiOutcome: AIOutcome
                let started = ContinuousClock.now
                do {
                    aiOutcome = .answered(try await provider.reply(to: request))
                    aiLatency.record(duration: ContinuousClock.now - started)
                } catch {
                    aiFailures.increment()
                    logger.warning("AI provider failed", metadata: ["convo.provider": "\(provider.name)", "convo.error": "\(error)"])
                    aiOutcome = .failed(provider: provider.name, reason: (error as? ResponderError)?.message ?? "\(type(of: error))")
                }
                decision = engine.decide(state: state, definition: definition, pending: pending, aiOutcome: aiOutcome, settings: tenantSettings)
            }
            guard case .append(let events) = decision, !events.isEmpty else { return outcome }
            guard !lost.isSet else {
                throw ResponderError(code: .lockLost, message: "the visitor lock was lost; stopped before appending")
            }
            let cause = pending.first
            let metadata = EventMetadata(
                correlationId: cause?.eventId, causationId: cause?.eventId, actorId: SystemActor.actorID,
                extra: [
                    "lockToken": .string(lease.token), "visitorUid": .string(visitor.rawValue), "messagesVersion": .number(Double(messagesVersion)),
                    "instance": .string(configuration.instance),
                ])
            let newEvents = try events.map { event in
                // Sealed with the key the messages were read with: never a new one made after the visitor was forgotten.
                try NewEvent(type: event.eventType, encoding: event, metadata: metadata, subject: PersonalDataSubject(visitor: visitor, mayCreateKey: false))
            }
            do {
                let result = try await store.append(
                    newEvents, to: conversation.workflowStream, tenant: tenant, expectedVersion: .exact(state.version))
                for (event, recorded) in zip(events, result.events) {
                    state.apply(event, version: recorded.streamVersion, at: recorded.recordedAt)
                }
                states.put(Self.stateKey(tenant, conversation), state)
                outcome.eventsAppended += events.count
                processedCounter.increment(by: pending.filter { $0.streamVersion <= state.messagesConsumed }.count)
                // Everything read is decided and the workflow waits: done, without reading the messages stream
                // again. A message appended since was marked pending by its own trigger (ingest, the
                // subscription, the sweep all go through `process`, which marks before it tries the lock), so
                // this worker's `takePending` or its release's count brings it back, or its trigger takes the lock.
                if state.status != .running && state.messagesConsumed >= messagesVersion { return outcome }
            } catch let error as EventStoreError where error.code == .subjectErased {
                // The visitor was forgotten while this decision was taken on what they said: it is thrown away,
                // and the erasure's own event marks their messages consumed.
                logger.info("visitor forgotten during processing: decision discarded", metadata: ["convo.stream": "\(conversation.workflowStream)"])
                return outcome
            } catch let error as EventStoreError where error.code == .wrongExpectedVersion {
                // Another writer advanced this visitor: throw the stale decision away, record, re-read.
                outcome.conflicts += 1
                conflictsCounter.increment()
                logger.warning(
                    "workflow stream moved on under the lock: decision discarded",
                    metadata: ["convo.stream": "\(conversation.workflowStream)", "convo.expected": "\(state.version)", "convo.actual": "\(error.actual ?? -1)"])
                try await recordConflict(
                    tenant: tenant, visitor: visitor, conversation: conversation, expected: state.version, actual: error.actual ?? -1,
                    lease: lease)
                state = try await readState(tenant: tenant, conversation: conversation)
            }
        }
    }

    private func recordConflict(
        tenant: TenantID, visitor: VisitorUID, conversation: ConversationID, expected: Int64, actual: Int64, lease: VisitorLock.Lease
    ) async throws {
        let conflict = ProcessingConflictDetected(
            conversationId: conversation, visitorUid: visitor, stream: conversation.workflowStream.description, expectedVersion: expected,
            actualVersion: actual, lockToken: lease.token, instance: configuration.instance)
        let event = try NewEvent(
            type: ProcessingConflictDetected.eventType, encoding: conflict,
            metadata: EventMetadata(actorId: SystemActor.actorID, extra: ["lockToken": .string(lease.token)]))
        try await store.append([event], to: Self.auditStream(tenant), tenant: tenant, expectedVersion: .any)
    }

    /// The tenant's audit stream: `audit-{tenant}`.
    public static func auditStream(_ tenant: TenantID) -> StreamName {
        try! StreamName(category: "audit", id: tenant.rawValue)
    }

    /// How many of the conversation's messages this process knows its workflow consumed (from the states it
    /// folded; `0` when it knows none): a message at or below it needs no processing. Never more than the
    /// truth, since states only move forward; possibly less (another instance went on since).
    public func consumedMessages(tenant: TenantID, conversation: ConversationID) -> Int64 {
        states.get(Self.stateKey(tenant, conversation))?.messagesConsumed ?? 0
    }

    /// Where a conversation's folded state is kept in ``states``.
    static func stateKey(_ tenant: TenantID, _ conversation: ConversationID) -> String {
        "\(tenant.rawValue)/\(conversation.rawValue)"
    }

    /// The state kept for `key` (a new one when none is) with `read` folded in: the events of its `workflow-`
    /// stream after the kept state's version. The result is kept.
    private func fold(_ key: String, from kept: WorkflowState, _ read: [RecordedEvent]) throws -> WorkflowState {
        var state = kept
        for event in read { try state.apply(event) }
        states.put(key, state)
        return state
    }

    /// The workflow state, folded from the whole `workflow-` stream.
    ///
    /// Events never change, so a state folded earlier is a valid start: only the events after it are read.
    public func readState(tenant: TenantID, conversation: ConversationID) async throws -> WorkflowState {
        let key = Self.stateKey(tenant, conversation)
        let kept = states.get(key) ?? WorkflowState()
        return try fold(key, from: kept, try await store.readStreamToEnd(conversation.workflowStream, tenant: tenant, fromVersion: kept.version + 1))
    }

    /// ``readState(tenant:conversation:)`` and ``readPending(tenant:conversation:after:)`` in one round trip:
    /// the messages are read from what the state known before consumed (reading the state may move that on,
    /// and what it consumed is left out).
    func readStateAndPending(tenant: TenantID, conversation: ConversationID) async throws -> (WorkflowState, ([PendingMessage], Int64, VisitorUID?)?) {
        let key = Self.stateKey(tenant, conversation)
        let kept = states.get(key) ?? WorkflowState()
        let read = try await store.readStreamsToEnd(
            [(conversation.workflowStream, kept.version + 1), (conversation.messagesStream, kept.messagesConsumed + 1)], tenant: tenant)
        let state = try fold(key, from: kept, read[0])
        return (state, try Self.pending(in: read[1], after: state.messagesConsumed))
    }

    /// The visitor messages after `version`, the stream's version, and the conversation's visitor.
    func readPending(tenant: TenantID, conversation: ConversationID, after version: Int64) async throws -> ([PendingMessage], Int64, VisitorUID?) {
        try Self.pending(in: try await store.readStreamToEnd(conversation.messagesStream, tenant: tenant, fromVersion: version + 1), after: version)
    }

    /// The visitor messages of `events` (a messages stream's, in order) after `version`, the stream's version
    /// as read, and the conversation's visitor.
    static func pending(in events: [RecordedEvent], after version: Int64) throws -> ([PendingMessage], Int64, VisitorUID?) {
        var pending: [PendingMessage] = []
        var owner: VisitorUID?
        var last = version
        for event in events where event.streamVersion > version {
            last = event.streamVersion
            switch event.type {
            case VisitorMessageReceived.eventType:
                let message = try event.decode(VisitorMessageReceived.self)
                if owner == nil { owner = message.visitorUid }
                pending.append(PendingMessage(messageId: message.messageId, text: message.text, streamVersion: event.streamVersion, eventId: event.eventId))
            case ConversationStarted.eventType:
                owner = try event.decode(ConversationStarted.self).visitorUid
            default:
                continue
            }
        }
        return (pending, last, owner)
    }

    private func workflow(for state: WorkflowState, tenant: TenantID) async throws -> WorkflowDefinition? {
        if let id = state.workflowId, let version = state.workflowVersion {
            guard let definition = try await workflows.definition(id, version: version, tenant: tenant) else {
                logger.error("the conversation's workflow version is not published", metadata: ["convo.workflow": "\(id) v\(version)"])
                return nil
            }
            return definition
        }
        return try await workflows.forNewConversation(configuration.defaultWorkflowID, tenant: tenant)
    }
}


/// Set once the visitor lock is known lost; checked before every append.
final class LostFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

/// A bounded map of folded workflow states. When full, the oldest half is dropped.
final class StateCache: Sendable {
    private struct Entries {
        var states: [String: (state: WorkflowState, stamp: UInt64)] = [:]
        var clock: UInt64 = 0
    }

    private let entries = Mutex(Entries())
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func get(_ key: String) -> WorkflowState? { entries.withLock { $0.states[key]?.state } }

    func put(_ key: String, _ state: WorkflowState) {
        entries.withLock { entries in
            if let existing = entries.states[key], existing.state.version > state.version { return }
            entries.clock &+= 1
            entries.states[key] = (state, entries.clock)
            if entries.states.count > capacity {
                let cutoff = entries.states.values.map(\.stamp).sorted()[entries.states.count / 2]
                entries.states = entries.states.filter { $0.value.stamp >= cutoff }
            }
        }
    }
}
