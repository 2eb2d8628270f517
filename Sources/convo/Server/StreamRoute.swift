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
        table.add(.get, "/v1/conversations/{conversationId}/stream", on: router) { request, requestContext in
            try await stream(request, requestContext, conversation: try ConversationRoutes.conversationID(requestContext))
        }
        // Every conversation of the tenant: what an inbox or a help desk follows.
        table.add(.get, "/v1/stream", on: router) { request, requestContext in
            try await stream(request, requestContext, conversation: nil)
        }
    }

    /// A conversation's stream starts at its beginning; the tenant's (`conversation` `nil`) starts now unless
    /// told where.
    func stream(_ request: Request, _ requestContext: ConvoRequestContext, conversation: ConversationID?) async throws -> Response {
        let tenant = try requestContext.tenant(for: .read)
        let after = try Self.resumePosition(request) ?? (conversation == nil ? nil : 0)
        let keys = context.keys
        let sessions = context.sessions
        let sessionToken = requestContext.sessionToken
        guard let keyID = requestContext.key?.id else { throw APIError(.unauthorized, "missing_key", "send Authorization: Bearer KEY") }
        // (A check that could not be made, PostgreSQL being away, ends nothing.)
        return try Self.events(of: conversation, tenant: tenant, after: after, context: context) {
            if (try? await keys.isLive(keyID)) == false { return false }
            if let sessionToken, (try? await sessions.isLive(sessionToken)) == false { return false }
            return true
        }
    }

    /// The stream of `conversation`'s events (every conversation's of the tenant when `nil`) after `after`
    /// (from when the stream opens when `nil`): what is stored, then live ones. `isLive` is asked once per
    /// key-cache interval (at least a second); the stream ends when it answers `false`.
    ///
    /// - Throws: 429 past the listener limits.
    static func events(
        of conversation: ConversationID?, tenant: TenantID, after: Int64?, context: ServerContext,
        isLive: (@Sendable () async -> Bool)?
    ) throws -> Response {
        let store = context.store
        let feed = context.feed
        let every = max(context.keys.ttl, .seconds(1))
        // The place is counted now, before the 200 goes out: a request right behind this one sees it taken.
        guard let place = feed.place(for: tenant) else { throw Self.tooMany(feed) }
        /// The stored events after a position, a page at a time (the tenant's: of its conversations only).
        @Sendable func stored(after position: Int64) async throws -> (events: [RecordedEvent], last: Int64?) {
            if let conversation {
                let page = try await store.readStreams(
                    [conversation.messagesStream, conversation.workflowStream], tenant: tenant, after: position, maxCount: APILimits.maxPageSize)
                return (page, page.count < APILimits.maxPageSize ? nil : page.last?.globalPosition)
            }
            let page = try await store.readAll(.tenant(tenant), after: position, maxCount: APILimits.maxPageSize)
            let conversations = page.filter { ($0.stream.category == "messages" || $0.stream.category == "workflow") && ConversationID(rawValue: $0.stream.id) != nil }
            return (conversations, page.count < APILimits.maxPageSize ? nil : page.last?.globalPosition)
        }
        let headers: HTTPFields = [
            .contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no",
        ]
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                // Listen before reading what is stored: an event committed in between comes through both, and
                // the position filter drops the second copy. Registered here, so a body never written
                // leaves no listener behind (its place is given back when the response goes).
                guard let listener = feed.listen(in: place, conversation: conversation) else {
                    try await writer.finish(nil)
                    return
                }
                defer { feed.remove(listener) }
                // The key (and the console session, when it opened the stream) is checked again once per
                // key-cache interval: a revoked key's or an ended session's stream ends within it.
                let watch = Task {
                    guard let isLive else { return }
                    while (try? await Task.sleep(for: every)) != nil {
                        if await isLive() == false {
                            feed.remove(listener)
                            return
                        }
                    }
                }
                defer { watch.cancel() }
                try await withGracefulShutdownHandler {
                    // (Where "now" is: below the head every event has committed; what commits later comes live.)
                    var last: Int64
                    if let after { last = after } else { last = try await store.headPosition(.allTenants) }
                    try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
                    var position = last
                    while true {
                        let (page, next) = try await stored(after: position)
                        for event in page {
                            try await writer.write(try Self.frame(event))
                            last = event.globalPosition
                        }
                        guard let next else { break }
                        position = next
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

    /// Where a client asks to resume: `Last-Event-ID` (a reconnecting EventSource's) or `?after=`; both are
    /// checked when both are sent, and the header wins. `nil` when neither is.
    ///
    /// - Throws: 400 for anything but a position ≥ 0.
    static func resumePosition(_ request: Request) throws -> Int64? {
        var after: Int64?
        for raw in [request.uri.queryParameters["after"].map(String.init), request.headers[lastEventID]].compactMap({ $0 }) {
            guard let value = Int64(raw.trimmingCharacters(in: .whitespaces)), value >= 0 else {
                throw APIError(.badRequest, "invalid_parameter", "Last-Event-ID (or after) is a position ≥ 0")
            }
            after = value
        }
        return after
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
