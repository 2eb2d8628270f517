import EventStore
import Foundation
import SharedTypes

/// One message to an endpoint, made from one stored event: its Standard Webhooks id, its type, the
/// conversation that orders it, and the JSON body that is signed and sent.
///
/// The body is `{"type", "timestamp", "data"}`; `data` names the conversation, the stored event (id, type,
/// position, stream), who acted, and carries the event's payload as stored. The id is the event's, so every
/// attempt and every redelivery of one event has the same `webhook-id` and a receiver can drop duplicates.
public struct WebhookMessage: Sendable, Equatable {
    public var id: String
    public var type: WebhookEventType
    public var conversationId: String
    public var eventId: UUID
    public var position: Int64
    public var recordedAt: Date
    public var body: Data

    /// The message of `event`; `nil` when no endpoint is told about its type, or it names no conversation.
    public init?(_ event: RecordedEvent) {
        guard let type = WebhookEventType.of(storedType: event.type) else { return nil }
        let payload: JSONValue
        do { payload = try event.decode(JSONValue.self) } catch { return nil }
        let conversation: String
        switch event.stream.category {
        case "messages", "workflow": conversation = event.stream.id
        default:
            guard case .object(let fields) = payload, case .string(let id)? = fields["conversationId"] else { return nil }
            conversation = id
        }
        var data: [String: JSONValue] = [
            "conversationId": .string(conversation),
            "eventId": .string(event.eventId.uuidString.lowercased()),
            "eventType": .string(event.type),
            "position": .number(Double(event.globalPosition)),
            "stream": .string(event.stream.description),
            "payload": payload,
        ]
        if let actor = try? event.metadata().actorId { data["actorId"] = .string(actor) }
        // Sent after its visitor was forgotten (a retry, a redelivery): the payload's personal fields are erased.
        if event.isErased { data["erased"] = .bool(true) }
        switch event.type {
        case VisitorMessageReceived.eventType: data["role"] = .string("visitor")
        case AssistantMessageSent.eventType: data["role"] = .string("assistant")
        case AgentMessageSent.eventType: data["role"] = .string("agent")
        default: break
        }
        let envelope: [String: JSONValue] = [
            "type": .string(type.rawValue),
            "timestamp": .string(Timestamp.string(from: event.recordedAt)),
            "data": .object(data),
        ]
        guard let body = try? JSONCoding.encoder.encode(JSONValue.object(envelope)) else { return nil }
        self.id = Self.messageID(event.eventId)
        self.type = type
        self.conversationId = conversation
        self.eventId = event.eventId
        self.position = event.globalPosition
        self.recordedAt = event.recordedAt
        self.body = body
    }

    /// `msg_` and the event id's 32 hex digits.
    public static func messageID(_ eventId: UUID) -> String {
        "msg_" + eventId.uuidString.lowercased().replacingOccurrences(of: "-", with: "")
    }

}
