/// What in an event is a visitor's personal data, and whose: the fields the event store seals with the
/// visitor's own data key (see `PersonalDataVault` in EventStore), so that destroying the key erases them
/// everywhere at once while the event itself, its place in the chain and its structure stay.
///
/// Only top-level members of an event's JSON payload are sealed; a sealed member's whole value (a text, an
/// object of tool arguments) becomes one ciphertext.
public enum PersonalData {
    /// What a sealed member reads as once its key is destroyed.
    public static let erasedPlaceholder = "[erased]"

    /// The members of each event type that can hold personal data. For ``ToolCalled`` the arguments are
    /// sealed when the tool's catalogue entry marks them personal (see ``fields(of:)``); an event appended
    /// as raw JSON is sealed by this table, which is the stricter answer.
    ///
    /// The table is part of the stored format: an event sealed with exactly its type's members says so with
    /// the short seal record, which names no members, and is opened by this table. A type's list may not
    /// change once events of it are stored (a new type may be added).
    public static let fieldsByType: [String: [String]] = [
        VisitorMessageReceived.eventType: ["text"],
        AssistantMessageSent.eventType: ["text"],
        AgentMessageSent.eventType: ["text"],
        InternalNoteAdded.eventType: ["text"],
        WorkflowVariableSet.eventType: ["value"],
        ToolCalled.eventType: ["arguments"],
    ]

    /// The personal members of an event type appended as raw JSON.
    public static func fields(ofType type: String) -> [String] { fieldsByType[type] ?? [] }

    /// The personal members of a payload.
    public static func fields(of payload: any DomainEvent) -> [String] {
        if let call = payload as? ToolCalled {
            guard let tool = ToolName(rawValue: call.tool) else { return ["arguments"] }
            return ToolCatalogue.definition(tool).personal ? ["arguments"] : []
        }
        return fields(ofType: type(of: payload).eventType)
    }
}

/// A payload that says which of its top-level members are personal data: every domain event (by its type,
/// and a tool call by its tool), and a workflow event by the payload it wraps. The event store asks this of
/// what it encodes, knowing no event type.
public protocol PersonalFieldsDeclaring {
    var personalFields: [String] { get }
}

extension PersonalFieldsDeclaring where Self: DomainEvent {
    public var personalFields: [String] { PersonalData.fields(of: self) }
}

extension WorkflowEvent: PersonalFieldsDeclaring {
    public var personalFields: [String] { PersonalData.fields(of: payload) }
}

/// Whose personal data an appended event carries, and whether the append may give that visitor a new data
/// key (after one was destroyed, or for the first time).
public struct PersonalDataSubject: Sendable, Hashable {
    public var visitor: VisitorUID
    /// `true` for what a person says now (a visitor's message, an agent's); `false` for what the responder
    /// derives from what it read, which must not outlive the key it was read with: such an append is
    /// refused when the visitor has no live key.
    public var mayCreateKey: Bool

    public init(visitor: VisitorUID, mayCreateKey: Bool) {
        self.visitor = visitor
        self.mayCreateKey = mayCreateKey
    }
}
