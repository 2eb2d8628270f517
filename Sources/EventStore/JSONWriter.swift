import Foundation
import NIOCore
import SharedTypes

/// JSON text written straight into a buffer, for what every event carries (its metadata): `JSONEncoder`
/// builds a tree of boxed values first and cost several per cent of each append. Key order is whatever
/// the dictionary gives: the column is `jsonb`, which keeps its own order.
public enum JSONWriter {
    /// The metadata as a JSON object: the named members when set, then the free ones.
    ///
    /// - Throws: `EncodingError.invalidValue` for a number JSON cannot carry (NaN, ±infinity), as
    ///   `JSONEncoder` does.
    public static func metadata(_ metadata: EventMetadata) throws -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(128 + metadata.extra.count * 48)
        out.writeInteger(UInt8(ascii: "{"))
        var first = true
        func key(_ name: String) {
            if !first { out.writeInteger(UInt8(ascii: ",")) }
            first = false
            string(name, into: &out)
            out.writeInteger(UInt8(ascii: ":"))
        }
        if let correlationId = metadata.correlationId {
            key("correlationId")
            string(correlationId.uuidString, into: &out)
        }
        if let causationId = metadata.causationId {
            key("causationId")
            string(causationId.uuidString, into: &out)
        }
        if let actorId = metadata.actorId {
            key("actorId")
            string(actorId, into: &out)
        }
        for (name, value) in metadata.extra where name != "correlationId" && name != "causationId" && name != "actorId" {
            key(name)
            try self.value(value, into: &out)
        }
        out.writeInteger(UInt8(ascii: "}"))
        return out
    }

    static func value(_ value: JSONValue, into out: inout ByteBuffer) throws {
        switch value {
        case .null: out.writeStaticString("null")
        case .bool(let flag): out.writeStaticString(flag ? "true" : "false")
        case .number(let number): try self.number(number, into: &out)
        case .string(let text): string(text, into: &out)
        case .array(let items):
            out.writeInteger(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out.writeInteger(UInt8(ascii: ",")) }
                try self.value(item, into: &out)
            }
            out.writeInteger(UInt8(ascii: "]"))
        case .object(let members):
            out.writeInteger(UInt8(ascii: "{"))
            var first = true
            for (name, member) in members {
                if !first { out.writeInteger(UInt8(ascii: ",")) }
                first = false
                string(name, into: &out)
                out.writeInteger(UInt8(ascii: ":"))
                try self.value(member, into: &out)
            }
            out.writeInteger(UInt8(ascii: "}"))
        }
    }

    /// Whole numbers up to the type's exact integers (2^53 for a `Double`, 2^24 for a `Float`) as integers,
    /// others in the type's shortest form that reads back the same (`1e-05`, `0.1`: both JSON).
    static func number<F: BinaryFloatingPoint & LosslessStringConvertible>(_ number: F, into out: inout ByteBuffer) throws {
        guard number.isFinite else {
            throw EncodingError.invalidValue(number, .init(codingPath: [], debugDescription: "\(number) is not a JSON number"))
        }
        if number == number.rounded(), abs(number) <= F(sign: .plus, exponent: F.Exponent(F.significandBitCount + 1), significand: 1) {
            out.writeString(String(Int64(number)))
        } else {
            out.writeString(number.description)
        }
    }

    /// A JSON string (RFC 8259 §7): quotation mark, reverse solidus and control characters escaped, the rest
    /// as its UTF-8.
    public static func string(_ text: String, into out: inout ByteBuffer) {
        out.writeInteger(UInt8(ascii: "\""))
        var text = text
        text.withUTF8 { bytes in
            var plain = 0
            for index in bytes.indices {
                let byte = bytes[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                out.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[plain..<index]))
                plain = index + 1
                switch byte {
                case UInt8(ascii: "\""): out.writeStaticString("\\\"")
                case UInt8(ascii: "\\"): out.writeStaticString("\\\\")
                case 0x0A: out.writeStaticString("\\n")
                case 0x0D: out.writeStaticString("\\r")
                case 0x09: out.writeStaticString("\\t")
                default:
                    out.writeStaticString("\\u00")
                    out.writeInteger(hexDigit(byte >> 4))
                    out.writeInteger(hexDigit(byte & 0x0F))
                }
            }
            out.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[plain...]))
        }
        out.writeInteger(UInt8(ascii: "\""))
    }

    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
    }
}
