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

/// Carries a value the compiler cannot prove Sendable across a task boundary the caller keeps structured.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
}
