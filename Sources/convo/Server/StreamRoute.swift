import EventStore
import Foundation
import HTTPTypes
import Hummingbird
import ServiceLifecycle
import SharedTypes

/// `GET /v1/conversations/{conversationId}/stream`: Server-Sent Events of the conversation's events, each
/// with its global position as `id`, so a client that reconnects with `Last-Event-ID` (or `?after=`) gets
/// what it missed from the database and then the live events, none twice and none skipped.
struct StreamRoute: Sendable {
    let context: ServerContext
    static let lastEventID = HTTPField.Name("Last-Event-ID")!

    func register(on router: some RouterMethods<ConvoRequestContext>, table: RouteTable) {
        table.add(.get, "/v1/conversations/{conversationId}/stream", on: router, use: stream)
    }

    @Sendable func stream(_ request: Request, _ requestContext: ConvoRequestContext) async throws -> Response {
        let tenant = try requestContext.tenant(for: .read)
        let conversation = try ConversationRoutes.conversationID(requestContext)
        // Both are checked when both are sent; Last-Event-ID (a reconnecting client's) wins.
        var after: Int64 = 0
        for raw in [request.uri.queryParameters["after"].map(String.init), request.headers[Self.lastEventID]].compactMap({ $0 }) {
            guard let value = Int64(raw.trimmingCharacters(in: .whitespaces)), value >= 0 else {
                throw APIError(.badRequest, "invalid_parameter", "Last-Event-ID (or after) is a position ≥ 0")
            }
            after = value
        }
        let start = after
        let store = context.store
        let feed = context.feed
        let keys = context.keys
        let sessions = context.sessions
        let sessionToken = requestContext.sessionToken
        guard let keyID = requestContext.key?.id else { throw APIError(.unauthorized, "missing_key", "send Authorization: Bearer KEY") }
        guard feed.admits(tenant) else { throw Self.tooMany(feed) }
        let streams = [conversation.messagesStream, conversation.workflowStream]
        let headers: HTTPFields = [
            .contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no",
        ]
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                // Listen before reading what is stored: an event committed in between comes through both, and
                // the position filter drops the second copy. Registered here, so a body never written
                // leaves no listener behind.
                guard let listener = feed.listen(tenant: tenant, conversation: conversation) else {
                    // Another stream took the last place since the check above.
                    try await writer.write(ByteBuffer(string: ": too many open event streams; retry later\n\n"))
                    try await writer.finish(nil)
                    return
                }
                defer { feed.remove(listener) }
                // The key (and the console session, when it opened the stream) is checked again once per
                // key-cache interval: a revoked key's or an ended session's stream ends within it.
                let watch = Task {
                    let every = max(keys.ttl, .seconds(1))
                    while (try? await Task.sleep(for: every)) != nil {
                        // (A check that could not be made, PostgreSQL being away, ends nothing.)
                        var ended = (try? await keys.isLive(keyID)) == false
                        if !ended, let sessionToken { ended = (try? await sessions.isLive(sessionToken)) == false }
                        if ended {
                            feed.remove(listener)
                            return
                        }
                    }
                }
                defer { watch.cancel() }
                try await withGracefulShutdownHandler {
                    var last = start
                    try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
                    while true {
                        let page = try await store.readStreams(streams, tenant: tenant, after: last, maxCount: APILimits.maxPageSize)
                        for event in page {
                            try await writer.write(try Self.frame(event))
                            last = event.globalPosition
                        }
                        if page.count < APILimits.maxPageSize { break }
                    }
                    for await item in listener.items {
                        switch item {
                        case .heartbeat:
                            try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                        case .event(let event) where event.globalPosition > last:
                            try await writer.write(try Self.frame(event))
                            last = event.globalPosition
                        case .event:
                            continue
                        }
                    }
                } onGracefulShutdown: {
                    // The server is stopping: end the stream; the client reconnects (to another instance).
                    feed.remove(listener)
                }
                try await writer.finish(nil)
            })
    }

    static func tooMany(_ feed: ConversationFeed) -> APIError {
        APIError(
            .tooManyRequests, "too_many_streams",
            "too many open event streams (at most \(feed.limits.perTenant) per tenant and \(feed.limits.total) in all); retry later",
            headers: [.retryAfter: "\(APIError.retryAfterSeconds)"])
    }

    static func frame(_ event: RecordedEvent) throws -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = String(decoding: try encoder.encode(EventBody(event)), as: UTF8.self)
        return ByteBuffer(string: "id: \(event.globalPosition)\nevent: \(event.type)\ndata: \(json)\n\n")
    }
}
