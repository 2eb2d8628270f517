import EventStore
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import Metrics
import PostgresNIO
import Projections
import Prometheus
import Responder
import ServiceLifecycle
import SharedTypes
import Webhooks

/// Everything the HTTP routes use, built once per process.
struct ServerContext: Sendable {
    let client: PostgresClient
    let store: PostgresEventStore
    let redis: RedisClient
    let migrator: Migrator
    /// Ingest with group commit: the route's way in.
    let batcher: IngestBatcher
    let processor: ConversationProcessor
    let responder: ResponderService
    let workflows: WorkflowRepository
    let keys: KeyAuthenticator
    /// The console's sign-in sessions (cookies in place of keys).
    let sessions: ConsoleSessions
    let feed: ConversationFeed
    let metrics: PrometheusCollectorRegistry
    /// How long a request may wait for its answer before it is refused with 503.
    let requestDeadline: Duration
    /// One runner per projection; each is active in one process at a time.
    let runners: [ProjectionRunner]
    /// Webhook endpoints and deliveries, for the routes.
    let webhooks: WebhookStore
    /// Sends the endpoints' messages; each endpoint's sender runs in one process at a time.
    let dispatcher: WebhookDispatcher
    /// Forgets visitors past their tenant's retention period; one pass at a time across instances.
    let retention: RetentionService
    /// How long a projection may keep an event waiting before `/readyz` reports it stale.
    var projectionStaleAfter: Duration = .seconds(10)
    /// How long each of `/readyz`'s checks may take before it counts as failed.
    var readinessTimeout: Duration = .seconds(3)
    /// How many client connections the server holds, and for how long without a request.
    var connectionLimits = ConnectionLimits()
    /// The tenant `/demo` writes into; `nil` (the default) serves no demo.
    var demoTenant: TenantID?
    let connections = ConnectionCounter()

    /// The context of one `convo serve` process.
    static func make(
        client: PostgresClient, redis: RedisClient, keyring: MasterKeyring, provider: any AIProvider = RuleProvider(),
        processing: ConversationProcessor.Configuration = .init(), runners: ProjectionRunner.Configuration = .init(),
        ingest: IngestBatcher.Configuration = .init(), responder: ResponderService.Configuration = .init(), keyCacheTTL: Duration = .seconds(5), requestDeadline: Duration = .seconds(10),
        streams: ConversationFeed.Limits = .init(), webhooks: WebhookDispatcher.Configuration = .init(instance: ConversationProcessor.defaultInstance),
        retention: RetentionService.Configuration = .init(), logger: Logger
    ) -> ServerContext {
        let metrics = ConvoMetrics.bootstrap()
        // The LISTEN session is leased like the runners' sessions.
        let store = PostgresEventStore(client: client, configuration: .init(sessionLease: runners.sessionLease), keyring: keyring, logger: logger)
        let workflows = WorkflowRepository(client: client, logger: logger)
        let processor = ConversationProcessor(
            store: store, redis: redis, workflows: workflows, provider: provider, configuration: processing, logger: logger)
        let keys = KeyAuthenticator(store: APIKeyStore(client: client, logger: logger), ttl: keyCacheTTL)
        return ServerContext(
            client: client, store: store, redis: redis, migrator: Migrator(client: client, logger: logger),
            batcher: IngestBatcher(store: store, configuration: ingest, logger: logger), processor: processor,
            responder: ResponderService(processor: processor, store: store, configuration: responder, logger: logger), workflows: workflows,
            keys: keys, sessions: ConsoleSessions(store: ConsoleSessionStore(client: client, logger: logger), ttl: keyCacheTTL, limiter: keys.limiter),
            feed: ConversationFeed(store: store, limits: streams, logger: logger), metrics: metrics, requestDeadline: requestDeadline,
            runners: ProjectionRegistry.standard.map { ProjectionRunner(projection: $0, store: store, configuration: runners, logger: logger) },
            webhooks: WebhookStore(client: client, store: store, logger: logger),
            dispatcher: WebhookDispatcher(client: client, store: store, configuration: webhooks, logger: logger),
            retention: RetentionService(store: store, configuration: retention, logger: logger))
    }
}

/// The routes of `convo serve`, and the table of the API routes among them (for the OpenAPI check).
///
/// `background: false` leaves the projections out of `/readyz` and `/metrics`: route tests that run no
/// runner anywhere.
func buildRouter(_ context: ServerContext, background: Bool = true) -> (Router<ConvoRequestContext>, RouteTable) {
    let router = Router(context: ConvoRequestContext.self)
    let table = RouteTable()
    router.add(middleware: MetricsMiddleware())
    router.add(middleware: LogRequestsMiddleware(.debug))
    router.add(middleware: ErrorMiddleware())
    router.add(middleware: MethodNotAllowedMiddleware(table: table))
    router.add(middleware: DeadlineMiddleware(deadline: context.requestDeadline))
    let projections = background ? ProjectionRegistry.standard : []

    table.add(.get, "/healthz", on: router) { _, _ in HealthResponse(status: "ok") }
    table.add(.get, "/readyz", on: router) { _, requestContext in
        let report = await ReadinessCheck(
            migrator: context.migrator, redis: context.redis, store: context.store, logger: requestContext.logger, projections: projections,
            staleAfter: context.projectionStaleAfter, timeout: context.readinessTimeout
        ).run()
        let failed = report.checks.filter { $0.value != "ok" }.sorted { $0.key < $1.key }
        let body = ReadinessResponse(
            status: report.ready ? "ready" : "unavailable", checks: report.checks,
            error: report.ready
                ? nil
                : .init(code: "not_ready", message: failed.map { "\($0.key): \($0.value)" }.joined(separator: "; ")))
        return EditedResponse(status: report.ready ? .ok : .serviceUnavailable, response: body)
    }
    table.add(.get, "/metrics", on: router) { _, requestContext -> Response in
        await recordProjectionHealth(projections, store: context.store, logger: requestContext.logger)
        Gauge(label: "convo.sse.streams").record(context.feed.listenerCount)
        Gauge(label: "convo.responder.scheduled").record(context.responder.scheduledCount)
        Gauge(label: "convo.responder.parked").record(context.responder.parkedCount)
        Gauge(label: "convo.responder.backing_off").record(context.responder.backingOffCount)
        Gauge(label: "convo.responder.holding").record(context.responder.holdingCount)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: context.metrics.emitToBuffer())))
    }
    table.add(.get, "/openapi.json", on: router) { _, _ in
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_json)))
    }

    ConsoleRoutes(context: context).register(on: router)
    if let tenant = context.demoTenant { DemoRoutes(context: context, tenant: tenant).register(on: router) }
    let api = router.group().add(middleware: Authenticate(keys: context.keys, sessions: context.sessions))
    // The tool catalogue is the same for every tenant; any key may read it.
    table.add(.get, "/v1/tools", on: api) { _, _ in ToolsResponse(tools: ToolCatalogue.all) }
    ConversationRoutes(context: context).register(on: api, table: table)
    StreamRoute(context: context).register(on: api, table: table)
    WorkflowRoutes(context: context).register(on: api, table: table)
    AuditRoutes(context: context).register(on: api, table: table)
    AgentRoutes(context: context).register(on: api, table: table)
    WebhookRoutes(context: context).register(on: api, table: table)
    SettingsRoutes(context: context).register(on: api, table: table)
    VisitorRoutes(context: context).register(on: api, table: table)
    ProjectionRoutes(context: context, projections: projections).register(on: api, table: table)
    return (router, table)
}

/// Each projection's health as measured in PostgreSQL (whichever process runs it): `convo_projection_lag`
/// (events after the checkpoint, counted up to ``ProjectionStatus/routineLagCountLimit``: a scrape does not
/// walk a backlog of millions), `convo_projection_waiting_seconds` (how long the oldest of them has
/// waited) and `convo_projection_active_runners` (sessions holding its runner lock).
private func recordProjectionHealth(_ projections: [any Projection], store: PostgresEventStore, logger: Logger) async {
    guard !projections.isEmpty, let statuses = try? await ProjectionStatus.read(projections, store: store, countingUpTo: ProjectionStatus.routineLagCountLimit, logger: logger) else { return }
    for status in statuses {
        let dimensions = [("projection", status.name)]
        Gauge(label: "convo.projection.lag", dimensions: dimensions).record(status.lag)
        Gauge(label: "convo.projection.waiting_seconds", dimensions: dimensions).record(status.waitingSeconds)
        Gauge(label: "convo.projection.active_runners", dimensions: dimensions).record(status.activeRunners)
    }
}

struct ToolsResponse: ResponseCodable {
    var tools: [ToolDefinition]
}

/// The `convo serve` application: the HTTP server with the PostgreSQL client, the event store, the
/// conversation feed, the projection runners and the responder as services of one ServiceGroup (started in
/// that order; on SIGTERM or SIGINT the server stops first, finishing in-flight requests, then the others).
///
/// `background: false` leaves the responder service and the projection runners out (route tests that share
/// a database with others).
func buildApplication(_ context: ServerContext, host: String, port: Int, background: Bool = true, logger: Logger) -> some ApplicationProtocol {
    buildApplication(context, host: host, port: port, roles: background ? .all : .none, measuresProjections: background, logger: logger)
}

/// What a `convo serve` process runs besides the HTTP API: ingest-only instances leave out the responder,
/// and the projection runners may live elsewhere too.
struct ServerRoles: Sendable {
    var responder: Bool
    var projections: Bool
    var webhooks: Bool
    static let all = ServerRoles(responder: true, projections: true, webhooks: true)
    static let none = ServerRoles(responder: false, projections: false, webhooks: false)
}

/// `measuresProjections: false` leaves the projections out of `/readyz` and `/metrics`: only for route tests,
/// where no runner runs anywhere. Every `convo serve` measures them, whether its own runners are on or not.
func buildApplication(
    _ context: ServerContext, host: String, port: Int, roles: ServerRoles, measuresProjections: Bool = true, logger: Logger
) -> some ApplicationProtocol {
    var services: [any Service] = [context.client, context.store, context.feed, context.batcher]
    if roles.projections { services += context.runners }
    if roles.responder { services += [context.responder, context.retention] }
    if roles.webhooks { services.append(context.dispatcher) }
    return Application(
        router: buildRouter(context, background: measuresProjections).0,
        server: .guarded(context.connectionLimits, counter: context.connections),
        configuration: .init(
            address: .hostname(host, port: port), serverName: "convo",
            availableConnectionsDelegate: MaximumAvailableConnections(context.connectionLimits.acceptLimit, logger: logger)),
        services: services,
        logger: logger
    )
}

struct HealthResponse: ResponseCodable {
    var status: String
}

struct ReadinessResponse: ResponseCodable {
    var status: String
    var checks: [String: String]
    var error: ErrorBody?
}
