import Crypto
import Foundation
import NIOCore

/// The hash chain of a stream (see `Migrations/0010_event_hash_chain.sql`), computed here independently of
/// the SQL that writes it, so that a verifier does not take the database's word for it.
///
/// `hash(e) = SHA-256(previous ‖ int8 position ‖ int8 version ‖ uuid id ‖ int8 recorded-at µs ‖ text type ‖
/// text data ‖ text metadata)`: integers big-endian, each text as an int4 byte length and its UTF-8 bytes,
/// data and metadata as PostgreSQL writes a `jsonb` value out. The first event's previous hash is
/// ``genesis(tenant:stream:)``.
public enum EventChain {
    /// What a stream's first event chains to: SHA-256 of `convo.events.v1`, the tenant and the stream.
    public static func genesis(tenant: String, stream: String) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(data: Array("convo.events.v1".utf8))
        updateField(&hasher, Array(tenant.utf8))
        updateField(&hasher, Array(stream.utf8))
        return Array(hasher.finalize())
    }

    /// The hash of one event, chained to `previous`.
    public static func hash(
        previous: [UInt8], position: Int64, version: Int64, eventId: UUID, recordedAtMicroseconds: Int64, type: String, data: ByteBuffer,
        metadata: ByteBuffer
    ) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(data: previous)
        updateInteger(&hasher, position)
        updateInteger(&hasher, version)
        withUnsafeBytes(of: eventId.uuid) { hasher.update(bufferPointer: $0) }
        updateInteger(&hasher, recordedAtMicroseconds)
        updateField(&hasher, Array(type.utf8))
        data.withUnsafeReadableBytes { bytes in
            updateInteger(&hasher, Int32(bytes.count))
            hasher.update(bufferPointer: bytes)
        }
        metadata.withUnsafeReadableBytes { bytes in
            updateInteger(&hasher, Int32(bytes.count))
            hasher.update(bufferPointer: bytes)
        }
        return Array(hasher.finalize())
    }

    private static func updateField(_ hasher: inout SHA256, _ bytes: [UInt8]) {
        updateInteger(&hasher, Int32(bytes.count))
        hasher.update(data: bytes)
    }

    private static func updateInteger<T: FixedWidthInteger>(_ hasher: inout SHA256, _ value: T) {
        withUnsafeBytes(of: value.bigEndian) { hasher.update(bufferPointer: $0) }
    }
}

extension Array where Element == UInt8 {
    /// Lowercase hex.
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(count * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
