import NIOCore
import PostgresNIO

/// JSON text bound to or read from a `jsonb` column in PostgreSQL's binary format (a version byte, then the
/// text), without decoding it.
struct JSONB: PostgresNonThrowingEncodable, PostgresArrayEncodable, PostgresDecodable {
    static var psqlType: PostgresDataType { .jsonb }
    static var psqlFormat: PostgresFormat { .binary }
    static var psqlArrayType: PostgresDataType { .jsonbArray }

    private static let version: UInt8 = 1

    var text: ByteBuffer

    init(_ text: ByteBuffer) { self.text = text }

    func encode<E: PostgresJSONEncoder>(into buffer: inout ByteBuffer, context: PostgresEncodingContext<E>) {
        buffer.writeInteger(Self.version)
        buffer.writeImmutableBuffer(text)
    }

    init<D: PostgresJSONDecoder>(from buffer: inout ByteBuffer, type: PostgresDataType, format: PostgresFormat, context: PostgresDecodingContext<D>) throws {
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
