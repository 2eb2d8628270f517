import Foundation
import Hummingbird
import Responder
import SharedTypes

/// `GET /v1/workflows` (the tenant's workflow ids), `PUT /v1/workflows/{workflowId}` (publish a version) and
/// `GET /v1/workflows/{workflowId}`.
struct WorkflowRoutes: Sendable {
    let context: ServerContext
    /// Workflows are bigger than messages: up to 500 nodes.
    static let maxBodyBytes = 1024 * 1024

    func register(on router: some RouterMethods<ConvoRequestContext>, table: RouteTable) {
        table.add(.get, "/v1/workflows", on: router, use: list)
        table.add(.put, "/v1/workflows/{workflowId}", on: router, use: publish)
        table.add(.get, "/v1/workflows/{workflowId}", on: router, use: read)
    }

    @Sendable func publish(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> EditedResponse<WorkflowResponse> {
        let tenant = try requestContext.tenant(for: .admin)
        let id = try Self.workflowID(requestContext)
        guard request.headers[.contentType].flatMap(MediaType.init(from:))?.isType(.applicationJson) == true else {
            throw APIError(.unsupportedMediaType, "unsupported_media_type", "send the workflow as Content-Type: application/json")
        }
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: Self.maxBodyBytes)
        } catch {
            throw APIError(.contentTooLarge, "body_too_large", "a workflow is at most \(Self.maxBodyBytes / 1024) KiB")
        }
        let bytes = Array(buffer: body)
        do {
            let parsed = try WorkflowParser.parse(Data(bytes))
            guard parsed.id == id else {
                throw APIError(.badRequest, "workflow_id_mismatch", "the body's id '\(parsed.id)' is not the path's '\(id)'")
            }
            let published = try await context.workflows.publish(bytes, tenant: tenant, publishedBy: "key:\(requestContext.key?.id ?? "?")")
            guard let stored = try await context.workflows.stored(id, version: published.definition.version, tenant: tenant) else {
                throw APIError(.internalServerError, "internal", "the published workflow could not be read back")
            }
            return EditedResponse(status: published.isNew ? .created : .ok, response: WorkflowResponse(stored, created: published.isNew))
        } catch let error as InvalidWorkflow {
            throw APIError(
                .unprocessableContent, "invalid_workflow", "the workflow has \(error.issues.count) problem\(error.issues.count == 1 ? "" : "s")",
                details: error.issues.map { ErrorDetail(nodeId: $0.nodeId, message: $0.message) })
        }
    }

    /// The tenant's workflows by id, each as its latest version has it: `after` (the previous page's `next`),
    /// `limit` (1…1000, 100 by default).
    @Sendable func list(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> WorkflowList {
        let tenant = try requestContext.tenant(for: .read)
        let query = request.uri.queryParameters
        if let unknown = query.map({ String($0.key) }).first(where: { !["after", "limit"].contains($0) }) {
            throw APIError(.badRequest, "invalid_parameter", "unknown parameter '\(unknown)'; known: after, limit")
        }
        let after = query["after"].map(String.init)
        if let after, after.range(of: "^[a-z0-9][a-z0-9_-]{0,63}$", options: .regularExpression) == nil {
            throw APIError(.badRequest, "invalid_parameter", "after is a workflow id (the previous page's next)")
        }
        let limit = try ConversationRoutes.pageSize(request)
        let rows = try await context.workflows.list(tenant: tenant, after: after, limit: limit + 1)
        let page = rows.prefix(limit)
        return WorkflowList(
            workflows: page.map {
                WorkflowList.Entry(
                    workflowId: $0.id, name: $0.name, latestVersion: $0.latestVersion, versionCount: $0.versionCount,
                    publishedAt: $0.publishedAt, publishedBy: $0.publishedBy)
            },
            next: rows.count > limit ? page.last?.id : nil)
    }

    @Sendable func read(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> WorkflowResponse {
        let tenant = try requestContext.tenant(for: .read)
        let id = try Self.workflowID(requestContext)
        var version: Int?
        if let raw = request.uri.queryParameters["version"] {
            guard let value = Int32(String(raw)), value > 0 else {
                throw APIError(.badRequest, "invalid_parameter", "version is a number from 1 to \(Int32.max)")
            }
            version = Int(value)
        }
        guard let stored = try await context.workflows.stored(id, version: version, tenant: tenant) else {
            throw APIError(.notFound, "workflow_not_found", "no workflow \(id)\(version.map { " v\($0)" } ?? "")")
        }
        return WorkflowResponse(stored, created: nil)
    }

    static func workflowID(_ context: ConvoRequestContext) throws -> String {
        guard let id = context.pathParameter("workflowId"), id.range(of: "^[a-z0-9][a-z0-9_-]{0,63}$", options: .regularExpression) != nil else {
            throw APIError(.badRequest, "invalid_workflow_id", "a workflow id has 1 to 64 characters of a-z 0-9 _ -, starting with a letter or digit")
        }
        return id
    }
}

struct WorkflowResponse: ResponseCodable {
    var workflowId: String
    var version: Int
    var versions: [Int]
    var publishedAt: Date
    var publishedBy: String
    /// Whether this request published a new version (`PUT` only).
    var created: Bool?
    var definition: JSONValue

    init(_ stored: WorkflowRepository.Stored, created: Bool?) {
        workflowId = stored.id
        version = stored.version
        versions = stored.versions
        publishedAt = stored.publishedAt
        publishedBy = stored.publishedBy
        self.created = created
        definition = stored.document
    }
}

struct WorkflowList: ResponseEncodable {
    struct Entry: Encodable {
        var workflowId: String
        var name: String?
        var latestVersion: Int
        var versionCount: Int
        var publishedAt: Date
        var publishedBy: String
    }

    var workflows: [Entry]
    /// The `after` of the next page; absent on the last.
    var next: String?
}
