import Hummingbird
import Responder
import SharedTypes

/// The tenant's settings: read with a `read` or `admin` key, changed with an `admin` key. A change reaches
/// every instance's responder within a few seconds (its cache).
struct SettingsRoutes: Sendable {
    let context: ServerContext

    func register(on router: some RouterMethods<ConvoRequestContext>, table: RouteTable) {
        table.add(.get, "/v1/settings", on: router, use: get)
        table.add(.put, "/v1/settings", on: router, use: put)
    }

    /// Only what is given changes.
    struct Body: Decodable {
        var reopenOnVisitorMessage: Bool?
        var visitorRetentionDays: Double?
        var answerAfterQuietSeconds: Double?
    }

    @Sendable func get(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> TenantSettingsResponse {
        let tenant = try requestContext.tenant(forAnyOf: [.read, .admin])
        return TenantSettingsResponse(try await context.processor.settings.read(tenant))
    }

    @Sendable func put(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> TenantSettingsResponse {
        let tenant = try requestContext.tenant(for: .admin)
        let body = try await request.decodeJSON(Body.self, context: requestContext)
        var settings = try await context.processor.settings.read(tenant)
        if let reopen = body.reopenOnVisitorMessage { settings.reopenOnVisitorMessage = reopen }
        if let days = body.visitorRetentionDays {
            guard days >= 0, days <= 36_500, days.isFinite else {
                throw APIError(.badRequest, "invalid_field", "visitorRetentionDays is between 0 (keep) and 36500")
            }
            settings.visitorRetentionDays = days
        }
        if let quiet = body.answerAfterQuietSeconds {
            guard TenantSettings.isValidAnswerAfterQuiet(quiet) else {
                throw APIError(
                    .badRequest, "invalid_field",
                    "answerAfterQuietSeconds is between 0 (answer each message at once) and \(Int(TenantSettings.maxAnswerAfterQuietSeconds))")
            }
            settings.answerAfterQuietSeconds = quiet
        }
        return TenantSettingsResponse(try await context.processor.settings.write(settings, for: tenant))
    }
}

struct TenantSettingsResponse: ResponseCodable {
    var reopenOnVisitorMessage: Bool
    var visitorRetentionDays: Double
    var answerAfterQuietSeconds: Double

    init(_ settings: TenantSettings) {
        reopenOnVisitorMessage = settings.reopenOnVisitorMessage
        visitorRetentionDays = settings.visitorRetentionDays
        answerAfterQuietSeconds = settings.answerAfterQuietSeconds
    }
}
