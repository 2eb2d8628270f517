import AsyncHTTPClient
import EventStore
import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle
import SharedTypes
import Synchronization

/// Sends every enabled endpoint's messages: a ServiceLifecycle service of `convo serve`.
///
/// It keeps one PostgreSQL session. Every scan interval it lists the endpoints and takes the advisory lock
/// of each enabled one no sender holds (`pg_try_advisory_lock`, class `WEBH`, object the endpoint's
/// `lock_key`), starting a ``WebhookSender`` for it on this session; across all processes each endpoint has
/// at most one sender. A disabled or deleted endpoint's sender is stopped and its lock released; a changed
/// one's sender takes the new configuration. When the session ends (PostgreSQL restarted, the connection
/// cut) every sender of this process stops with it and the locks go free: the next round, here or in
/// another process, takes them again and goes on from what was stored. A graceful shutdown stops every
/// sender, lets each finish and record its attempts in flight, and then ends the session.
public final class WebhookDispatcher: Service, Sendable {
    public struct Configuration: Sendable {
        /// How often endpoints are listed (new, changed, disabled, free to take) and redeliveries picked
        /// up. Default: 1 second.
        public var scanInterval: Duration
        /// How long to wait before each retry of a failed message; when they are used up the endpoint is
        /// disabled. Default: 1 s, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (27 h 35 min after the first
        /// failure), each up to a tenth longer. A failed message holds back the later ones of its conversation
        /// (order), so the first retries come soon.
        public var retrySchedule: [Duration]
        /// How long one attempt may take, connection included. Default: 10 seconds.
        public var attemptTimeout: Duration
        /// Messages of one endpoint in flight at once, each of another conversation. Default: 16.
        public var concurrencyPerEndpoint: Int
        /// Messages one endpoint may owe before its sender stops reading events (a few hundred bytes each in
        /// memory). Past it every conversation of the endpoint waits, not only those a failure holds back: it
        /// is sized for minutes of a busy tenant's traffic. Default: 10,000.
        public var window: Int
        /// How long delivered messages are kept for the deliveries API. Default: 7 days.
        public var retention: Duration
        /// How long to wait after the session was lost. Default: 1 second.
        public var retryDelay: Duration
        /// Names this process in each attempt (host and pid).
        public var instance: String
        /// How long the dispatcher's session (and its endpoints' locks) outlives a process that stopped
        /// without closing it (frozen, a paused VM) before PostgreSQL ends it and another process's
        /// dispatcher takes the endpoints (``PostgresConnection/asLease(timeout:logger:_:)``). `nil`: until
        /// the socket closes. Default: 20 seconds.
        public var sessionLease: Duration? = .seconds(20)

        public static let defaultRetrySchedule: [Duration] = [
            .seconds(1), .seconds(5), .seconds(300), .seconds(1800), .seconds(7200), .seconds(18_000), .seconds(36_000), .seconds(36_000),
        ]

        public init(
            scanInterval: Duration = .seconds(1), retrySchedule: [Duration] = Self.defaultRetrySchedule, attemptTimeout: Duration = .seconds(10),
            concurrencyPerEndpoint: Int = 16, window: Int = 10_000, retention: Duration = .seconds(7 * 86_400), retryDelay: Duration = .seconds(1),
            instance: String
        ) {
            self.scanInterval = scanInterval
            self.retrySchedule = retrySchedule
            self.attemptTimeout = attemptTimeout
            self.concurrencyPerEndpoint = concurrencyPerEndpoint
            self.window = window
            self.retention = retention
            self.retryDelay = retryDelay
            self.instance = instance
        }
    }

    let client: PostgresClient
    let store: PostgresEventStore
    let configuration: Configuration
    let logger: Logger
    /// The current session's senders. A session of its own each time: a session given up on (its connection
    /// closed) may keep a sender suspended on a query that never completes, and must not make the next
    /// session believe that sender still runs.
    private let current = Mutex<SessionState?>(nil)
    /// Set by a graceful shutdown: start no sender, stop those running, end once they have.
    private let draining = Atomic<Bool>(false)

    public init(client: PostgresClient, store: PostgresEventStore, configuration: Configuration, logger: Logger) {
        self.client = client
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    /// The endpoints (`tenant/id`) this process sends for now.
    public var sendingFor: [String] { current.withLock { $0?.senders.withLock { Array($0.keys).sorted() } ?? [] } }

    public func run() async throws {
        var http = HTTPClient.Configuration(redirectConfiguration: .disallow, timeout: .init(connect: .seconds(5)))
        // Endpoints on one host share its connection pool; let each have its concurrency.
        http.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: Swift.max(8, configuration.concurrencyPerEndpoint * 4))
        let httpClient = HTTPClient(eventLoopGroupProvider: .singleton, configuration: http)
        // A graceful shutdown drains: every sender stops starting attempts, finishes and records those in flight
        // (each within the attempt timeout), and its lock goes free for another process. Cancelled (the
        // service group's shutdown timeout passed), what is in flight is dropped and will be sent again.
        await withGracefulShutdownHandler {
            while !Task.isCancelled && !self.draining.load(ordering: .relaxed) {
                do {
                    try await self.client.withOpenConnection { connection in
                        try await connection.asLease(timeout: self.configuration.sessionLease, role: "webhooks", logger: self.logger) {
                            try await self.session(on: connection, http: httpClient)
                        }
                    }
                } catch {
                    if Task.isCancelled || self.draining.load(ordering: .relaxed) { break }
                    self.logger.warning("webhook dispatcher lost its session; starting again", metadata: ["convo.error": "\(String(reflecting: error))"])
                    try? await Task.sleep(for: self.configuration.retryDelay)
                }
            }
        } onGracefulShutdown: {
            self.draining.store(true, ordering: .relaxed)
            self.current.withLock { $0 }?.wake.signal()
        }
        try? await httpClient.shutdown()
    }

    private struct Finished: Sendable {
        var ref: String
        var lockKey: Int32
        var error: String?
    }

    private final class SessionState: Sendable {
        let senders = Mutex<[String: WebhookSender]>([:])
        /// Senders that ended, for the scan to release their locks.
        let finished = Mutex<[Finished]>([])
        let wake = WakeUpSignal()
    }

    /// Holds this session's locks and their senders until the session fails or the task is cancelled.
    private func session(on connection: PostgresConnection, http: HTTPClient) async throws {
        let session = SessionState()
        let wake = session.wake
        current.withLock { $0 = session }
        defer { current.withLock { if $0 === session { $0 = nil } } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            var lastCleanup = ContinuousClock.now - .seconds(3600)
            while !Task.isCancelled {
                let generation = wake.generation
                for done in session.finished.withLock({ list in defer { list.removeAll() }; return list }) {
                    session.senders.withLock { $0[done.ref] = nil }
                    try await connection.query("SELECT pg_advisory_unlock(\(WebhookLocks.lockClass), \(done.lockKey))", logger: logger)
                    if let error = done.error { logger.warning("webhook sender stopped", metadata: ["convo.webhook.endpoint": "\(done.ref)", "convo.error": "\(error)"]) }
                }
                if draining.load(ordering: .relaxed) {
                    let running = session.senders.withLock { Array($0.values) }
                    if running.isEmpty { break }
                    for sender in running { sender.stop() }
                    await wake.wait(after: generation, timeout: configuration.scanInterval)
                    continue
                }
                let endpoints = try await WebhookStore.endpoints(
                    connection.query("SELECT \(unescaped: WebhookStore.columns) FROM webhook_endpoints ORDER BY tenant_id, id", logger: logger))
                var present = Set<String>()
                for endpoint in endpoints {
                    let ref = "\(endpoint.tenant.rawValue)/\(endpoint.id)"
                    present.insert(ref)
                    if let sender = session.senders.withLock({ $0[ref] }) {
                        if !endpoint.enabled {
                            sender.stop()
                        } else if sender.configVersion != endpoint.configVersion {
                            sender.update(endpoint)
                        }
                        continue
                    }
                    guard endpoint.enabled else { continue }
                    let locked = try await connection.query("SELECT pg_try_advisory_lock(\(WebhookLocks.lockClass), \(endpoint.lockKey))", logger: logger)
                    var taken = false
                    for try await value in locked.decode(Bool.self) { taken = value }
                    guard taken else { continue }
                    let sender = WebhookSender(
                        endpoint: endpoint, connection: connection, store: store, http: http, configuration: configuration, logger: logger)
                    session.senders.withLock { $0[ref] = sender }
                    logger.info("webhook sender started", metadata: ["convo.webhook.endpoint": "\(ref)"])
                    group.addTask {
                        var failure: String?
                        do { try await sender.run() } catch { failure = String(reflecting: error) }
                        session.finished.withLock { [failure] in $0.append(Finished(ref: ref, lockKey: endpoint.lockKey, error: failure)) }
                        wake.signal()
                    }
                }
                for (ref, sender) in session.senders.withLock({ $0 }) where !present.contains(ref) { sender.stop() }
                if ContinuousClock.now - lastCleanup > .seconds(600) {
                    lastCleanup = .now
                    try await connection.query(
                        """
                        DELETE FROM webhook_deliveries
                        WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => \(Double(configuration.retention.components.seconds)))
                        """, logger: logger)
                }
                await wake.wait(after: generation, timeout: configuration.scanInterval)
            }
            group.cancelAll()
        }
    }
}
