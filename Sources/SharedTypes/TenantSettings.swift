/// What a tenant chose about how its conversations behave. Every setting has a default, so a tenant that
/// chose nothing (and a setting added later) behaves as documented.
public struct TenantSettings: Sendable, Equatable, Codable {
    /// Whether a visitor message to a resolved conversation reopens it for its people. When `false`, the
    /// message is stored and the conversation stays resolved. Default: `true`.
    public var reopenOnVisitorMessage: Bool
    /// After how many days without activity a visitor is forgotten (their data keys destroyed) by the
    /// retention service; fractions allowed. `0` keeps visitors until they are forgotten by request.
    /// Default: `0`.
    public var visitorRetentionDays: Double

    public init(reopenOnVisitorMessage: Bool = true, visitorRetentionDays: Double = 0) {
        self.reopenOnVisitorMessage = reopenOnVisitorMessage
        self.visitorRetentionDays = visitorRetentionDays
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        reopenOnVisitorMessage = try container.decodeIfPresent(Bool.self, forKey: .reopenOnVisitorMessage) ?? true
        visitorRetentionDays = try container.decodeIfPresent(Double.self, forKey: .visitorRetentionDays) ?? 0
    }
}
