import Foundation
import ArgumentParser
import EventStore
import Hummingbird
import PostgresNIO
import Projections
import Responder
import ServiceLifecycle
import SharedTypes
import Webhooks

extension Convo {
    /// `convo serve`: the HTTP service.
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the HTTP service until SIGTERM or SIGINT.")

        @OptionGroup var options: GlobalOptions

        @Option(help: "Address to listen on (env CONVO_HOST; default 127.0.0.1).")
        var host: String?

        @Option(help: "Port to listen on (env CONVO_PORT; default 8080).")
        var port: Int?

        @Option(name: .customLong("database-pool-size"), help: "Most PostgreSQL connections (env CONVO_DATABASE_POOL_SIZE; default 20).")
        var databasePoolSize: Int?

        @Option(name: .customLong("redis-pool-size"), help: "Redis connections (env CONVO_REDIS_POOL_SIZE; default 4).")
        var redisPoolSize: Int?

        @Option(name: .customLong("ingest-writers"), help: "Ingest batches written at once, each one transaction (env CONVO_INGEST_WRITERS; default 2).")
        var ingestWriters: Int?

        @Option(name: .customLong("lock-ttl-ms"), help: "How long a visitor lock lives without renewal, in ms (env CONVO_LOCK_TTL_MS; default 30000).")
        var lockTTL: Int?

        @Option(name: .customLong("key-cache-seconds"), help: "How long a checked API key is remembered; a revoked key works at most this long (env CONVO_KEY_CACHE_SECONDS; default 5).")
        var keyCacheSeconds: Int?

        @Flag(inversion: .prefixedNo, help: "Run the responder (process visitor messages) in this process. Ingest-only instances: --no-responder.")
        var responder = true

        @Flag(inversion: .prefixedNo, help: "Run the projection runners in this process (one per projection is active across all instances).")
        var projections = true

        @Flag(inversion: .prefixedNo, help: "Send webhooks from this process (each endpoint has one sender across all instances).")
        var webhooks = true

        @Option(
            name: .customLong("webhook-retry-schedule"),
            help: ArgumentHelp(
                "Seconds before each retry of a failed webhook message, comma-separated; past the last the endpoint is disabled (env CONVO_WEBHOOK_RETRY_SCHEDULE; default 1,5,300,1800,7200,18000,36000,36000: 27.6 h).",
                valueName: "seconds,..."))
        var webhookRetrySchedule: String?

        @Option(
            name: .customLong("retention-interval"),
            help: "Seconds between passes of the retention service, which forgets visitors past their tenant's visitorRetentionDays (env CONVO_RETENTION_INTERVAL_SECONDS; default 3600).")
        var retentionInterval: Int?

        @Option(name: .customLong("webhook-timeout"), help: "Seconds one webhook attempt may take (env CONVO_WEBHOOK_TIMEOUT; default 10).")
        var webhookTimeout: Int?

        @Option(
            name: .customLong("projection-stale-seconds"),
            help: "How long a projection may keep an event waiting before /readyz reports it (env CONVO_PROJECTION_STALE_SECONDS; default 10).")
        var projectionStaleSeconds: Int?

        @Option(
            name: .customLong("request-timeout"),
            help: "Seconds a request may take before it is answered 503 (not stored) or 504 (outcome unknown) (env CONVO_REQUEST_TIMEOUT; default 10).")
        var requestTimeout: Int?

        @Option(
            name: .customLong("idle-transaction-timeout"),
            help: """
                Seconds a session may sit idle inside a transaction before PostgreSQL ends it (env CONVO_IDLE_TRANSACTION_TIMEOUT; \
                default 15): a frozen or hung instance's open transaction holds back every reader of the cluster until then.
                """)
        var idleTransactionTimeout: Int?

        @Option(
            name: .customLong("lease-timeout"),
            help: """
                Seconds an instance that stopped without closing its connections (frozen, a paused VM) keeps the work one \
                instance does at a time (projection runners, webhook senders, the retention pass) before PostgreSQL ends its \
                session and another instance takes over (env CONVO_LEASE_TIMEOUT; default 20).
                """)
        var leaseTimeout: Int?

        @Option(
            name: .customLong("ingest-queue-limit"),
            help: "Messages that may wait for a batch; past it ingest answers 503 at once (env CONVO_INGEST_QUEUE_LIMIT; default 10000).")
        var ingestQueueLimit: Int?

        @Option(
            name: .customLong("sweep-seconds"),
            help: "How often the responder looks for conversations with unconsumed messages (env CONVO_SWEEP_SECONDS; default 30).")
        var sweepSeconds: Int?

        @Flag(
            name: .customLong("redis-legacy-lock-keys"),
            help: "Also take the visitor-lock keys of versions before the {hash tag}, while such instances still run (a rolling upgrade; not with a cluster).")
        var redisLegacyLockKeys = false

        @Option(
            name: .customLong("max-connections"),
            help: "Client connections held at once; past it a new one is answered 503 and closed. Lowered to fit the descriptor limit (env CONVO_MAX_CONNECTIONS; default 4096).")
        var maxConnections: Int?

        @Option(
            name: .customLong("idle-timeout"),
            help: "Seconds a connection may go without a complete request head (idle keep-alive, idle socket, unfinished head) before it is closed (env CONVO_IDLE_TIMEOUT; default 30).")
        var idleTimeout: Int?

        @Option(name: .customLong("max-streams"), help: "Open event streams (SSE) in all; past it 429 (env CONVO_MAX_STREAMS; default 2000).")
        var maxStreams: Int?

        @Option(name: .customLong("max-streams-per-tenant"), help: "Open event streams per tenant; past it 429 (env CONVO_MAX_STREAMS_PER_TENANT; default 200).")
        var maxStreamsPerTenant: Int?

        @Option(
            name: .customLong("demo-tenant"),
            help: "Serve /demo, a visitor chat widget beside its conversation's live events, writing into this tenant without a key: for trying convo, not for a public server (env CONVO_DEMO_TENANT; default off).")
        var demoTenant: String?

        @Option(name: .customLong("shutdown-timeout"), help: "Seconds a graceful shutdown may take before work is cancelled (env CONVO_SHUTDOWN_TIMEOUT; default 30).")
        var shutdownTimeout: Int?

        func validate() throws {
            guard (1...3600).contains(try resolved(shutdownTimeout, "CONVO_SHUTDOWN_TIMEOUT", 30)) else {
                throw ValidationError("the shutdown timeout is between 1 and 3600 seconds")
            }
            guard (1000...600_000).contains(try resolved(lockTTL, "CONVO_LOCK_TTL_MS", 30_000)) else {
                throw ValidationError("the lock ttl is between 1000 and 600000 ms")
            }
            guard (1...86400).contains(try resolved(projectionStaleSeconds, "CONVO_PROJECTION_STALE_SECONDS", 10)) else {
                throw ValidationError("the projection staleness limit is between 1 and 86400 seconds")
            }
            guard (1...3600).contains(try resolved(sweepSeconds, "CONVO_SWEEP_SECONDS", 30)) else {
                throw ValidationError("the sweep interval is between 1 and 3600 seconds")
            }
            guard (1...600).contains(try resolved(requestTimeout, "CONVO_REQUEST_TIMEOUT", 10)) else {
                throw ValidationError("the request timeout is between 1 and 600 seconds")
            }
            guard (1...3600).contains(try resolved(idleTransactionTimeout, "CONVO_IDLE_TRANSACTION_TIMEOUT", 15)) else {
                throw ValidationError("the idle transaction timeout is between 1 and 3600 seconds")
            }
            guard (2...3600).contains(try resolved(leaseTimeout, "CONVO_LEASE_TIMEOUT", 20)) else {
                throw ValidationError("the lease timeout is between 2 and 3600 seconds")
            }
            guard (1...10_000_000).contains(try resolved(ingestQueueLimit, "CONVO_INGEST_QUEUE_LIMIT", 10_000)) else {
                throw ValidationError("the ingest queue limit is between 1 and 10000000 messages")
            }
            guard (1...1_000_000).contains(try resolved(maxConnections, "CONVO_MAX_CONNECTIONS", 4096)) else {
                throw ValidationError("the connection limit is between 1 and 1000000")
            }
            guard (1...3600).contains(try resolved(idleTimeout, "CONVO_IDLE_TIMEOUT", 30)) else {
                throw ValidationError("the idle timeout is between 1 and 3600 seconds")
            }
            guard (1...1_000_000).contains(try resolved(maxStreams, "CONVO_MAX_STREAMS", 2000)),
                (1...1_000_000).contains(try resolved(maxStreamsPerTenant, "CONVO_MAX_STREAMS_PER_TENANT", 200))
            else {
                throw ValidationError("the event stream limits are between 1 and 1000000")
            }
            _ = try retrySchedule()
            _ = try resolvedDemoTenant()
            guard (1...604_800).contains(try resolved(retentionInterval, "CONVO_RETENTION_INTERVAL_SECONDS", 3600)) else {
                throw ValidationError("the retention interval is between 1 and 604800 seconds")
            }
            guard (1...600).contains(try resolved(webhookTimeout, "CONVO_WEBHOOK_TIMEOUT", 10)) else {
                throw ValidationError("the webhook timeout is between 1 and 600 seconds")
            }
            if redisLegacyLockKeys, case .cluster = try RedisConfiguration(url: options.redisURL()).topology {
                throw ValidationError("--redis-legacy-lock-keys needs one Redis or Sentinel: the keys before the hash tag cannot work on a cluster")
            }
            guard (0...3600).contains(try resolved(keyCacheSeconds, "CONVO_KEY_CACHE_SECONDS", 5)) else {
                throw ValidationError("the key cache lasts 0 to 3600 seconds")
            }
            for (name, value) in [("port", try resolvedPort()), ("database pool size", try resolved(databasePoolSize, "CONVO_DATABASE_POOL_SIZE", 20)),
                                  ("redis pool size", try resolved(redisPoolSize, "CONVO_REDIS_POOL_SIZE", 4)),
                                  ("ingest writers", try resolved(ingestWriters, "CONVO_INGEST_WRITERS", 2))] where value < 1 || value > 65535 {
                throw ValidationError("\(name) \(value) is out of range")
            }
        }

        func run() async throws {
            let logger = try options.makeLogger()
            let url = try options.databaseURL()
            let keyring = try options.requiredKeyring()
            let poolSize = try resolved(databasePoolSize, "CONVO_DATABASE_POOL_SIZE", 20)
            let held = Self.connectionsHeld(projections: projections, webhooks: webhooks)
            guard poolSize >= held + Self.minimumRequestConnections else {
                throw ValidationError(
                    "a database pool of \(poolSize) cannot serve: \(held) connections are held for life (one per projection runner, "
                        + "standby included, one for LISTEN, one for the webhook senders), and requests need at least \(Self.minimumRequestConnections) more; "
                        + "use --database-pool-size \(held + Self.minimumRequestConnections) or more")
            }
            var postgres = url.clientConfiguration(
                maximumConnections: poolSize, sessionTimeouts: .seconds(300),
                idleInTransaction: .seconds(try resolved(idleTransactionTimeout, "CONVO_IDLE_TRANSACTION_TIMEOUT", 15)))
            postgres.options.connectTimeout = try options.connectTimeout()
            let client = PostgresClient(configuration: postgres, backgroundLogger: backgroundLogger(logger))
            let redisPool = try resolved(redisPoolSize, "CONVO_REDIS_POOL_SIZE", 4)
            let redis = RedisClient(configuration: try RedisConfiguration(url: options.redisURL(), connections: redisPool))
            let provider: any AIProvider
            if let ai = try OpenAICompatibleProvider.Configuration.fromEnvironment(options.environment) {
                provider = OpenAICompatibleProvider(configuration: ai, logger: logger)
                logger.info("AI provider: OpenAI-compatible", metadata: ["convo.ai.base_url": "\(ai.baseURL)", "convo.ai.model": "\(ai.model)"])
            } else {
                provider = RuleProvider()
            }
            let lockTTL = try resolved(lockTTL, "CONVO_LOCK_TTL_MS", 30_000)
            let lease = Duration.seconds(try resolved(leaseTimeout, "CONVO_LEASE_TIMEOUT", 20))
            var webhookConfiguration = WebhookDispatcher.Configuration(
                retrySchedule: try retrySchedule(), attemptTimeout: .seconds(try resolved(webhookTimeout, "CONVO_WEBHOOK_TIMEOUT", 10)),
                instance: ConversationProcessor.defaultInstance)
            webhookConfiguration.sessionLease = lease
            var context = ServerContext.make(
                client: client, redis: redis, keyring: keyring, provider: provider, processing: .init(lockTTL: .milliseconds(lockTTL), legacyLockKeys: redisLegacyLockKeys),
                runners: .init(sessionLease: lease),
                ingest: .init(
                    writers: try resolved(ingestWriters, "CONVO_INGEST_WRITERS", 2),
                    maxQueued: try resolved(ingestQueueLimit, "CONVO_INGEST_QUEUE_LIMIT", 10_000)),
                responder: .init(sweepInterval: .seconds(try resolved(sweepSeconds, "CONVO_SWEEP_SECONDS", 30))),
                keyCacheTTL: .seconds(try resolved(keyCacheSeconds, "CONVO_KEY_CACHE_SECONDS", 5)),
                requestDeadline: .seconds(try resolved(requestTimeout, "CONVO_REQUEST_TIMEOUT", 10)),
                streams: .init(
                    total: try resolved(maxStreams, "CONVO_MAX_STREAMS", 2000), perTenant: try resolved(maxStreamsPerTenant, "CONVO_MAX_STREAMS_PER_TENANT", 200)),
                webhooks: webhookConfiguration,
                retention: .init(interval: .seconds(try resolved(retentionInterval, "CONVO_RETENTION_INTERVAL_SECONDS", 3600)), sessionLease: lease),
                logger: logger)
            context.demoTenant = try resolvedDemoTenant()
            context.projectionStaleAfter = .seconds(try resolved(projectionStaleSeconds, "CONVO_PROJECTION_STALE_SECONDS", 10))
            // The descriptors PostgreSQL and Redis need are kept out of the connection budget.
            context.connectionLimits = ConnectionLimits(
                maxConnections: try resolved(maxConnections, "CONVO_MAX_CONNECTIONS", 4096),
                idleTimeout: .seconds(try resolved(idleTimeout, "CONVO_IDLE_TIMEOUT", 30))
            ).fitted(reserving: poolSize + redisPool, logger: logger)
            let host = host ?? options.environment["CONVO_HOST"] ?? "127.0.0.1"
            let port = try resolvedPort()
            logger.info("convo serving", metadata: ["convo.http.address": "\(host):\(port)", "convo.database": "\(url)"])
            // SIGTERM or SIGINT: stop accepting, finish in-flight requests and processing, release locks. Work that
            // cannot finish (PostgreSQL gone) is cancelled after the shutdown timeout.
            var group = ServiceGroupConfiguration(
                services: [buildApplication(context, host: host, port: port, roles: .init(responder: responder, projections: projections, webhooks: webhooks), logger: logger)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger)
            group.maximumGracefulShutdownDuration = .seconds(try resolved(shutdownTimeout, "CONVO_SHUTDOWN_TIMEOUT", 30))
            group.maximumCancellationDuration = .seconds(5)
            try await ServiceGroup(configuration: group).run()
        }

        /// Requests, ingest batches and the responder need at least this many connections beside those held for life.
        static let minimumRequestConnections = 4

        /// Connections a `convo serve` holds for as long as it runs: one per projection runner (an active one
        /// holds its advisory lock on it, a standby one waits on it), one for `LISTEN`, and the webhook
        /// senders' session (their locks and writes).
        static func connectionsHeld(projections: Bool, webhooks: Bool) -> Int {
            (projections ? ProjectionRegistry.standard.count : 0) + (webhooks ? 1 : 0) + 1
        }

        /// The webhook retry schedule: each delay 0.01 s to 2 days, 1 to 20 of them.
        private func retrySchedule() throws -> [Duration] {
            guard let raw = webhookRetrySchedule ?? options.environment["CONVO_WEBHOOK_RETRY_SCHEDULE"] else {
                return WebhookDispatcher.Configuration.defaultRetrySchedule
            }
            let parts = raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            let seconds = parts.compactMap(Double.init)
            guard seconds.count == parts.count, (1...20).contains(seconds.count), seconds.allSatisfy({ (0.01...172_800).contains($0) }) else {
                throw ValidationError("the webhook retry schedule is 1 to 20 comma-separated delays of 0.01 to 172800 seconds, e.g. 5,300,1800")
            }
            return seconds.map { .milliseconds(Int64(($0 * 1000).rounded())) }
        }

        private func resolvedDemoTenant() throws -> TenantID? {
            guard let raw = demoTenant ?? options.environment["CONVO_DEMO_TENANT"], !raw.isEmpty else { return nil }
            guard let tenant = TenantID(rawValue: raw) else { throw ValidationError("the demo tenant '\(raw)' is not a tenant id") }
            return tenant
        }

        private func resolvedPort() throws -> Int { try resolved(port, "CONVO_PORT", 8080) }

        private func resolved(_ flag: Int?, _ variable: String, _ fallback: Int) throws -> Int {
            if let flag { return flag }
            guard let raw = options.environment[variable] else { return fallback }
            guard let value = Int(raw) else { throw ValidationError("\(variable)=\(raw) is not a number") }
            return value
        }
    }
}
