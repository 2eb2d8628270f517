import AsyncHTTPClient
import EventStore
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import PostgresNIO
import SharedTypes
import Synchronization

/// Sends one endpoint's messages, in the process that holds the endpoint's lock, on that lock's session.
///
/// Three loops share one state. *Intake* follows the tenant's events from the endpoint's checkpoint and
/// turns the ones it wants into deliveries, moving the checkpoint in the same statement (conditional on the
/// checkpoint it started from, so a sender that lost its place writes nothing). *Dispatch* sends the head
/// of each conversation's queue, many conversations at once but one message of a conversation at a time, so
/// order within a conversation holds and a failing conversation holds back only itself. *Record* writes the
/// attempts in batches and picks up redeliveries people asked for. Intake stops taking events while the
/// endpoint owes ``WebhookDispatcher/Configuration/window`` messages: the event store is the backlog.
///
/// A message is retried on the schedule; when the schedule runs out the endpoint is disabled, saying which
/// delivery failed and how, and its sender stops. Every write is on the lock's session: when it ends, this
/// sender's writes fail and another process's sender takes over from what was stored (at least once).
final class WebhookSender: Sendable {
    struct Owed: Sendable {
        let deliveryId: Int64
        let message: WebhookMessage
        let origin: String
        var failures = 0
        var firstAttempt: ContinuousClock.Instant?
    }

    struct Outcome: Sendable {
        var attempts: [WebhookDelivery.Attempt] = []
        var deliveredAt: Date?
    }

    struct State: Sendable {
        /// Owed messages by ordering key (the conversation, or the redelivery): the head is the one to send.
        var queues: [String: CircularBuffer<Owed>] = [:]
        /// Keys whose head may be sent now.
        var ready = CircularBuffer<String>()
        /// Keys whose head failed, and when to try again.
        var delayed: [String: ContinuousClock.Instant] = [:]
        var owed = 0
        var inFlight = 0
        var outcomes: [Int64: Outcome] = [:]
        /// Set when a message ran out of retries: why the endpoint is disabled.
        var exhausted: String?
        var stopRequested = false

        mutating func add(_ owed: Owed, key: String) {
            if queues[key, default: []].isEmpty { ready.append(key) }
            queues[key, default: []].append(owed)
            self.owed += 1
        }
    }

    let endpointRef: String
    private let endpoint: Mutex<WebhookEndpoint>
    private let state = Mutex(State())
    /// Wakes dispatch (a message added, an attempt finished, a stop) and intake (room in the window).
    private let wake = WakeUpSignal()
    /// Wakes the recorder (an attempt finished).
    private let recorded = WakeUpSignal()
    let connection: PostgresConnection
    let store: PostgresEventStore
    let http: HTTPClient
    let configuration: WebhookDispatcher.Configuration
    let logger: Logger
    private let metrics: Metrics

    struct Metrics: Sendable {
        let delivered: Counter
        let failed: Counter
        let lag: Timer
        let latency: Timer
        let owed: Gauge
        let disabled: Counter

        init(_ endpoint: String) {
            let dimensions = [("endpoint", endpoint)]
            delivered = Counter(label: "convo.webhook.attempts", dimensions: dimensions + [("outcome", "delivered")])
            failed = Counter(label: "convo.webhook.attempts", dimensions: dimensions + [("outcome", "failed")])
            lag = Timer(label: "convo.webhook.lag", dimensions: dimensions, preferredDisplayUnit: .seconds)
            latency = Timer(label: "convo.webhook.attempt.latency", dimensions: dimensions, preferredDisplayUnit: .seconds)
            owed = Gauge(label: "convo.webhook.owed", dimensions: dimensions)
            disabled = Counter(label: "convo.webhook.disabled", dimensions: dimensions)
        }
    }

    init(
        endpoint: WebhookEndpoint, connection: PostgresConnection, store: PostgresEventStore, http: HTTPClient,
        configuration: WebhookDispatcher.Configuration, logger: Logger
    ) {
        self.endpointRef = "\(endpoint.tenant.rawValue)/\(endpoint.id)"
        self.endpoint = Mutex(endpoint)
        self.connection = connection
        self.store = store
        self.http = http
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "convo.webhook.endpoint"] = "\(endpointRef)"
        self.logger = logger
        self.metrics = Metrics(endpointRef)
    }

    var configVersion: Int64 { endpoint.withLock { $0.configVersion } }
    var owedCount: Int { state.withLock { $0.owed } }

    /// A changed configuration (url, event types, secrets) applies from the next message.
    func update(_ endpoint: WebhookEndpoint) {
        self.endpoint.withLock { $0 = endpoint }
    }

    /// Ends ``run()`` soon (the endpoint was disabled or deleted elsewhere, or the process shuts down): no
    /// new attempt starts; those in flight finish (each within the attempt timeout) and are recorded, so the
    /// next sender does not send again what the receiver has already answered.
    func stop() {
        state.withLock { $0.stopRequested = true }
        wake.signal()
    }

    private enum Part: Sendable { case intake, dispatch, record }

    /// Sends until stopped, cancelled, out of retries (the endpoint is then disabled) or its place lost.
    /// Ending any way but cancelled or failed, it lets the attempts in flight finish and records them first.
    ///
    /// - Throws: when the session's queries fail.
    func run() async throws {
        try await loadOwed()
        do {
            try await withThrowingTaskGroup(of: Part.self) { group in
                group.addTask {
                    try await self.intake()
                    return .intake
                }
                group.addTask {
                    await self.dispatch()
                    return .dispatch
                }
                group.addTask {
                    try await self.record()
                    return .record
                }
                // Dispatch ends once stopped (or out of retries) and its attempts are done; intake ending
                // (its place lost) stops it.
                while let part = try await group.next() {
                    guard part == .intake else { break }
                    stop()
                }
                group.cancelAll()
                while let _ = try? await group.next() {}
            }
        } catch {
            // Record what was sent before the failure, if the session still can: fewer messages sent twice.
            if !Task.isCancelled { _ = try? await flushOutcomes() }
            throw error
        }
        try await flushOutcomes()
        let reason = state.withLock { $0.exhausted }
        if let reason { try await disable(reason: reason) }
    }

    // MARK: Intake

    private func loadOwed() async throws {
        let (tenant, id) = endpoint.withLock { ($0.tenant, $0.id) }
        let rows = try await connection.query(
            """
            SELECT id, event_position, origin FROM webhook_deliveries
            WHERE tenant_id = \(tenant.rawValue) AND endpoint_id = \(id) AND status = 'pending'
            ORDER BY event_position, id
            """, logger: logger)
        var owed: [(Int64, Int64, String)] = []
        for try await row in rows.decode((Int64, Int64, String).self) { owed.append(row) }
        try await enqueue(owed, tenant: tenant)
    }

    /// Adds stored deliveries (id, position, origin), in the order given, reading their events back.
    private func enqueue(_ owed: [(Int64, Int64, String)], tenant: TenantID) async throws {
        guard !owed.isEmpty else { return }
        var messages: [Int64: WebhookMessage] = [:]
        let positions = Array(Set(owed.map(\.1))).sorted()
        for start in stride(from: 0, to: positions.count, by: 1000) {
            let chunk = Array(positions[start..<Swift.min(start + 1000, positions.count)])
            for event in try await store.readEvents(at: chunk, tenant: tenant) {
                if let message = WebhookMessage(event) { messages[event.globalPosition] = message }
            }
        }
        state.withLock { state in
            for (deliveryId, position, origin) in owed {
                guard let message = messages[position] else { continue }
                let key = origin == "redelivery" ? "redelivery:\(deliveryId)" : message.conversationId
                state.add(Owed(deliveryId: deliveryId, message: message, origin: origin), key: key)
            }
        }
        metrics.owed.record(owedCount)
        wake.signal()
    }

    private func intake() async throws {
        let start = endpoint.withLock { $0 }
        var stored = start.checkpoint
        var events = store.subscribe(.tenant(start.tenant), after: stored).makeAsyncIterator()
        while let batch = try await events.nextBatch() {
            try await waitForRoom()
            let current = endpoint.withLock { $0 }
            let wanted = Set(current.eventTypes)
            // The type first: only a wanted event's payload is decoded and its body encoded.
            let messages = Array(batch.lazy.filter { WebhookEventType.of(storedType: $0.type).map(wanted.contains) ?? false }.compactMap { WebhookMessage($0) })
            let next = batch[batch.count - 1].globalPosition
            let rows = try await connection.query(
                """
                WITH moved AS (
                    UPDATE webhook_endpoints SET checkpoint = \(next)
                    WHERE tenant_id = \(current.tenant.rawValue) AND id = \(current.id) AND checkpoint = \(stored) AND lock_key = \(current.lockKey)
                    RETURNING 1
                ), made AS (
                    INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_position, event_id, event_type, conversation_id, origin, status)
                    SELECT \(current.tenant.rawValue), \(current.id), m.position, m.event_id, m.event_type, m.conversation_id, 'event', 'pending'
                    FROM unnest(\(messages.map(\.position))::bigint[], \(messages.map(\.eventId))::uuid[],
                                \(messages.map(\.type.rawValue))::text[], \(messages.map(\.conversationId))::text[])
                         AS m(position, event_id, event_type, conversation_id)
                    WHERE EXISTS (SELECT 1 FROM moved)
                    RETURNING id, event_position
                )
                SELECT (SELECT count(*) FROM moved)::int, made.id, made.event_position FROM (SELECT 1) one LEFT JOIN made ON true
                """, logger: logger)
            var moved = false
            var ids: [Int64: Int64] = [:]
            for try await (count, id, position) in rows.decode((Int, Int64?, Int64?).self) {
                moved = count == 1
                if let id, let position { ids[position] = id }
            }
            guard moved else {
                logger.info("webhook checkpoint moved under the sender (the endpoint was replaced or deleted); stopping")
                return
            }
            stored = next
            guard !messages.isEmpty else { continue }
            state.withLock { state in
                for message in messages {
                    guard let id = ids[message.position] else { continue }
                    state.add(Owed(deliveryId: id, message: message, origin: "event"), key: message.conversationId)
                }
            }
            metrics.owed.record(owedCount)
            wake.signal()
        }
    }

    private func waitForRoom() async throws {
        while true {
            let generation = wake.generation
            let (owed, stopped) = state.withLock { ($0.owed, $0.stopRequested || $0.exhausted != nil) }
            if owed < configuration.window || stopped { return }
            await wake.wait(after: generation, timeout: .seconds(1))
            try Task.checkCancellation()
        }
    }

    // MARK: Dispatch

    private func dispatch() async {
        let clock = ContinuousClock()
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                let generation = wake.generation
                let now = clock.now
                let (batch, nextDue, stop) = state.withLock { state -> ([(String, Owed)], ContinuousClock.Instant?, Bool) in
                    if state.stopRequested || state.exhausted != nil { return ([], nil, true) }
                    for (key, due) in state.delayed where due <= now {
                        state.delayed[key] = nil
                        state.ready.append(key)
                    }
                    var batch: [(String, Owed)] = []
                    while state.inFlight < configuration.concurrencyPerEndpoint, let key = state.ready.popFirst() {
                        guard let head = state.queues[key]?.first else { continue }
                        batch.append((key, head))
                        state.inFlight += 1
                    }
                    return (batch, state.delayed.values.min(), false)
                }
                if stop { break }
                for (key, owed) in batch { group.addTask { await self.attempt(owed, key: key) } }
                let wait = nextDue.map { Swift.max(.milliseconds(1), Swift.min($0 - now, .seconds(1))) } ?? .seconds(1)
                await wake.wait(after: generation, timeout: wait)
            }
            // Stopped: the attempts in flight finish (cancelled only with this task, the session lost).
        }
    }

    private func attempt(_ owed: Owed, key: String) async {
        let clock = ContinuousClock()
        let current = endpoint.withLock { $0 }
        let sentAt = Date()
        let timestamp = Int64(sentAt.timeIntervalSince1970)
        var request = HTTPClientRequest(url: current.url)
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/json")
        request.headers.add(name: "user-agent", value: "convo-webhooks")
        request.headers.add(name: "webhook-id", value: owed.message.id)
        request.headers.add(name: "webhook-timestamp", value: String(timestamp))
        request.headers.add(
            name: "webhook-signature", value: current.signing.signatureHeader(id: owed.message.id, timestamp: timestamp, body: owed.message.body, now: sentAt))
        request.body = .bytes(ByteBuffer(data: owed.message.body))
        let started = clock.now
        var statusCode: Int?
        var failure: String?
        do {
            let response = try await http.execute(request, timeout: .nanoseconds(Int64(configuration.attemptTimeout.nanoseconds)))
            statusCode = Int(response.status.code)
            // Read (and drop) what the receiver says, up to a limit, so the connection can be kept.
            _ = try? await response.body.collect(upTo: 64 * 1024)
            if !(200..<300).contains(response.status.code) { failure = "HTTP \(response.status.code)" }
        } catch {
            if Task.isCancelled {
                state.withLock { $0.inFlight -= 1 }
                return
            }
            failure = Self.describe(error)
        }
        let elapsed = clock.now - started
        let latencyMs = Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
        metrics.latency.recordNanoseconds(Int64(elapsed.nanoseconds))
        let attempt = WebhookDelivery.Attempt(at: sentAt, statusCode: statusCode, latencyMs: latencyMs, error: failure, instance: configuration.instance)
        let now = clock.now
        let schedule = configuration.retrySchedule
        state.withLock { state in
            state.inFlight -= 1
            state.outcomes[owed.deliveryId, default: Outcome()].attempts.append(attempt)
            guard var queue = state.queues[key], var head = queue.first, head.deliveryId == owed.deliveryId else { return }
            if failure == nil {
                state.outcomes[owed.deliveryId, default: Outcome()].deliveredAt = Date()
                queue.removeFirst()
                state.owed -= 1
                if queue.isEmpty { state.queues[key] = nil } else { state.queues[key] = queue; state.ready.append(key) }
                return
            }
            head.failures += 1
            head.firstAttempt = head.firstAttempt ?? started
            queue[queue.startIndex] = head
            state.queues[key] = queue
            if head.failures > schedule.count {
                let over = now - (head.firstAttempt ?? started)
                state.exhausted =
                    "delivery \(owed.deliveryId) (\(owed.message.type.rawValue), conversation \(owed.message.conversationId)) failed "
                    + "\(head.failures) attempts over \(Self.format(over)); last: \(failure ?? "?")"
            } else {
                let delay = schedule[head.failures - 1]
                // Up to a tenth more, so many endpoints that failed together do not come back together.
                let jitter = Duration.nanoseconds(Int64.random(in: 0...Swift.max(0, Int64(delay.nanoseconds / 10))))
                state.delayed[key] = now + delay + jitter
            }
        }
        if failure == nil {
            metrics.delivered.increment()
            if owed.origin == "event" { metrics.lag.recordNanoseconds(Int64(Swift.max(0, Date().timeIntervalSince(owed.message.recordedAt)) * 1e9)) }
        } else {
            metrics.failed.increment()
            logger.debug("webhook attempt failed", metadata: ["convo.webhook.delivery": "\(owed.deliveryId)", "convo.error": "\(failure ?? "")"])
        }
        metrics.owed.record(owedCount)
        recorded.signal()
        wake.signal()
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? HTTPClientError { return "connection: \(error)" }
        let text = String(describing: error)
        return "connection: " + String(text.prefix(200))
    }

    static func format(_ duration: Duration) -> String {
        let seconds = duration.components.seconds
        if seconds >= 3600 { return "\(seconds / 3600) h \(seconds % 3600 / 60) min" }
        if seconds >= 60 { return "\(seconds / 60) min \(seconds % 60) s" }
        return "\(seconds) s"
    }

    // MARK: Record

    private func record() async throws {
        let clock = ContinuousClock()
        var lastClaim = clock.now
        while !Task.isCancelled {
            let generation = recorded.generation
            let wrote = try await flushOutcomes()
            if clock.now - lastClaim >= configuration.scanInterval {
                try await claimRedeliveries()
                lastClaim = clock.now
            }
            if !wrote { await recorded.wait(after: generation, timeout: configuration.scanInterval) }
        }
    }

    /// Writes the attempts made since the last call, in one statement.
    ///
    /// - Returns: whether there were any.
    @discardableResult
    private func flushOutcomes() async throws -> Bool {
        let outcomes = state.withLock { state in
            defer { state.outcomes.removeAll(keepingCapacity: true) }
            return state.outcomes
        }
        guard !outcomes.isEmpty else { return false }
        let ids = Array(outcomes.keys)
        let attempts = ids.map { id in String(decoding: (try? JSONCoding.encoder.encode(outcomes[id]!.attempts)) ?? Data("[]".utf8), as: UTF8.self) }
        let delivered = ids.map { outcomes[$0]!.deliveredAt.map { Timestamp.string(from: $0) } ?? "" }
        do {
            try await connection.query(
                """
                UPDATE webhook_deliveries d SET
                    attempts = d.attempts || u.attempts::jsonb,
                    status = CASE WHEN u.delivered = '' THEN d.status ELSE 'delivered' END,
                    delivered_at = coalesce(nullif(u.delivered, '')::timestamptz, d.delivered_at)
                FROM unnest(\(ids)::bigint[], \(attempts)::text[], \(delivered)::text[]) AS u(id, attempts, delivered)
                WHERE d.id = u.id
                """, logger: logger)
        } catch {
            // Put them back: a later flush (or the next sender, which sends again what is not marked) records them.
            state.withLock { state in
                for (id, outcome) in outcomes {
                    state.outcomes[id, default: Outcome()].attempts.insert(contentsOf: outcome.attempts, at: 0)
                    if let at = outcome.deliveredAt { state.outcomes[id]?.deliveredAt = at }
                }
            }
            throw error
        }
        return true
    }

    private func claimRedeliveries() async throws {
        let (tenant, id) = endpoint.withLock { ($0.tenant, $0.id) }
        let rows = try await connection.query(
            """
            UPDATE webhook_deliveries SET status = 'pending'
            WHERE tenant_id = \(tenant.rawValue) AND endpoint_id = \(id) AND status = 'requested'
            RETURNING id, event_position, origin
            """, logger: logger)
        var claimed: [(Int64, Int64, String)] = []
        for try await row in rows.decode((Int64, Int64, String).self) { claimed.append(row) }
        try await enqueue(claimed.sorted { $0.0 < $1.0 }, tenant: tenant)
    }

    private func disable(reason: String) async throws {
        let current = endpoint.withLock { $0 }
        logger.warning("webhook endpoint disabled: a message ran out of retries", metadata: ["convo.webhook.reason": "\(reason)"])
        metrics.disabled.increment()
        try await connection.query(
            """
            UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = \(reason), updated_at = now()
            WHERE tenant_id = \(current.tenant.rawValue) AND id = \(current.id) AND config_version = \(current.configVersion)
            """, logger: logger)
    }
}
