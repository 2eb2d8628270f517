import EventStore
import Foundation
import NIOCore
import NIOFoundationCompat
import SharedTypes
import Testing

/// The streaming encoder must give the JSON value `JSONEncoder` gives, for every payload type, and fall
/// back to it (never write something else) where a value's `encode(to:)` does what a stream cannot.
@Suite struct StreamingJSONEncoderTests {
    struct FellBack: Error {}

    /// The payloads' encoder, with a fallback that fails: what it returns was streamed.
    static let streamingOnly = StreamingJSONEncoder(dateString: { Timestamp.string(from: $0) }, fallback: { _ in throw FellBack() })

    /// The same JSON value: both texts parsed, numbers as doubles, members in any order.
    static func value(_ buffer: ByteBuffer) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(buffer.readableBytesView))
    }

    static func foundation(_ value: some Encodable) throws -> ByteBuffer {
        try JSONCoding.encoder.encodeAsByteBuffer(value, allocator: ByteBufferAllocator())
    }

    @Test func everyPayloadTypeStreamsAsJSONEncoderEncodesIt() throws {
        func check<T: PayloadReadable>(_ sample: T) throws {
            let streamed = try Self.streamingOnly.encode(sample)
            #expect(try Self.value(streamed) == Self.value(Self.foundation(sample)), "\(T.self): \(String(buffer: streamed))")
            // Decoded back, and read by the folds' hand reader, it is the value encoded.
            #expect(try JSONCoding.decoder.decode(T.self, from: Data(streamed.readableBytesView)) == sample)
            let outcome = PayloadReadableTests.outcome(T.self, Array(streamed.readableBytesView))
            #expect(outcome.handled == sample, "\(T.self) not read by hand: \(String(buffer: streamed))")
        }
        for sample in PayloadReadableTests.samples { try check(sample) }
        // The event a decision appends gets its payload from the streaming encoder.
        let event = try NewEvent(type: WorkflowVariableSet.eventType, encoding: WorkflowVariableSet(name: "n", value: ["a": [1, "b"]], nodeId: "x"))
        #expect(try Self.value(event.data) == .object(["name": "n", "value": ["a": [1, "b"]], "nodeId": "x"]))
    }

    enum Shape: Codable, Equatable {
        case empty
        case labelled(first: Int, second: [String: Double]?)
        case unlabelled(String, Date)
    }

    struct Nested: Codable, Equatable {
        var shapes: [Shape]
        var byNumber: [Int: [String?]]
        var byPoint: [Point: Bool]
        var grid: [[Int8]]
        var small: Float
        var big: UInt64
        var negative: Int16
        var maybe: String?
        var explicitNull: String?
        var identifier: UUID
        var tenant: TenantID
        var text: String
        var nothing: Empty
        var oddKeys: [String: Int]

        struct Point: Codable, Hashable { var x: Int32, y: UInt8 }
        struct Empty: Codable, Equatable {}

        enum CodingKeys: String, CodingKey {
            case shapes, byNumber, byPoint, grid, small, big, negative, maybe, explicitNull, identifier, tenant, text, nothing, oddKeys
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(shapes, forKey: .shapes)
            try container.encode(byNumber, forKey: .byNumber)
            try container.encode(byPoint, forKey: .byPoint)
            try container.encode(grid, forKey: .grid)
            try container.encode(small, forKey: .small)
            try container.encode(big, forKey: .big)
            try container.encode(negative, forKey: .negative)
            try container.encodeIfPresent(maybe, forKey: .maybe)
            try container.encode(explicitNull, forKey: .explicitNull)
            try container.encode(identifier, forKey: .identifier)
            try container.encode(tenant, forKey: .tenant)
            try container.encode(text, forKey: .text)
            try container.encode(nothing, forKey: .nothing)
            try container.encode(oddKeys, forKey: .oddKeys)
        }
    }

    static let nested = Nested(
        shapes: [.empty, .labelled(first: -1, second: ["x": 0.1, "y": 1e-7]), .labelled(first: 2, second: nil), .unlabelled(PayloadReadableTests.tricky, Date(timeIntervalSince1970: 1_795_000_000.25))],
        byNumber: [3: ["a", nil], -7: []], byPoint: [Nested.Point(x: 1, y: 2): true], grid: [[1, -2], [], [127]], small: 0.1, big: UInt64.max,
        negative: -32768, maybe: nil, explicitNull: nil, identifier: UUID(), tenant: TenantID(rawValue: "t-1")!, text: "日本 🙂 \u{1F}", nothing: .init(),
        oddKeys: ["quote \" backslash \\ newline \n": 1, "": 2])

    @Test func nestedContainersEnumsDictionariesAndNumbersStream() throws {
        let streamed = try Self.streamingOnly.encode(Self.nested)
        #expect(try Self.value(streamed) == Self.value(Self.foundation(Self.nested)), "\(String(buffer: streamed))")
        #expect(try JSONCoding.decoder.decode(Nested.self, from: Data(streamed.readableBytesView)) == Self.nested)
        let text = String(buffer: streamed)
        #expect(text.contains("\"explicitNull\":null") && !text.contains("\"maybe\""))
        #expect(text.contains("\"small\":0.1,"), "a Float in its own shortest form: \(text)")
        // Top-level leaves and arrays too.
        #expect(String(buffer: try Self.streamingOnly.encode("a\"b")) == #""a\"b""#)
        #expect(String(buffer: try Self.streamingOnly.encode(42)) == "42")
        #expect(String(buffer: try Self.streamingOnly.encode([true, false])) == "[true,false]")
        #expect(String(buffer: try Self.streamingOnly.encode([Int?.none, 1])) == "[null,1]")
    }

    /// Writes to its parent after opening a nested container, then to the nested one again: a stream
    /// would have closed it already.
    struct OutOfOrder: Encodable {
        enum Handling { case passOn, swallow, wrap }
        struct Wrapped: Error { var cause: any Error }
        var handling = Handling.passOn
        enum Keys: String, CodingKey { case inner, after }
        enum Inner: String, CodingKey { case late }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            var inner = container.nestedContainer(keyedBy: Inner.self, forKey: .inner)
            try container.encode(1, forKey: .after)
            switch handling {
            case .passOn: try inner.encode(2, forKey: .late)
            case .swallow: try? inner.encode(2, forKey: .late)
            case .wrap:
                do { try inner.encode(2, forKey: .late) } catch { throw Wrapped(cause: error) }
            }
        }
    }

    struct WithSuper: Encodable {
        enum Keys: String, CodingKey { case own }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode("x", forKey: .own)
            try "base".encode(to: container.superEncoder())
        }
    }

    /// Asks for a super encoder and writes nothing to it: `JSONEncoder` still writes `"super": {}`.
    struct WithEmptySuper: Encodable {
        enum Keys: String, CodingKey { case own }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode("x", forKey: .own)
            _ = container.superEncoder()
        }
    }

    struct WithBytes: Encodable {
        var bytes = Data([0, 1, 2, 250])
        var amount = Decimal(string: "12.50")!
        var link = URL(string: "https://example.com/a?b=c")!
    }

    @Test func whatCannotStreamFallsBackToJSONEncoder() throws {
        let encoder = JSONCoding.streaming
        for value in [OutOfOrder(), OutOfOrder(handling: .swallow), OutOfOrder(handling: .wrap)] as [any Encodable] + [WithSuper(), WithEmptySuper(), WithBytes()] {
            let streamed = try encoder.encode(value)
            #expect(try Self.value(streamed) == Self.value(Self.foundation(value)), "\(type(of: value)): \(String(buffer: streamed))")
            // And it was the fallback that wrote it.
            #expect(throws: FellBack.self) { try Self.streamingOnly.encode(value) }
        }
        for handling in [OutOfOrder.Handling.swallow, .wrap] {
            let value = try Self.value(try encoder.encode(OutOfOrder(handling: handling)))
            #expect(value == .object(["inner": .object(["late": 2]), "after": 1]))
        }
        // An error of the value's own is passed on, not sent to the fallback.
        #expect(throws: OutOfOrder.Wrapped.self) { try Self.streamingOnly.encode(Failing()) }
    }

    struct Failing: Encodable {
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: OutOfOrder.Keys.self)
            try container.encode(1, forKey: .after)
            throw OutOfOrder.Wrapped(cause: CancellationError())
        }
    }

    @Test func numbersJSONCannotCarryAreRefusedAsJSONEncoderRefusesThem() throws {
        for value in [Double.nan, .infinity] {
            #expect(throws: EncodingError.self) { try JSONCoding.streaming.encode(["x": value]) }
            #expect(throws: EncodingError.self) { try Self.foundation(["x": value]) }
        }
        #expect(throws: EncodingError.self) { try JSONCoding.streaming.encode([Float.nan]) }
    }
}
