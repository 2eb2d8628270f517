import EventStore
import Hummingbird
import Synchronization

/// The routes of the API as the OpenAPI document names them (`/v1/conversations/{conversationId}`), recorded
/// as they are registered, so a test can hold the document and the router to each other.
final class RouteTable: Sendable {
    struct Route: Hashable, Sendable, CustomStringConvertible {
        var method: String
        var path: String
        var description: String { "\(method) \(path)" }
    }

    private let entries = Mutex<[Route]>([])

    var routes: [Route] { entries.withLock { $0 } }

    /// Registers `handler` for `method` on `path`, written with `{name}` parameters.
    func add<Context: RequestContext>(
        _ method: HTTPRequest.Method, _ path: String, on router: some RouterMethods<Context>,
        use handler: @Sendable @escaping (Request, Context) async throws -> some ResponseGenerator
    ) {
        entries.withLock { $0.append(Route(method: method.rawValue.lowercased(), path: path)) }
        let hummingbirdPath = path.split(separator: "/", omittingEmptySubsequences: false).map { segment in
            segment.hasPrefix("{") && segment.hasSuffix("}") ? ":" + segment.dropFirst().dropLast() : String(segment)
        }.joined(separator: "/")
        router.on(RouterPath(hummingbirdPath), method: method, use: handler)
    }
}

extension RouteTable {
    /// The methods of the routes whose path template matches `path` (`{name}` matches one segment).
    func methods(for path: String) -> [String] {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        return Set(routes.filter { route in
            let template = route.path.split(separator: "/", omittingEmptySubsequences: false)
            return template.count == segments.count
                && zip(template, segments).allSatisfy { pattern, segment in
                    (pattern.hasPrefix("{") && pattern.hasSuffix("}") && !segment.isEmpty) || pattern == segment
                }
        }.map { $0.method.uppercased() }).sorted()
    }
}

/// A method a path does not have is 405 with `Allow` (RFC 9110 §15.5.6), not 404: the path exists.
struct MethodNotAllowedMiddleware<Context: RequestContext>: RouterMiddleware {
    let table: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            let allowed = table.methods(for: request.uri.path)
            guard !allowed.isEmpty, !allowed.contains(request.method.rawValue) else { throw error }
            throw APIError(
                .methodNotAllowed, "method_not_allowed", "\(request.uri.path) answers \(allowed.joined(separator: ", "))",
                headers: [.allow: allowed.joined(separator: ", ")])
        }
    }
}

/// Carries a value the compiler cannot prove Sendable across a task boundary the caller keeps structured.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
}
