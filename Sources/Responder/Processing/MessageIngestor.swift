import Crypto
import EventStore
import Foundation
import NIOCore
import Logging
import SharedTypes

/// A visitor message as a caller hands it in.
public struct IncomingMessage: Sendable, Equatable {
    public var tenant: TenantID
    public var conversationId: ConversationID
    public var visitorUid: VisitorUID
    /// The caller's id of the message: its idempotency key within the conversation.
    public var messageId: String
    public var text: String
    public var sentAt: Date

    public init(tenant: TenantID, conversationId: ConversationID, visitorUid: VisitorUID, messageId: String, text: String, sentAt: Date) {
        self.tenant = tenant
        self.conversationId = conversationId
        self.visitorUid = visitorUid
        self.messageId = messageId
        self.text = text
        self.sentAt = sentAt
    }

    /// The longest text a message may carry, in Unicode code points.
    public static let maxTextLength = 10_000
}

/// Where an ingested message was stored.
public struct IngestResult: Sendable, Equatable {
    public var eventId: UUID
    /// The message's version in the `messages-` stream.
    public var streamVersion: Int64
    public var globalPosition: Int64
    /// Whether the message had been ingested before (nothing was written this time).
    public var isDuplicate: Bool
    /// Whether this message started the conversation.
    public var startedConversation: Bool
}

/// Appends visitor messages to their conversation's `messages-` stream: no lock, idempotent by the caller's
/// message id (the event id is derived from it), and refused for a conversation of another visitor.
public struct MessageIngestor: Sendable {
    public let store: any EventStore
    let logger: Logger

    public init(store: any EventStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// Stores the message.
    ///
    /// - Throws: ``ResponderError`` with ``ResponderError/Code/invalidMessage`` for a bad message,
    ///   ``ResponderError/Code/conversationOwnedByAnotherVisitor``; ``EventStoreError`` when PostgreSQL fails.
    public func ingest(_ message: IncomingMessage) async throws -> IngestResult {
        try Self.validate(message)
        let stream = message.conversationId.messagesStream
        let received = try Self.receivedEvent(message)

        var first = try await store.readStream(stream, tenant: message.tenant, fromVersion: 1, maxCount: 1).first
        if first == nil {
            let started = try Self.startedEvent(message)
            do {
                let result = try await store.append([started, received], to: stream, tenant: message.tenant, expectedVersion: .noStream)
                let stored = result.events[1]
                if result.isDuplicate { try await requireSameContent(message, at: stored.streamVersion) }
                return IngestResult(
                    eventId: stored.eventId, streamVersion: stored.streamVersion, globalPosition: stored.globalPosition,
                    isDuplicate: result.isDuplicate, startedConversation: !result.isDuplicate)
            } catch let error as EventStoreError where error.code == .wrongExpectedVersion || error.code == .duplicateEventID {
                // Another message started the conversation first; it may be another visitor's.
                first = try await store.readStream(stream, tenant: message.tenant, fromVersion: 1, maxCount: 1).first
            }
        }
        guard let first, first.type == ConversationStarted.eventType else {
            throw EventStoreError(code: .storageFailure, message: "conversation \(message.conversationId) has no ConversationStarted event")
        }
        let owner = try first.decode(ConversationStarted.self).visitorUid
        guard owner == message.visitorUid else {
            throw ResponderError(
                code: .conversationOwnedByAnotherVisitor, message: "conversation \(message.conversationId) belongs to another visitor")
        }
        let result = try await store.append([received], to: stream, tenant: message.tenant, expectedVersion: .streamExists)
        let stored = result.events[0]
        if result.isDuplicate { try await requireSameContent(message, at: stored.streamVersion) }
        return IngestResult(
            eventId: stored.eventId, streamVersion: stored.streamVersion, globalPosition: stored.globalPosition, isDuplicate: result.isDuplicate,
            startedConversation: false)
    }
}

extension MessageIngestor {
    /// Checks a message before anything is read or written.
    public static func validate(_ message: IncomingMessage) throws {
        // Lengths in Unicode code points, as the OpenAPI document's maxLength (JSON Schema) counts them.
        guard (1...200).contains(message.messageId.unicodeScalars.count) else {
            throw ResponderError(code: .invalidMessage, message: "messageId has 1 to 200 characters")
        }
        // PostgreSQL's text and jsonb cannot hold U+0000: refused here, before it reaches a batch.
        guard !message.messageId.unicodeScalars.contains("\u{0}") else {
            throw ResponderError(code: .invalidMessage, message: "messageId contains U+0000, which cannot be stored")
        }
        try validateText(message.text)
    }

    /// The rules of a message's text, a visitor's or an agent's: at most ``IncomingMessage/maxTextLength``
    /// code points, something visible, no U+0000.
    ///
    /// - Throws: ``ResponderError`` `messageTooLong` or `invalidMessage`.
    public static func validateText(_ text: String) throws {
        guard text.unicodeScalars.count <= IncomingMessage.maxTextLength else {
            throw ResponderError(code: .messageTooLong, message: "text has at most \(IncomingMessage.maxTextLength) characters")
        }
        guard text.hasVisibleCharacters else {
            throw ResponderError(code: .invalidMessage, message: "text is empty")
        }
        guard !text.unicodeScalars.contains("\u{0}") else {
            throw ResponderError(code: .invalidMessage, message: "text contains U+0000, which cannot be stored")
        }
    }

    /// The message's event; its id is derived from tenant, conversation and message id, so a retry maps to it.
    static func receivedEvent(_ message: IncomingMessage) throws -> NewEvent {
        NewEvent(
            eventId: StableID.make("message", message.tenant.rawValue, message.conversationId.rawValue, message.messageId),
            type: VisitorMessageReceived.eventType, data: receivedPayload(message),
            metadata: EventMetadata(actorId: message.visitorUid.actorID), subject: PersonalDataSubject(visitor: message.visitorUid, mayCreateKey: true))
    }

    /// The `VisitorMessageReceived` payload, written by hand: every ingested message has one, and `JSONEncoder`
    /// was a good part of what ingest cost. The same document as `VisitorMessageReceived`'s `Codable` gives
    /// (a test decodes it back).
    static func receivedPayload(_ message: IncomingMessage) -> ByteBuffer {
        var data = ByteBuffer()
        data.reserveCapacity(96 + message.messageId.utf8.count + message.visitorUid.rawValue.utf8.count + message.text.utf8.count)
        data.writeStaticString("{\"messageId\":")
        JSONWriter.string(message.messageId, into: &data)
        data.writeStaticString(",\"visitorUid\":")
        JSONWriter.string(message.visitorUid.rawValue, into: &data)
        data.writeStaticString(",\"text\":")
        JSONWriter.string(message.text, into: &data)
        data.writeStaticString(",\"sentAt\":")
        JSONWriter.string(Timestamp.string(from: message.sentAt), into: &data)
        data.writeStaticString("}")
        return data
    }

    /// The conversation's first event, when this message starts it.
    static func startedEvent(_ message: IncomingMessage) throws -> NewEvent {
        try NewEvent(
            eventId: StableID.make("started", message.tenant.rawValue, message.conversationId.rawValue),
            type: ConversationStarted.eventType, encoding: ConversationStarted(visitorUid: message.visitorUid, startedAt: message.sentAt),
            metadata: EventMetadata(actorId: message.visitorUid.actorID))
    }

    /// A retry must carry what the first request did: the same id with another text or visitor is a client
    /// bug (or two messages sharing an id), refused rather than answered as a duplicate of something else.
    func requireSameContent(_ message: IncomingMessage, at version: Int64) async throws {
        let stream = message.conversationId.messagesStream
        guard let original = try await store.readStream(stream, tenant: message.tenant, fromVersion: version, maxCount: 1).first,
            original.type == VisitorMessageReceived.eventType,
            // An erased original cannot be compared: the retry is answered as the duplicate it claims to be.
            !original.isErased
        else { return }
        let stored = try original.decode(VisitorMessageReceived.self)
        guard stored.text == message.text, stored.visitorUid == message.visitorUid else {
            throw ResponderError(
                code: .messageIdReused, message: "message id '\(message.messageId)' was already used in this conversation for another message")
        }
    }
}

/// Event ids derived from names, so a retried request maps to the same event (UUID version 8 from SHA-256).
public enum StableID {
    public static func make(_ parts: String...) -> UUID {
        var hasher = SHA256()
        for part in parts {
            hasher.update(data: Data(part.utf8))
            hasher.update(data: Data([0]))
        }
        var bytes = Array(hasher.finalize().prefix(16))
        bytes[6] = (bytes[6] & 0x0F) | 0x80
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        return UUID(uuid: (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]))
    }
}

extension String {
    /// Whether anything but white space and newlines is in it: a scan that stops at the first such
    /// character, not a trimmed copy (this runs for every ingested message).
    public var hasVisibleCharacters: Bool {
        unicodeScalars.contains { !$0.properties.isWhitespace }
    }
}
