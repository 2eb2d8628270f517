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
    /// How long the responder waits for a visitor to stop writing before it answers: each message starts the
    /// wait again, so a burst typed in parts gets one decision (an AI reply answers all of it at once; a
    /// wait-for-input still takes the messages one by one). A visitor who keeps writing is answered at the
    /// latest ``answerAfterQuietCap`` times this after the first message waiting. `0` answers each message at
    /// once. Between 0 and ``maxAnswerAfterQuietSeconds``; fractions allowed. Default: `0`.
    public var answerAfterQuietSeconds: Double

    /// The longest quiet period a tenant may set, in seconds.
    public static let maxAnswerAfterQuietSeconds: Double = 30
    /// The longest a message waits for the visitor to stop writing, in quiet periods.
    public static let answerAfterQuietCap = 4

    public init(reopenOnVisitorMessage: Bool = true, visitorRetentionDays: Double = 0, answerAfterQuietSeconds: Double = 0) {
        self.reopenOnVisitorMessage = reopenOnVisitorMessage
        self.visitorRetentionDays = visitorRetentionDays
        self.answerAfterQuietSeconds = answerAfterQuietSeconds
    }

    /// Whether `seconds` is a quiet period a tenant may set: 0 to ``maxAnswerAfterQuietSeconds``.
    public static func isValidAnswerAfterQuiet(_ seconds: Double) -> Bool {
        seconds.isFinite && seconds >= 0 && seconds <= maxAnswerAfterQuietSeconds
    }

    /// ``answerAfterQuietSeconds`` as a duration (zero for anything outside its range).
    public var answerAfterQuiet: Duration {
        guard Self.isValidAnswerAfterQuiet(answerAfterQuietSeconds) else { return .zero }
        return .milliseconds(Int64((answerAfterQuietSeconds * 1000).rounded()))
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        reopenOnVisitorMessage = try container.decodeIfPresent(Bool.self, forKey: .reopenOnVisitorMessage) ?? true
        visitorRetentionDays = try container.decodeIfPresent(Double.self, forKey: .visitorRetentionDays) ?? 0
        answerAfterQuietSeconds = try container.decodeIfPresent(Double.self, forKey: .answerAfterQuietSeconds) ?? 0
    }
}
