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
    /// The visitor whose personal data the event carries: the store seals ``personalFields`` with their
    /// data key. An event with personal fields and no subject is refused.
    public var personalDataSubject: PersonalDataSubject?
    /// The top-level members of ``data`` that are personal data (``PersonalData``).
    public var personalFields: [String]

    /// Creates an event from its JSON payload; its personal fields are those ``PersonalData`` lists for `type`.
    public init(
        eventId: UUID = UUID(), type: String, data: ByteBuffer, metadata: EventMetadata = EventMetadata(), subject: PersonalDataSubject? = nil
    ) {
        self.eventId = eventId
        self.type = type
        self.data = data
        self.metadata = metadata
        self.personalDataSubject = subject
        self.personalFields = PersonalData.fields(ofType: type)
    }

    /// Creates an event whose payload is `payload` encoded as JSON; a payload that declares its personal
    /// fields (``PersonalFieldsDeclaring``) is taken at its word, any other by its type's entry in ``PersonalData``.
    ///
    /// - Throws: The encoder's error when the payload cannot be encoded.
    public init(
        eventId: UUID = UUID(), type: String, encoding payload: some Encodable, metadata: EventMetadata = EventMetadata(),
        subject: PersonalDataSubject? = nil
    ) throws {
        self.init(
            eventId: eventId, type: type, data: try JSONCoding.streaming.encode(payload), metadata: metadata,
            subject: subject)
        if let declaring = payload as? any PersonalFieldsDeclaring { personalFields = declaring.personalFields }
    }
}

/// The JSON coders the store uses; one of each, configured once. Dates are RFC 3339 with microseconds
/// (``Timestamp``): an event keeps the sub-second part of what its caller sent, for good; events stored in
/// whole seconds before read as they are.
public enum JSONCoding {
    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(Timestamp.string(from: date))
        }
        return encoder
    }()

    /// The payloads of events: the same JSON as ``encoder`` gives (members in encoding order instead of
    /// sorted: the `jsonb` column orders them), written as the value encodes.
    public static let streaming = StreamingJSONEncoder(
        dateString: { Timestamp.string(from: $0) }, fallback: { try encoder.encodeAsByteBuffer($0, allocator: ByteBufferAllocator()) })

    public static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = Timestamp.date(from: text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not an RFC 3339 date-time")
            }
            return date
        }
        return decoder
    }()
}
