import Foundation
import NIOCore
import Testing

@testable import convo

/// The hand-written answer to an accepted message is JSON that any decoder reads back as what was meant.
@Suite struct MessageAcceptedTests {
    @Test(arguments: [
        "plain", "", "quote \" and backslash \\ and slash /", "line\nfeed\rreturn\ttab", "\u{0}\u{1}\u{1f}\u{7f}", "emoji 👩‍👩‍👧 and é and 中文",
        "\u{2028}\u{2029}", String(repeating: "\\\"", count: 100),
    ])
    func anyTextRoundTrips(_ text: String) throws {
        let accepted = MessageAccepted(conversationId: "shop:42", messageId: text, streamVersion: 9_223_372_036_854_775_807, globalPosition: -1, duplicate: true)
        let decoded = try JSONDecoder().decode(MessageAccepted.self, from: Data(accepted.body.readableBytesView))
        #expect(decoded.messageId == text)
        #expect(decoded.conversationId == "shop:42" && decoded.streamVersion == .max && decoded.globalPosition == -1 && decoded.duplicate)
        // The same document JSONEncoder writes, as JSON values.
        let reference = try JSONSerialization.jsonObject(with: JSONEncoder().encode(accepted)) as? NSDictionary
        let ours = try JSONSerialization.jsonObject(with: Data(accepted.body.readableBytesView)) as? NSDictionary
        #expect(reference == ours)
    }
}
