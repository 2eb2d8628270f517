import NIOCore
import PostgresNIO

/// JSON text bound to or read from a `jsonb` column in PostgreSQL's binary format (a version byte, then the
/// text), without decoding it.
public struct JSONB: Sendable, PostgresNonThrowingEncodable, PostgresArrayEncodable, PostgresDecodable {
    public static var psqlType: PostgresDataType { .jsonb }
    public static var psqlFormat: PostgresFormat { .binary }
    public static var psqlArrayType: PostgresDataType { .jsonbArray }

    private static let version: UInt8 = 1

    public var text: ByteBuffer

    public init(_ text: ByteBuffer) { self.text = text }

    public func encode<E: PostgresJSONEncoder>(into buffer: inout ByteBuffer, context: PostgresEncodingContext<E>) {
        buffer.writeInteger(Self.version)
        buffer.writeImmutableBuffer(text)
    }

    public init<D: PostgresJSONDecoder>(from buffer: inout ByteBuffer, type: PostgresDataType, format: PostgresFormat, context: PostgresDecodingContext<D>) throws {
        switch (type, format) {
        case (.jsonb, .binary):
            guard buffer.readInteger(as: UInt8.self) == Self.version else { throw PostgresDecodingError.Code.failure }
            self.text = buffer.slice()
        case (.json, _), (.jsonb, .text):
            self.text = buffer.slice()
        default:
            throw PostgresDecodingError.Code.typeMismatch
        }
    }
}
