import EventStore
import Foundation
import SharedTypes
import Testing

/// The metadata written by hand must read back as what it was, through the decoder every reader uses.
@Suite struct JSONWriterTests {
    private func readBack(_ metadata: EventMetadata) throws -> EventMetadata {
        let buffer = try JSONWriter.metadata(metadata)
        return try JSONCoding.decoder.decode(EventMetadata.self, from: Data(buffer.readableBytesView))
    }

    @Test func metadataReadsBackAsItWas() throws {
        let tricky = "quote \" backslash \\ slash / newline \n tab \t bell \u{07} nul-free unicode é 日本 🙂 \u{1F}"
        let cases: [EventMetadata] = [
            EventMetadata(),
            EventMetadata(actorId: "visitor:v-1"),
            EventMetadata(correlationId: UUID(), causationId: UUID(), actorId: tricky),
            EventMetadata(
                correlationId: UUID(), actorId: "user:ai",
                extra: [
                    "lockToken": .string("3f1c"), "messagesVersion": .number(12), "negative": .number(-7), "fraction": .number(0.1),
                    "small": .number(1e-5), "large": .number(9_007_199_254_740_992), "huge": .number(1e300), "flag": .bool(true), "nothing": .null,
                    "nested": .object(["a": .array([.number(1), .string(tricky), .object([:]), .array([])]), "b": .bool(false)]),
                    tricky: .string(tricky),
                ]),
        ]
        for metadata in cases {
            #expect(try readBack(metadata) == metadata)
        }
    }

    @Test func namedKeysAmongTheFreeOnesAreWrittenOnce() throws {
        var metadata = EventMetadata(actorId: "visitor:v-1")
        metadata.extra["actorId"] = .string("someone else")
        let text = String(buffer: try JSONWriter.metadata(metadata))
        #expect(text.components(separatedBy: "\"actorId\"").count == 2)
        #expect(try readBack(metadata).actorId == "visitor:v-1")
    }

    @Test(arguments: [Double.nan, .infinity, -.infinity])
    func numbersJSONCannotCarryAreRefusedAsTheEncoderRefusesThem(_ number: Double) {
        #expect(throws: EncodingError.self) { try JSONWriter.metadata(EventMetadata(extra: ["n": .number(number)])) }
        #expect(throws: EncodingError.self) { try JSONCoding.encoder.encode(EventMetadata(extra: ["n": .number(number)])) }
    }
}
