import EventStore
import Foundation
import Logging
import PostgresNIO
import SharedTypes

/// Endpoints and deliveries as the API and the CLI see them: configure an endpoint, read it with what was
/// measured of it, page through its deliveries, ask for a redelivery.
public struct WebhookStore: Sendable {
    /// How long a replaced secret keeps signing beside the new one. Default: 24 hours.
    public var rotationGrace: Duration
    let client: PostgresClient
    let store: PostgresEventStore
    let logger: Logger

    public init(client: PostgresClient, store: PostgresEventStore, rotationGrace: Duration = .seconds(86_400), logger: Logger) {
        self.client = client
        self.store = store
        self.rotationGrace = rotationGrace
        self.logger = logger
    }

    /// The result of ``put(tenant:id:url:eventTypes:secret:now:)``.
    public struct PutResult: Sendable {
        public var endpoint: WebhookEndpoint
        public var created: Bool
        /// The secret convo made, when the caller gave none for a new endpoint: shown once.
        public var generatedSecret: WebhookSecret?
    }

    /// Creates or replaces an endpoint and enables it. A new endpoint is told about events from now on (its
    /// checkpoint is the tenant's head); a replaced one keeps its checkpoint and owed deliveries. A new secret
    /// for an existing endpoint is a rotation: the previous one signs beside it for ``rotationGrace``.
    ///
    /// - Throws: ``WebhookError`` `invalidArgument`, `invalidURL`, `invalidEventTypes`; `unavailable` or
    ///   `storageFailure` from PostgreSQL.
    public func put(
        tenant: TenantID, id: String, url: String, eventTypes: [WebhookEventType], secret: WebhookSecret?, now: Date = Date()
    ) async throws -> PutResult {
        guard WebhookEndpoint.isValidID(id) else {
            throw WebhookError(code: .invalidArgument, message: "a webhook id is 1 to 64 of A-Z a-z 0-9 _ -")
        }
        try WebhookEndpoint.validateURL(url)
        guard !eventTypes.isEmpty else { throw WebhookError(code: .invalidEventTypes, message: "name at least one event type") }
        let head = try await mapping("read the tenant's head") { try await store.headPosition(.tenant(tenant)) }
        let grace = rotationGrace
        let logger = logger
        return try await mapping("store a webhook endpoint") {
            try await client.withOpenTransaction(logger: logger) { connection in
                try await connection.query("INSERT INTO tenants (id) VALUES (\(tenant.rawValue)) ON CONFLICT DO NOTHING", logger: logger)
                let existing = try await Self.endpoints(
                    connection.query("SELECT \(unescaped: Self.columns) FROM webhook_endpoints WHERE tenant_id = \(tenant.rawValue) AND id = \(id) FOR UPDATE", logger: logger)
                ).first
                var keys: [WebhookSigningKeys.Key]
                var generated: WebhookSecret?
                if let existing {
                    keys = existing.signing.keys.filter { $0.retiresAt.map { $0 > now } ?? true }
                    if let secret, secret != keys.first?.secret {
                        let retiring = now.addingTimeInterval(Double(grace.components.seconds))
                        keys = [.init(secret: secret)] + keys.filter { $0.secret != secret }.map { .init(secret: $0.secret, retiresAt: Swift.min($0.retiresAt ?? retiring, retiring)) }
                    }
                } else {
                    let chosen = secret ?? WebhookSecret.generate()
                    if secret == nil { generated = chosen }
                    keys = [.init(secret: chosen)]
                }
                let secretsJSON = Self.encodeSecrets(keys)
                let types = eventTypes.map(\.rawValue)
                let rows = try await connection.query(
                    """
                    INSERT INTO webhook_endpoints (tenant_id, id, url, event_types, secrets, checkpoint)
                    VALUES (\(tenant.rawValue), \(id), \(url), \(types), \(secretsJSON)::jsonb, \(head))
                    ON CONFLICT (tenant_id, id) DO UPDATE SET
                        url = excluded.url, event_types = excluded.event_types, secrets = excluded.secrets,
                        config_version = webhook_endpoints.config_version + 1, updated_at = now(),
                        disabled_at = NULL, disabled_reason = NULL
                    RETURNING \(unescaped: Self.columns)
                    """, logger: logger)
                guard let endpoint = try await Self.endpoints(rows).first else {
                    throw WebhookError(code: .storageFailure, message: "the endpoint was not stored")
                }
                return PutResult(endpoint: endpoint, created: existing == nil, generatedSecret: generated)
            }
        }
    }

    /// One endpoint; `nil` when the tenant has none with this id.
    public func endpoint(tenant: TenantID, id: String) async throws -> WebhookEndpoint? {
        try await mapping("read a webhook endpoint") {
            try await Self.endpoints(
                client.queryOpen(
                    "SELECT \(unescaped: Self.columns) FROM webhook_endpoints WHERE tenant_id = \(tenant.rawValue) AND id = \(id)", logger: logger)
            ).first
        }
    }

    /// The tenant's endpoints, by id.
    public func endpoints(tenant: TenantID) async throws -> [WebhookEndpoint] {
        try await mapping("list webhook endpoints") {
            try await Self.endpoints(
                client.queryOpen(
                    "SELECT \(unescaped: Self.columns) FROM webhook_endpoints WHERE tenant_id = \(tenant.rawValue) ORDER BY id LIMIT 1000", logger: logger))
        }
    }

    /// Deletes an endpoint with its deliveries; its sender stops at its next write.
    ///
    /// - Returns: whether there was one.
    public func delete(tenant: TenantID, id: String) async throws -> Bool {
        try await mapping("delete a webhook endpoint") {
            let rows = try await client.queryOpen(
                "DELETE FROM webhook_endpoints WHERE tenant_id = \(tenant.rawValue) AND id = \(id) RETURNING id", logger: logger)
            return !rows.rows.isEmpty
        }
    }

    /// What was measured of an endpoint in PostgreSQL, whichever process sends for it.
    public struct Health: Sendable, Equatable {
        /// Messages owed (pending or requested).
        public var owed: Int
        /// When the oldest owed message was made.
        public var oldestOwedAt: Date?
        /// Events of the tenant after the checkpoint, counted up to 10,001.
        public var eventsBehind: Int
        /// Sessions holding the endpoint's sender lock: 1 while a process sends, 0 when none does.
        public var activeSenders: Int
    }

    public func health(of endpoint: WebhookEndpoint) async throws -> Health {
        try await mapping("measure a webhook endpoint") {
            let rows = try await client.queryOpen(
                """
                SELECT
                  (SELECT count(*) FROM webhook_deliveries
                   WHERE tenant_id = \(endpoint.tenant.rawValue) AND endpoint_id = \(endpoint.id) AND status <> 'delivered')::int,
                  (SELECT min(created_at) FROM webhook_deliveries
                   WHERE tenant_id = \(endpoint.tenant.rawValue) AND endpoint_id = \(endpoint.id) AND status <> 'delivered'),
                  (SELECT count(*) FROM (SELECT 1 FROM events
                   WHERE tenant_id = \(endpoint.tenant.rawValue) AND global_position > \(endpoint.checkpoint) LIMIT 10001) behind)::int,
                  (SELECT count(*) FROM pg_locks
                   WHERE locktype = 'advisory' AND granted AND classid = \(WebhookLocks.lockClass)::oid AND objid = \(endpoint.lockKey)::oid
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))::int
                """, logger: logger)
            for try await (owed, oldest, behind, senders) in rows.decode((Int, Date?, Int, Int).self) {
                return Health(owed: owed, oldestOwedAt: oldest, eventsBehind: behind, activeSenders: senders)
            }
            return Health(owed: 0, oldestOwedAt: nil, eventsBehind: 0, activeSenders: 0)
        }
    }

    /// An endpoint's deliveries, newest first, keyset-paginated by id.
    ///
    /// - Parameters:
    ///   - status: only `pending` (owed, including requested redeliveries) or `delivered` ones.
    ///   - before: only deliveries with a smaller id (the last page's last id).
    public func deliveries(tenant: TenantID, endpoint: String, status: String?, before: Int64?, limit: Int) async throws -> [WebhookDelivery] {
        guard (1...500).contains(limit) else { throw WebhookError(code: .invalidArgument, message: "limit is 1 to 500") }
        if let status, !["pending", "delivered"].contains(status) {
            throw WebhookError(code: .invalidArgument, message: "status is pending or delivered")
        }
        return try await mapping("list webhook deliveries") {
            try await Self.deliveries(
                client.queryOpen(
                    """
                    SELECT \(unescaped: Self.deliveryColumns) FROM webhook_deliveries
                    WHERE tenant_id = \(tenant.rawValue) AND endpoint_id = \(endpoint)
                      AND (\(before)::bigint IS NULL OR id < \(before))
                      AND (\(status)::text IS NULL OR (\(status) = 'delivered') = (status = 'delivered'))
                    ORDER BY id DESC LIMIT \(limit)
                    """, logger: logger))
        }
    }

    /// One delivery; `nil` when the endpoint has none with this id.
    public func delivery(tenant: TenantID, endpoint: String, id: Int64) async throws -> WebhookDelivery? {
        try await mapping("read a webhook delivery") {
            try await Self.deliveries(
                client.queryOpen(
                    """
                    SELECT \(unescaped: Self.deliveryColumns) FROM webhook_deliveries
                    WHERE tenant_id = \(tenant.rawValue) AND endpoint_id = \(endpoint) AND id = \(id)
                    """, logger: logger)
            ).first
        }
    }

    /// Asks for one more delivery of a delivery's event, whatever became of it: a new delivery (origin
    /// `redelivery`) that the endpoint's sender picks up within its scan interval, outside the conversation's
    /// order (it is a person's request, not the stream's).
    ///
    /// - Returns: the new delivery; `nil` when the endpoint has no delivery with this id.
    public func redeliver(tenant: TenantID, endpoint: String, id: Int64) async throws -> WebhookDelivery? {
        try await mapping("request a webhook redelivery") {
            try await Self.deliveries(
                client.queryOpen(
                    """
                    INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_position, event_id, event_type, conversation_id, origin, status)
                    SELECT tenant_id, endpoint_id, event_position, event_id, event_type, conversation_id, 'redelivery', 'requested'
                    FROM webhook_deliveries WHERE tenant_id = \(tenant.rawValue) AND endpoint_id = \(endpoint) AND id = \(id)
                    RETURNING \(unescaped: Self.deliveryColumns)
                    """, logger: logger)
            ).first
        }
    }

    // MARK: Rows

    static let columns =
        "tenant_id, id, lock_key, url, event_types, secrets::text, config_version, checkpoint, created_at, updated_at, disabled_at, disabled_reason"

    static func endpoints(_ rows: some AsyncSequence<PostgresRow, any Error>) async throws -> [WebhookEndpoint] {
        var endpoints: [WebhookEndpoint] = []
        for try await row in rows {
            let (tenant, id, lockKey, url, types, secrets, version, checkpoint, created, updated, disabledAt, reason) = try row.decode(
                (String, String, Int32, String, [String], String, Int64, Int64, Date, Date, Date?, String?).self)
            endpoints.append(
                WebhookEndpoint(
                    tenant: TenantID(rawValue: tenant) ?? TenantID(rawValue: "invalid")!, id: id, lockKey: lockKey, url: url,
                    eventTypes: types.compactMap(WebhookEventType.init(rawValue:)), signing: try decodeSecrets(secrets), configVersion: version,
                    checkpoint: checkpoint, createdAt: created, updatedAt: updated, disabledAt: disabledAt, disabledReason: reason))
        }
        return endpoints
    }

    private struct StoredKey: Codable {
        var secret: String
        var retiresAt: Date?
    }

    static func encodeSecrets(_ keys: [WebhookSigningKeys.Key]) -> String {
        let stored = keys.map { StoredKey(secret: $0.secret.encoded, retiresAt: $0.retiresAt) }
        return String(decoding: (try? JSONCoding.encoder.encode(stored)) ?? Data("[]".utf8), as: UTF8.self)
    }

    static func decodeSecrets(_ json: String) throws -> WebhookSigningKeys {
        let stored = try JSONCoding.decoder.decode([StoredKey].self, from: Data(json.utf8))
        return WebhookSigningKeys(keys: try stored.map { .init(secret: try WebhookSecret($0.secret), retiresAt: $0.retiresAt) })
    }

    static let deliveryColumns =
        "id, event_id, event_type, event_position, conversation_id, origin, status, attempts::text, created_at, delivered_at"

    static func deliveries(_ rows: some AsyncSequence<PostgresRow, any Error>) async throws -> [WebhookDelivery] {
        var deliveries: [WebhookDelivery] = []
        for try await row in rows {
            let (id, eventId, type, position, conversation, origin, status, attempts, created, delivered) = try row.decode(
                (Int64, UUID, String, Int64, String, String, String, String, Date, Date?).self)
            deliveries.append(
                WebhookDelivery(
                    id: id, messageId: WebhookMessage.messageID(eventId), eventId: eventId, eventType: type, position: position,
                    conversationId: conversation, origin: origin, status: status,
                    attempts: try JSONCoding.decoder.decode([WebhookDelivery.Attempt].self, from: Data(attempts.utf8)), createdAt: created,
                    deliveredAt: delivered))
        }
        return deliveries
    }

    private func mapping<T>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        try await WebhookError.mapping(operation, body)
    }
}

extension WebhookError {
    /// Runs `body`, turning the storage's errors into webhook errors (a ``WebhookError`` passes through).
    static func mapping<T>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as WebhookError {
            throw error
        } catch let error as PostgresTransactionError {
            if let inner = error.closureError as? WebhookError { throw inner }
            throw Self.storage(error, operation: operation)
        } catch {
            throw Self.storage(error, operation: operation)
        }
    }

    static func storage(_ error: any Error, operation: String) -> WebhookError {
        let mapped = PostgresEventStore.mapError(error, operation: operation)
        return WebhookError(code: mapped.code == .unavailable ? .unavailable : .storageFailure, message: mapped.message, cause: error)
    }
}

/// The advisory locks of webhook senders: class `WEBH`, object the endpoint's `lock_key`.
enum WebhookLocks {
    static let lockClass: Int32 = 0x5745_4248
}
