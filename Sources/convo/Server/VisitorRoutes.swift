import Foundation
import Hummingbird
import Responder
import SharedTypes

/// A visitor's rights, with an `admin` key: forget them (`DELETE`, crypto-shredding) and export what convo
/// holds about them.
struct VisitorRoutes: Sendable {
    let context: ServerContext

    func register(on router: some RouterMethods<ConvoRequestContext>, table: RouteTable) {
        table.add(.delete, "/v1/visitors/{visitorUid}", on: router, use: forget)
        table.add(.get, "/v1/visitors/{visitorUid}/export", on: router, use: export)
    }

    @Sendable func forget(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> VisitorPrivacy.Erasure {
        let tenant = try requestContext.tenant(for: .admin)
        let visitor = try Self.visitorUID(requestContext)
        let reason = request.uri.queryParameters.get("reason") ?? "requested"
        guard (1...500).contains(reason.unicodeScalars.count), !reason.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
            throw APIError(.badRequest, "invalid_field", "reason has 1 to 500 characters, none of them control characters")
        }
        let requestedBy = requestContext.key.map { "key:\($0.id)" } ?? "unknown"
        return try await privacy(requestContext).forget(visitor, tenant: tenant, reason: reason, requestedBy: requestedBy)
    }

    @Sendable func export(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> VisitorPrivacy.Export {
        let tenant = try requestContext.tenant(for: .admin)
        return try await privacy(requestContext).export(try Self.visitorUID(requestContext), tenant: tenant)
    }

    private func privacy(_ requestContext: ConvoRequestContext) -> VisitorPrivacy {
        VisitorPrivacy(store: context.store, logger: requestContext.logger)
    }

    static func visitorUID(_ requestContext: ConvoRequestContext) throws -> VisitorUID {
        guard let raw = requestContext.pathParameter("visitorUid"), let visitor = VisitorUID(rawValue: raw) else {
            throw APIError(.badRequest, "invalid_visitor_uid", "a visitor uid is 1 to 128 of A-Z a-z 0-9 _ . : -")
        }
        return visitor
    }
}

extension VisitorPrivacy.Erasure: ResponseCodable {}
extension VisitorPrivacy.Export: ResponseCodable {}
