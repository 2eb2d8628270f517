import EventStore
import Foundation
import SharedTypes
import Testing

@testable import Responder

/// The ingested message's payload is written by hand; it must be the document `VisitorMessageReceived`
/// encodes to, field for field, with the same personal fields sealed.
@Suite struct IngestPayloadTests {
    @Test(arguments: [
        "Hello, I have a question about my order.",
        "quote \" backslash \\ slash / newline \n tab \t control \u{01}\u{1F} é 日本 🙂",
        "",
    ])
    func theHandWrittenPayloadIsTheEncodedEvent(_ text: String) throws {
        let message = IncomingMessage(
            tenant: TenantID(rawValue: "acme")!, conversationId: ConversationID(rawValue: "c-1")!, visitorUid: VisitorUID(rawValue: "v.1:x")!,
            messageId: "m-\"1\"", text: text, sentAt: Date(timeIntervalSince1970: 1_796_000_000.123456))
        let byHand = try MessageIngestor.receivedEvent(message)
        let encoded = try NewEvent(
            type: VisitorMessageReceived.eventType,
            encoding: VisitorMessageReceived(messageId: message.messageId, visitorUid: message.visitorUid, text: message.text, sentAt: message.sentAt))
        let decodedByHand = try JSONCoding.decoder.decode(VisitorMessageReceived.self, from: Data(byHand.data.readableBytesView))
        let decodedEncoded = try JSONCoding.decoder.decode(VisitorMessageReceived.self, from: Data(encoded.data.readableBytesView))
        #expect(decodedByHand == decodedEncoded)
        #expect(decodedByHand.text == text)
        #expect(byHand.personalFields == encoded.personalFields)
        #expect(byHand.personalFields == ["text"])
        // The same members, nothing more.
        let members = try #require(JSONSerialization.jsonObject(with: Data(byHand.data.readableBytesView)) as? [String: Any])
        let expected = try #require(JSONSerialization.jsonObject(with: Data(encoded.data.readableBytesView)) as? [String: Any])
        #expect(Set(members.keys) == Set(expected.keys))
    }
}
