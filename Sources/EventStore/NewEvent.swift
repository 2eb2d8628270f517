import Foundation
import NIOCore
import NIOFoundationCompat
import SharedTypes

/// An event to append: its id (the idempotency key), its type, its JSON payload and its metadata.
public struct NewEvent: Sendable {
    public var eventId: UUID
    public var type: String
    /// The payload, UTF-8 JSON.
    public var data: ByteBuffer
    public var metadata: EventMetadata

    public init(eventId: UUID = UUID(), type: String, data: ByteBuffer, metadata: EventMetadata = EventMetadata()) {
        self.eventId = eventId
        self.type = type
        self.data = data
        self.metadata = metadata
    }

    /// Creates an event whose payload is `payload` encoded as JSON.
    ///
    /// - Throws: The encoder's error when the payload cannot be encoded.
    public init(eventId: UUID = UUID(), type: String, encoding payload: some Encodable, metadata: EventMetadata = EventMetadata()) throws {
        self.init(eventId: eventId, type: type, data: try JSONCoding.encoder.encodeAsByteBuffer(payload, allocator: ByteBufferAllocator()), metadata: metadata)
    }
}

/// The JSON coders the store uses; one of each, configured once.
public enum JSONCoding {
    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()

    public static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()
}
