import EventStore
import Logging
import PostgresNIO

/// A ``ProjectionWriter`` of any projection, so the runner, rebuilds and `verify` handle every projection
/// with one piece of code.
protocol AnyProjectionWriter: AnyObject, Sendable {
    var isFull: Bool { get }
    func apply(_ events: [ProjectedEvent], loadingOn connection: PostgresConnection, logger: Logger) async throws -> (applied: Int, error: FoldError?)
    func flush(on connection: PostgresConnection, logger: Logger) async throws
    func committed()
    func reset()
    func createTable(suffix: String, on connection: PostgresConnection, logger: Logger) async throws
}

extension ProjectionWriter: AnyProjectionWriter {}

extension Projection {
    /// A writer of this projection into `table` (its own name unless a rebuild builds a new table).
    func makeWriter(table: String? = nil) throws -> any AnyProjectionWriter {
        try ProjectionWriter(self, table: table ?? name)
    }
}

/// The projections `convo` keeps, by name.
public enum ProjectionRegistry {
    public static let standard: [any Projection] = [WorkflowStateProjection(), ConversationsProjection(), VisitorsProjection()]

    /// The projections called `names`, in registry order; every one of `standard` when `names` is empty.
    ///
    /// - Throws: ``ProjectionError`` with ``ProjectionError/Code/unknownProjection`` for a name no projection has.
    public static func select(_ names: [String], from projections: [any Projection] = standard) throws -> [any Projection] {
        guard !names.isEmpty else { return projections }
        for name in names where !projections.contains(where: { $0.name == name }) {
            throw ProjectionError(
                code: .unknownProjection, message: "no projection '\(name)'; known: \(projections.map(\.name).joined(separator: ", "))")
        }
        return projections.filter { names.contains($0.name) }
    }
}
