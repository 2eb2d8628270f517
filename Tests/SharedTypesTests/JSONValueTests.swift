import Foundation
import SharedTypes
import Testing

@Suite struct JSONValueTests {
    private func decode(_ json: String) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8))
    }

    @Test func everyKindDecodesAsItself() throws {
        #expect(try decode("null") == .null)
        #expect(try decode("true") == .bool(true))
        #expect(try decode("false") == .bool(false))
        #expect(try decode("1") == .number(1))
        #expect(try decode("0") == .number(0))
        #expect(try decode("-2.5") == .number(-2.5))
        #expect(try decode(#""1""#) == .string("1"))
        #expect(try decode(#""true""#) == .string("true"))
        #expect(try decode("[]") == .array([]))
        #expect(try decode("{}") == .object([:]))
        #expect(
            try decode(#"{"a": [1, "b", false, null, {"c": {}}], "d": "e"}"#)
                == .object(["a": .array([.number(1), .string("b"), .bool(false), .null, .object(["c": .object([:])])]), "d": .string("e")]))
    }

    @Test func aValueRoundTrips() throws {
        let value: JSONValue = .object(["tag": .string("vip"), "count": .number(3), "on": .bool(true), "list": .array([.null, .string("x")])])
        #expect(try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(value)) == value)
    }
}
