import Foundation
import NIOCore
import NIOFoundationCompat
import SharedTypes

/// An event as the store holds it.
public struct RecordedEvent: Sendable, Equatable {
    /// The event's place in the whole store; grows with commit order (see ``PostgresEventStore``).
    public let globalPosition: Int64
    public let eventId: UUID
    public let tenant: TenantID
    public let stream: StreamName
    /// The event's place in its stream: 1, 2, 3…
    public let streamVersion: Int64
    public let type: String
    /// The payload, UTF-8 JSON.
    public internal(set) var data: ByteBuffer
    /// The metadata, UTF-8 JSON; decoded on demand by ``metadata()`` because most readers never need it.
    public let metadataJSON: ByteBuffer
    public let recordedAt: Date
    /// Whether personal members of the payload were erased (their visitor forgotten): they read as
    /// ``PersonalData/erasedPlaceholder``.
    public internal(set) var isErased: Bool = false

    public init(
        globalPosition: Int64, eventId: UUID, tenant: TenantID, stream: StreamName, streamVersion: Int64, type: String,
        data: ByteBuffer, metadataJSON: ByteBuffer, recordedAt: Date
    ) {
        self.globalPosition = globalPosition
        self.eventId = eventId
        self.tenant = tenant
        self.stream = stream
        self.streamVersion = streamVersion
        self.type = type
        self.data = data
        self.metadataJSON = metadataJSON
        self.recordedAt = recordedAt
    }

    /// The same event with another payload: what opening its sealed members gives.
    func replacing(data: ByteBuffer, erased: Bool) -> RecordedEvent {
        var event = RecordedEvent(
            globalPosition: globalPosition, eventId: eventId, tenant: tenant, stream: stream, streamVersion: streamVersion, type: type, data: data,
            metadataJSON: metadataJSON, recordedAt: recordedAt)
        event.isErased = erased
        return event
    }

    /// Decodes the payload.
    ///
    /// - Throws: `DecodingError` when the payload is not a `T`.
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws -> T {
        try Self.decode(T.self, from: data)
    }

    /// Decodes JSON straight from the buffer's bytes. `JSONDecoder.decode(_:from: ByteBuffer)` copies them
    /// into a new `Data` first, a malloc and a copy per event that a rebuild does a million times.
    static func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
        try buffer.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress, bytes.count > 0 else { return try JSONCoding.decoder.decode(T.self, from: Data()) }
            // The Data never outlives this closure: the decoder copies what it keeps.
            let view = Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base), count: bytes.count, deallocator: .none)
            return try JSONCoding.decoder.decode(T.self, from: view)
        }
    }

    /// Decodes the metadata.
    ///
    /// - Throws: `DecodingError` when the stored metadata is not valid.
    public func metadata() throws -> EventMetadata {
        try Self.decode(EventMetadata.self, from: metadataJSON)
    }
}

/// Where the events of one append were stored.
public struct AppendResult: Sendable, Equatable {
    public struct Recorded: Sendable, Equatable {
        public let eventId: UUID
        public let streamVersion: Int64
        public let globalPosition: Int64
        public let recordedAt: Date
    }

    public let stream: StreamName
    /// One per appended event, in order.
    public let events: [Recorded]
    /// Whether every event was already stored by an earlier append with the same ids (nothing was written).
    public let isDuplicate: Bool

    /// The stream's version after the append: the version of its last event.
    public var streamVersion: Int64 { events.last?.streamVersion ?? 0 }
    /// The global position of the append's last event.
    public var lastPosition: Int64 { events.last?.globalPosition ?? 0 }
}

extension RecordedEvent: StoredPayload {
    public func withPayloadBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try data.withUnsafeReadableBytes(body)
    }

    /// Decodes a payload that reads itself (``PayloadReadable``) by hand, `JSONDecoder` only when the
    /// reader cannot: what every caller that names one of those types gets.
    ///
    /// - Throws: `DecodingError` when the payload is not a `T`.
    public func decode<T: PayloadReadable>(_ type: T.Type = T.self) throws -> T {
        try read(T.self)
    }
}

/// A stream of a tenant, as a dictionary key.
public struct StreamKey: Hashable, Sendable {
    public var tenant: TenantID
    public var stream: StreamName

    public init(tenant: TenantID, stream: StreamName) {
        self.tenant = tenant
        self.stream = stream
    }
}
