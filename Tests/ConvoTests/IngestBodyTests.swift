import ConvoTestSupport
import Foundation
import SharedTypes
import Testing

@testable import convo

/// A visitor message's body read by hand (`BodyReadable`) must read exactly as `JSONDecoder` reads it: the
/// same fields when the reader handles a body, and the decoder's answer (fields or error) when it does not.
@Suite struct IngestBodyTests {
    struct Fields: Equatable {
        var visitorUid: String
        var messageId: String?
        var text: String
        var sentAt: String?

        init(_ body: IngestRequest) { (visitorUid, messageId, text, sentAt) = (body.visitorUid, body.messageId, body.text, body.sentAt) }
    }

    /// What the reader makes of `bytes` (`nil`: left to the decoder), and what the decoder makes of them.
    static func outcome(_ bytes: [UInt8]) -> (read: Fields?, decoded: Fields?) {
        let read = bytes.withUnsafeBytes { raw -> Fields? in
            var reader = PayloadReader(raw)
            return (try? IngestRequest(reading: &reader)).map(Fields.init)
        }
        return (read, (try? JSONDecoder().decode(IngestRequest.self, from: Data(bytes))).map(Fields.init))
    }

    static let tricky = "quote \" backslash \\ slash / newline \n tab \t é 日本 🙂 \u{1F}"

    static let plain: [String] = [
        #"{"visitorUid": "v-1", "messageId": "m-1", "text": "Hello, I have a question about my order."}"#,
        #"{"visitorUid":"v-1","text":"hi"}"#,
        #"{"text": "hi", "visitorUid": "v-1", "messageId": null, "sentAt": "2026-11-22T10:15:00Z"}"#,
        #"{"visitorUid": "v-1", "text": "hi", "sentAt": null, "extra": {"a": [1, 2.5, true, null]}}"#,
        " \n{ \"visitorUid\" : \"v-1\" , \"text\" : \"\\u00e9\\n\\\"\" } \n",
    ]

    @Test func plainBodiesAreReadByHandAsTheDecoderReadsThem() throws {
        for body in Self.plain {
            let (read, decoded) = Self.outcome(Array(body.utf8))
            #expect(read != nil, "the reader left a plain body to the decoder: \(body)")
            #expect(read == decoded, "\(body)")
        }
        let encoded = try JSONEncoder().encode(["visitorUid": "v-1", "messageId": Self.tricky, "text": Self.tricky])
        let (read, decoded) = Self.outcome(Array(encoded))
        #expect(read != nil && read == decoded && read?.text == Self.tricky)
    }

    @Test(arguments: [
        #"{"visitorUid": "v-1"}"#, #"{"text": "hi"}"#, #"{"visitorUid": null, "text": "hi"}"#, #"{"visitorUid": 1, "text": "hi"}"#,
        #"{"visitorUid": "v-1", "text": "hi", "messageId": 7}"#, #"{"visitorUid": "v-1", "text": "a", "text": "b"}"#,
        #"{"visitorUid": "v-1", "text": "a", "messageId": "x", "messageId": null}"#, #"{"visit\u006frUid": "v-1", "text": "hi"}"#,
        #"["visitorUid", "text"]"#, #""text""#, "", "{", #"{"visitorUid": "v-1", "text": "hi"} x"#, #"{"visitorUid": "v-1", "text": "hi",}"#,
    ])
    func bodiesTheReaderLeavesGoToTheDecoder(_ body: String) {
        let (read, decoded) = Self.outcome(Array(body.utf8))
        #expect(read == nil, "read by hand (as \(String(describing: read)); the decoder: \(String(describing: decoded))): \(body)")
    }

    @Test func bodiesBrokenAtRandomReadAsTheDecoderReadsThem() throws {
        var random = SplitMix64(seed: 0x1a9e_57ed)
        var (handled, mutations) = (0, 0)
        for body in Self.plain {
            for _ in 0..<400 {
                let bytes = random.brokenJSON(Array(body.utf8))
                let (read, decoded) = Self.outcome(bytes)
                mutations += 1
                if let read {
                    handled += 1
                    #expect(decoded == read, "\(String(decoding: bytes, as: UTF8.self))")
                }
            }
        }
        // Some mutations leave a readable body (a changed letter in a string): both paths were compared.
        #expect(handled > mutations / 20, "\(handled) of \(mutations)")
    }
}
