import Crypto
import EventStore
import Foundation
import Logging
import PostgresNIO
import SharedTypes
import Synchronization

/// Published workflows, per tenant and versioned, in the `workflows` table. A published version never
/// changes, so loaded definitions are cached for good.
public final class WorkflowRepository: Sendable {
    /// A published version.
    public struct Published: Sendable, Equatable {
        public var definition: WorkflowDefinition
        /// Whether this publish made a new version (`false`: the latest version already had this content).
        public var isNew: Bool
    }

    /// The workflow new conversations start, unless configured otherwise: the demo support workflow.
    public static let defaultWorkflowID = "support"
    /// The demo support workflow that ships with convo (`Workflows/support.json`).
    public static var demoWorkflowJSON: [UInt8] { PackageResources.support_json }

    let client: PostgresClient
    let logger: Logger
    private let cache = Mutex<[String: WorkflowDefinition]>([:])

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// Validates and publishes a workflow as the next version of its id; publishing the content of the
    /// latest version again returns that version.
    ///
    /// - Throws: ``InvalidWorkflow`` for a bad definition, ``EventStoreError`` when PostgreSQL fails.
    public func publish(_ json: [UInt8], tenant: TenantID, publishedBy: String) async throws -> Published {
        let document = try WorkflowParser.decodeJSON(Data(json))
        var parsed = try WorkflowParser.parse(document)
        // Store the canonical JSON without the file's version: the table assigns it. (A parsed workflow is
        // an object.)
        guard case .object(var fields) = document else { preconditionFailure("a parsed workflow is a JSON object") }
        fields["version"] = nil
        let canonical = try Self.canonicalEncoder.encode(JSONValue.object(fields))
        let checksum = Array(SHA256.hash(data: canonical)).hexString
        let text = String(decoding: canonical, as: UTF8.self)
        do {
            let definition = parsed
            let logger = self.logger
            return try await client.withOpenTransaction(logger: logger) { connection in
                var parsed = definition
                // One publisher per workflow id at a time.
                try await connection.query(
                    "SELECT pg_advisory_xact_lock(1668183671, hashtext(\(tenant.rawValue) || '/' || \(parsed.id)))", logger: logger)
                var latest: (Int, String)?
                let rows = try await connection.query(
                    """
                    SELECT version, checksum FROM workflows WHERE tenant_id = \(tenant.rawValue) AND workflow_id = \(parsed.id)
                    ORDER BY version DESC LIMIT 1
                    """, logger: logger)
                for try await row in rows.decode((Int, String).self) { latest = row }
                if let (version, stored) = latest, stored == checksum {
                    parsed.version = version
                    return Published(definition: parsed, isNew: false)
                }
                parsed.version = (latest?.0 ?? 0) + 1
                try await connection.query(
                    """
                    INSERT INTO workflows (tenant_id, workflow_id, version, definition, checksum, published_by)
                    VALUES (\(tenant.rawValue), \(parsed.id), \(parsed.version), \(text)::jsonb, \(checksum), \(publishedBy))
                    """, logger: logger)
                return Published(definition: parsed, isNew: true)
            }
        } catch let error as InvalidWorkflow {
            throw error
        } catch {
            throw PostgresEventStore.mapError(error, operation: "publish workflow \(parsed.id)")
        }
    }

    /// A published version; `nil` when there is none.
    ///
    /// - Throws: ``EventStoreError`` when PostgreSQL fails, ``InvalidWorkflow`` when a stored definition no
    ///   longer validates.
    public func definition(_ id: String, version: Int, tenant: TenantID) async throws -> WorkflowDefinition? {
        let key = "\(tenant.rawValue)/\(id)/\(version)"
        if let cached = cache.withLock({ $0[key] }) { return cached }
        let rows: CollectedRows
        do {
            rows = try await client.queryOpen(
                """
                SELECT definition::text FROM workflows
                WHERE tenant_id = \(tenant.rawValue) AND workflow_id = \(id) AND version = \(version)
                """, logger: logger)
            for try await text in rows.decode(String.self) {
                var definition = try WorkflowParser.parse(Data(text.utf8))
                definition.version = version
                cache.withLock { $0[key] = definition }
                return definition
            }
        } catch let error as InvalidWorkflow {
            throw error
        } catch {
            throw PostgresEventStore.mapError(error, operation: "load workflow \(id) v\(version)")
        }
        return nil
    }

    /// A published version as stored: its JSON document (without `version`), who published it and when.
    public struct Stored: Sendable {
        public var id: String
        public var version: Int
        public var document: JSONValue
        public var publishedAt: Date
        public var publishedBy: String
        /// Every version of this workflow id, oldest first.
        public var versions: [Int]
    }

    /// A published version as stored (the latest when `version` is `nil`); `nil` when there is none.
    public func stored(_ id: String, version: Int? = nil, tenant: TenantID) async throws -> Stored? {
        do {
            let rows = try await client.queryOpen(
                """
                SELECT version, definition::text, published_at, published_by,
                       array(SELECT version FROM workflows WHERE tenant_id = w.tenant_id AND workflow_id = w.workflow_id ORDER BY version)
                FROM workflows w
                WHERE tenant_id = \(tenant.rawValue) AND workflow_id = \(id) AND (\(version)::int IS NULL OR version = \(version))
                ORDER BY version DESC LIMIT 1
                """, logger: logger)
            for try await (version, text, at, by, versions) in rows.decode((Int, String, Date, String, [Int]).self) {
                let document = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
                return Stored(id: id, version: version, document: document, publishedAt: at, publishedBy: by, versions: versions)
            }
            return nil
        } catch {
            throw PostgresEventStore.mapError(error, operation: "load workflow \(id)")
        }
    }

    /// One workflow id of a tenant, as its latest version has it.
    public struct Summary: Sendable {
        public var id: String
        public var name: String?
        public var latestVersion: Int
        public var versionCount: Int
        public var publishedAt: Date
        public var publishedBy: String
    }

    /// The tenant's workflow ids after `after`, in order, at most `limit` (keyset-paged by id).
    public func list(tenant: TenantID, after: String?, limit: Int) async throws -> [Summary] {
        do {
            let rows = try await client.queryOpen(
                """
                SELECT DISTINCT ON (workflow_id) workflow_id, definition->>'name', version,
                       count(*) OVER (PARTITION BY workflow_id)::int, published_at, published_by
                FROM workflows
                WHERE tenant_id = \(tenant.rawValue) AND (\(after)::text IS NULL OR workflow_id > \(after))
                ORDER BY workflow_id, version DESC
                LIMIT \(limit)
                """, logger: logger)
            var summaries: [Summary] = []
            for try await (id, name, version, count, at, by) in rows.decode((String, String?, Int, Int, Date, String).self) {
                summaries.append(Summary(id: id, name: name, latestVersion: version, versionCount: count, publishedAt: at, publishedBy: by))
            }
            return summaries
        } catch {
            throw PostgresEventStore.mapError(error, operation: "list workflows")
        }
    }

    /// The latest version of a workflow; `nil` when none is published.
    public func latest(_ id: String, tenant: TenantID) async throws -> WorkflowDefinition? {
        do {
            let rows = try await client.queryOpen(
                "SELECT max(version) FROM workflows WHERE tenant_id = \(tenant.rawValue) AND workflow_id = \(id)", logger: logger)
            for try await version in rows.decode(Int?.self) {
                guard let version else { return nil }
                return try await definition(id, version: version, tenant: tenant)
            }
        } catch let error as InvalidWorkflow {
            throw error
        } catch {
            throw PostgresEventStore.mapError(error, operation: "load workflow \(id)")
        }
        return nil
    }

    /// The workflow a new conversation of the tenant starts: the latest `id`; for the default id, the
    /// demo workflow is published first when the tenant has none.
    public func forNewConversation(_ id: String = defaultWorkflowID, tenant: TenantID) async throws -> WorkflowDefinition {
        if let latest = try await latest(id, tenant: tenant) { return latest }
        guard id == Self.defaultWorkflowID else {
            throw ResponderError(code: .workflowNotFound, message: "no workflow '\(id)' is published for tenant \(tenant)")
        }
        return try await publish(Self.demoWorkflowJSON, tenant: tenant, publishedBy: SystemActor.actorID).definition
    }

    private static let canonicalEncoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()
}
