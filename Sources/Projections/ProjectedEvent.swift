import EventStore
import SharedTypes

/// A stored event with its payload decoded once, for every projection that folds it.
///
/// Decoding JSON is most of what a fold costs: a rebuild or a runner decodes each batch once (a rebuild on
/// a task of its own, beside the fold) and hands the same decoded events to every projection. A payload
/// that does not decode is kept as ``Payload/undecodable(_:)``: only the projections that read that event
/// stop there, with the position and the decoder's reason, exactly as if each had decoded it itself.
///
/// The stored event's fields read through it: `event.stream`, `event.type`, `event.recordedAt`.
///
/// A class, so that handing one event to several projections, slices and batches shares one object
/// instead of copying a dozen strings and buffers (retains and releases were a fifth of a rebuild).
@dynamicMemberLookup
public final class ProjectedEvent: Sendable {
    public enum Payload: Sendable, Equatable {
        case conversationStarted(ConversationStarted)
        case visitorMessage(VisitorMessageReceived)
        case workflow(WorkflowEvent)
        /// A type no projection reads (the audit stream's).
        case unread
        /// A type a projection reads whose payload does not decode: why.
        case undecodable(String)
    }

    public let recorded: RecordedEvent
    public let payload: Payload

    /// Decodes `recorded`'s payload by its type.
    public init(_ recorded: RecordedEvent) {
        self.recorded = recorded
        do {
            switch recorded.type {
            case ConversationStarted.eventType:
                payload = .conversationStarted(try recorded.read(ConversationStarted.self))
            case VisitorMessageReceived.eventType:
                payload = .visitorMessage(try recorded.read(VisitorMessageReceived.self))
            default:
                payload = try WorkflowEvent.decode(recorded).map(Payload.workflow) ?? .unread
            }
        } catch {
            payload = .undecodable("\(error)")
        }
    }

    public init(recorded: RecordedEvent, payload: Payload) {
        self.recorded = recorded
        self.payload = payload
    }

    public subscript<T>(dynamicMember keyPath: KeyPath<RecordedEvent, T>) -> T { recorded[keyPath: keyPath] }

    /// The workflow event this is, or the fold error saying why it is none.
    public func workflowEvent() throws -> WorkflowEvent {
        switch payload {
        case .workflow(let event): return event
        case .undecodable(let reason): throw FoldError(recorded, "payload does not decode: \(reason)")
        default: throw FoldError(recorded, "not a workflow event type")
        }
    }

    /// The payload of a message event of type `T`, or the fold error saying why it is none.
    func message<T: DomainEvent>(_ type: T.Type) throws -> T {
        switch payload {
        case .conversationStarted(let started as T): return started
        case .visitorMessage(let message as T): return message
        case .undecodable(let reason): throw FoldError(recorded, "payload does not decode as \(T.self): \(reason)")
        default: throw FoldError(recorded, "not a \(T.eventType) event")
        }
    }

    /// Decodes a batch: what a runner or rebuild hands its writers.
    public static func decode(_ batch: [RecordedEvent]) -> [ProjectedEvent] {
        batch.map(ProjectedEvent.init)
    }

    /// Decodes a batch in `parts` slices on child tasks, in order: a core left idle while another folds
    /// takes a slice.
    public static func decode(_ batch: [RecordedEvent], parts: Int) async -> [ProjectedEvent] {
        let size = (batch.count + parts - 1) / max(1, parts)
        guard parts > 1, batch.count > 1 else { return decode(batch) }
        return await withTaskGroup(of: (Int, [ProjectedEvent]).self) { group in
            for start in stride(from: 0, to: batch.count, by: size) {
                let slice = Array(batch[start..<min(start + size, batch.count)])
                group.addTask { (start, decode(slice)) }
            }
            var slices: [(Int, [ProjectedEvent])] = []
            for await slice in group { slices.append(slice) }
            return slices.sorted { $0.0 < $1.0 }.flatMap(\.1)
        }
    }
}
