/// What a tenant chose about how its conversations behave. Every setting has a default, so a tenant that
/// chose nothing (and a setting added later) behaves as documented.
public struct TenantSettings: Sendable, Equatable, Codable {
    /// Whether a visitor message to a resolved conversation reopens it for its people. When `false`, the
    /// message is stored and the conversation stays resolved. Default: `true`.
    public var reopenOnVisitorMessage: Bool

    public init(reopenOnVisitorMessage: Bool = true) {
        self.reopenOnVisitorMessage = reopenOnVisitorMessage
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        reopenOnVisitorMessage = try container.decodeIfPresent(Bool.self, forKey: .reopenOnVisitorMessage) ?? true
    }
}
