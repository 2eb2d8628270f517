import Hummingbird
import Projections

/// `GET /v1/projections`: each projection's status as measured in PostgreSQL (the store's head, the
/// checkpoint, how many events wait and for how long, runner locks held in any process, the last rebuild),
/// never what a runner believes about itself. The figures are the service's, not the tenant's: projections
/// fold every tenant's events.
struct ProjectionRoutes: Sendable {
    let context: ServerContext
    /// The projections this server reports (none in route tests that run no runner).
    let projections: [any Projection]

    func register(on router: some RouterMethods<ConvoRequestContext>, table: RouteTable) {
        table.add(.get, "/v1/projections", on: router, use: list)
    }

    @Sendable func list(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> ProjectionList {
        _ = try requestContext.tenant(forAnyOf: [.read, .admin])
        let statuses = try await ProjectionStatus.read(
            projections, store: context.store, countingUpTo: ProjectionStatus.routineLagCountLimit, logger: requestContext.logger)
        return ProjectionList(
            projections: statuses.map { status in
                // Where the runners run names the service's hosts, and what holds the readers back names
                // sessions of the database server: not for tenants' keys.
                var shown = status
                shown.runningIn = nil
                shown.heldBack = nil
                return ProjectionList.Entry(status: shown, problem: status.problem(staleAfter: context.projectionStaleAfter))
            })
    }
}

struct ProjectionList: ResponseEncodable {
    struct Entry: Encodable {
        var status: ProjectionStatus
        /// What is wrong, as `/readyz` would report it; absent when the projection keeps up.
        var problem: String?

        func encode(to encoder: any Encoder) throws {
            try status.encode(to: encoder)
            var container = encoder.container(keyedBy: Key.self)
            try container.encodeIfPresent(problem, forKey: .problem)
        }

        enum Key: String, CodingKey { case problem }
    }

    var projections: [Entry]
}
