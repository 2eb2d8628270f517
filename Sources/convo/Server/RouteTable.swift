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

/// Answers 503 with `Retry-After` when a request has no response within the deadline, and cancels its work.
/// PostgresNIO's pool waits for a connection without end while PostgreSQL is unreachable; this bounds it.
/// A streamed body (the SSE route) is not limited: only the time to its first byte is. `/readyz` has its
/// own, shorter timeouts per check.
struct DeadlineMiddleware<Context: RequestContext>: RouterMiddleware {
    let deadline: Duration

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.uri.path == "/readyz" { return try await next(request, context) }
        let deadline = deadline
        return try await withoutActuallyEscaping(next) { next in
            // The group awaits the handler before returning, so `next` does not outlive this call.
            let handler = UncheckedSendable(value: next)
            return try await withThrowingTaskGroup(of: Response?.self) { group in
                group.addTask { try await handler.value(request, context) }
                group.addTask {
                    try await Task.sleep(for: deadline)
                    return nil
                }
                defer { group.cancelAll() }
                guard let response = try await group.next() ?? nil else {
                    throw APIError(
                        .serviceUnavailable, "timeout", "no answer within \(deadline.components.seconds) s (is PostgreSQL reachable?); retry later",
                        headers: [.retryAfter: "\(APIError.retryAfterSeconds)"])
                }
                return response
            }
        }
    }
}

/// Carries a value the compiler cannot prove Sendable across a task boundary the caller keeps structured.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
}
