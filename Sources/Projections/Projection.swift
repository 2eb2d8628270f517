import EventStore
import SharedTypes

/// A read model kept in a table of its own: a name, a version, and a pure fold from events to rows.
///
/// The fold is split in two so the runner can load, in one query, the rows a batch of events touches:
/// ``keys(of:)`` says which rows an event changes, ``apply(_:to:key:)`` computes one row's next value. Both
/// are pure: the same events in the same order always give the same rows, which is what lets a rebuild or
/// `verify` compare the stored rows with a fresh fold. Both take the event with its payload already decoded
/// (``ProjectedEvent``), once for all the projections that fold it.
///
/// Bump ``version`` whenever the fold or the columns change: the stored rows are then stale, and `convo
/// serve` rebuilds them (blue/green) before following the events again.
public protocol Projection: Sendable {
    associatedtype Row: ProjectionRow

    /// The table's name, and the projection's name in the CLI: lowercase letters, digits and `_`.
    var name: String { get }
    var version: Int { get }

    /// The rows `event` changes; empty when the projection ignores it.
    ///
    /// - Throws: ``FoldError`` when the event should concern this projection but says too little to know
    ///   which row (a projection never skips such an event silently).
    func keys(of event: ProjectedEvent) throws -> [Row.Key]

    /// The row after `event`, from the row before it (`nil` when there was none).
    ///
    /// - Throws: ``FoldError`` when the event cannot be applied.
    func apply(_ event: ProjectedEvent, to row: Row?, key: Row.Key) throws -> Row

    /// Whether every event that changes a row of a conversation lies in that conversation's own streams
    /// (its `messages-` and `workflow-` streams), so `verify --conversation` reads only those. `false`
    /// (the default) for rows that gather several conversations, such as a visitor's: verify then reads
    /// the tenant's events.
    var rowsAreConversationLocal: Bool { get }

    /// The sealed personal members the fold reads, by event type (``PersonalData/fieldsByType``): a rebuild
    /// opens only those, and the others reach the fold as stored (sealed envelopes, `pd1:…`), never
    /// decrypted. `.all` (the default) for a fold that may read any.
    var personalDataRead: PersonalDataOpening { get }
}

extension Projection {
    public var rowsAreConversationLocal: Bool { false }
    public var personalDataRead: PersonalDataOpening { .all }
}

extension PersonalDataOpening {
    /// What the folds of `projections` read together.
    public static func read(by projections: [any Projection]) -> PersonalDataOpening {
        var types = Set<String>()
        for projection in projections {
            guard let read = projection.personalDataRead.types else { return .all }
            types.formUnion(read)
        }
        return .only(types)
    }
}

/// A row of a projection's table. Its coding keys are the column names.
public protocol ProjectionRow: Codable, Sendable, Equatable {
    associatedtype Key: Codable, Hashable, Sendable

    var key: Key { get }

    /// Every column, in table order; the key columns first.
    static var columns: [ProjectionColumn] { get }
    /// How many of ``columns``, from the first, make the primary key.
    static var keyColumnCount: Int { get }
    /// Secondary indexes, each a list of columns.
    static var indexes: [[String]] { get }
}

/// A column of a projection's table.
public struct ProjectionColumn: Sendable, Equatable {
    public var name: String
    /// The SQL type, e.g. `text`, `bigint`, `jsonb`, `text[]`.
    public var type: String
    public var nullable: Bool

    public init(_ name: String, _ type: String, nullable: Bool = false) {
        self.name = name
        self.type = type
        self.nullable = nullable
    }
}

extension Projection {
    /// Folds `events` into rows from nothing, in memory: what the stored rows must equal.
    ///
    /// - Throws: ``FoldError`` for an event the fold cannot apply.
    public func fold(_ events: some Sequence<RecordedEvent>) throws -> [Row.Key: Row] {
        var rows: [Row.Key: Row] = [:]
        for event in events.lazy.map(ProjectedEvent.init) {
            for key in try keys(of: event) {
                rows[key] = try apply(event, to: rows[key], key: key)
            }
        }
        return rows
    }
}

/// An event a fold cannot apply: the projection stops there, visibly, instead of skipping it.
public struct FoldError: Error, CustomStringConvertible, Sendable {
    public var position: Int64
    public var eventType: String
    public var reason: String

    public init(position: Int64, eventType: String, reason: String) {
        self.position = position
        self.eventType = eventType
        self.reason = reason
    }

    init(_ event: RecordedEvent, _ reason: String) {
        self.init(position: event.globalPosition, eventType: event.type, reason: reason)
    }

    init(_ event: ProjectedEvent, _ reason: String) {
        self.init(event.recorded, reason)
    }

    public var description: String { "cannot apply \(eventType) at position \(position): \(reason)" }
}

extension RecordedEvent {
    /// The workflow event this is, or the fold error saying why it is none.
    public func workflowEvent() throws -> WorkflowEvent {
        let event: WorkflowEvent?
        do {
            event = try WorkflowEvent.decode(self)
        } catch {
            throw FoldError(self, "payload does not decode: \(error)")
        }
        guard let event else { throw FoldError(self, "not a workflow event type") }
        return event
    }
}
