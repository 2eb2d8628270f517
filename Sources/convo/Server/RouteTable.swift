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

/// Answers 503 with `Retry-After` when a request has no response within the deadline, and cancels its work.
/// PostgresNIO's pool waits for a connection without end while PostgreSQL is unreachable; this bounds it.
/// A streamed body (the SSE route) is not limited: only the time to its first byte is. `/readyz` has its
/// own, shorter timeouts per check.
struct DeadlineMiddleware<Context: RequestContext>: RouterMiddleware {
    let deadline: Duration

    /// Answers by the deadline: when it passes, the handler is cancelled and answers at once with what it
    /// knows (an ingest still queued is not stored: 503; one whose batch is being written: 504, retry with
    /// the same messageId). A handler that finishes in that moment gives its true outcome.
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
                if let response = try await group.next() ?? nil { return response }
                // The deadline passed: cancel the handler and take its answer, which comes at once.
                group.cancelAll()
                let late: Result<Response?, any Error>
                do { late = .success(try await group.next() ?? nil) } catch { late = .failure(error) }
                switch late {
                case .success(let response?): return response
                case .failure(let error) where Self.isDefinite(error): throw error
                default:
                    throw APIError(
                        .serviceUnavailable, "timeout",
                        "no answer within \(deadline.components.seconds) s (is PostgreSQL reachable?); nothing was stored, retry later",
                        headers: [.retryAfter: "\(APIError.retryAfterSeconds)"])
                }
            }
        }
    }

    /// An error that says what happened to the request (a refusal of its input, or an unknown outcome), as
    /// opposed to one its cancellation caused.
    static func isDefinite(_ error: any Error) -> Bool {
        if let error = error as? APIError { return error.status.code < 500 || error.status == .gatewayTimeout }
        if let error = error as? EventStoreError { return error.code == .outcomeUnknown }
        return false
    }
}

/// Carries a value the compiler cannot prove Sendable across a task boundary the caller keeps structured.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
}
