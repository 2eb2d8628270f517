import ArgumentParser
import Foundation
import SharedTypes

/// Ids as command-line arguments: ArgumentParser refuses an invalid one with the option's name, before `run()`.
extension ExpressibleByArgument where Self: StringIdentifier {
    public init?(argument: String) { self.init(rawValue: argument) }
}

extension TenantID: ExpressibleByArgument {}
extension ConversationID: ExpressibleByArgument {}
extension VisitorUID: ExpressibleByArgument {}

/// A moment given as ISO 8601, with or without fractional seconds: `2026-11-22T10:15:00Z`.
struct Moment: ExpressibleByArgument {
    var date: Date

    init?(argument: String) {
        let formatter = ISO8601DateFormatter()
        if let date = formatter.date(from: argument) {
            self.date = date
            return
        }
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        guard let date = formatter.date(from: argument) else { return nil }
        self.date = date
    }

    static var defaultCompletionKind: CompletionKind { .default }
}
