import AsyncHTTPClient
import ConvoTestSupport
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@testable import convo

/// `GET /v1/conversations/{id}/stream`, read as a browser's EventSource reads it: a streamed body, frame by frame.
@Suite struct StreamRouteTests {
    struct Frame: Equatable {
        var id: Int64
        var event: String
    }

    /// Opens the stream and collects frames until `until` holds for them (or the timeout passes).
    static func collect(
        port: Int, conversation: String, key: String?, path: String? = nil, cookie: String? = nil, lastEventID: Int64? = nil,
        timeout: Duration = .seconds(60), progress: AsyncStream<[Frame]>.Continuation? = nil, until: @escaping @Sendable ([Frame]) -> Bool
    ) async throws -> [Frame] {
        defer { progress?.finish() }
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path ?? "/v1/conversations/\(conversation)/stream")")
        if let key { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
        if let cookie { request.headers.add(name: "Cookie", value: cookie) }
        if let lastEventID { request.headers.add(name: "Last-Event-ID", value: "\(lastEventID)") }
        // The request's own deadline is generous (a busy machine); `timeout` bounds the collecting below.
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        #expect(response.status == .ok && response.headers["Content-Type"].first == "text/event-stream")
        progress?.yield([])
        let body = response.body
        return try await withThrowingTaskGroup(of: [Frame].self) { group in
            group.addTask {
                var frames: [Frame] = []
                var pending = ""
                for try await chunk in body {
                    pending += String(buffer: chunk)
                    while let end = pending.range(of: "\n\n") {
                        let block = pending[..<end.lowerBound]
                        pending = String(pending[end.upperBound...])
                        var id: Int64?
                        var event: String?
                        for line in block.split(separator: "\n") {
                            if line.hasPrefix("id: ") { id = Int64(line.dropFirst(4)) }
                            if line.hasPrefix("event: ") { event = String(line.dropFirst(7)) }
                        }
                        if let id, let event {
                            frames.append(Frame(id: id, event: event))
                            progress?.yield(frames)
                        }
                        if until(frames) { return frames }
                    }
                }
                return frames
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return []
            }
            let result = try await group.next() ?? []
            group.cancelAll()
            return result
        }
    }

    @Test func newEventsArriveLiveAndAReconnectResumesAfterLastEventID() async throws {
        try await APIHarness.with { api in
            let port = try #require(api.client.port)
            let conversation = APIHarness.conversationID()
            // The stream is open before the conversation exists; the message and the responder's answer arrive live.
            let (liveProgress, liveContinuation) = AsyncStream<[Frame]>.makeStream()
            let live = Task {
                try await Self.collect(port: port, conversation: conversation, key: api.read, progress: liveContinuation) { frames in
                    frames.contains { $0.event == "AssistantMessageSent" } && frames.contains { $0.event == "MessagesProcessed" }
                }
            }
            for await _ in liveProgress { break }  // the response's head: the stream is open
            #expect(try await api.post(conversation, #"{"visitorUid": "v-1", "messageId": "m1", "text": "where is my order?"}"#).status == .accepted)
            try await api.process(conversation, visitor: "v-1")
            let frames = try await live.value
            #expect(frames.first?.event == "ConversationStarted" && frames.contains { $0.event == "VisitorMessageReceived" })
            #expect(frames.map(\.id) == frames.map(\.id).sorted() && Set(frames.map(\.id)).count == frames.count)
            #expect(frames.contains { $0.event == "AssistantMessageSent" })

            // Reconnecting after the second event: the stored rest comes first, then a new message live, nothing twice.
            try #require(frames.count >= 2, "\(frames.map(\.event))")
            let resumeAfter = frames[1].id
            let expectedStored = frames.filter { $0.id > resumeAfter }
            let (resumedProgress, resumedContinuation) = AsyncStream<[Frame]>.makeStream()
            let resumed = Task {
                try await Self.collect(
                    port: port, conversation: conversation, key: api.read, lastEventID: resumeAfter, progress: resumedContinuation
                ) { frames in
                    frames.filter { $0.event == "VisitorMessageReceived" }.count == 1 && frames.count > expectedStored.count
                }
            }
            // The next message is sent once the stored rest has arrived, so it can only come live.
            for await seen in resumedProgress where seen.count >= expectedStored.count { break }
            #expect(try await api.post(conversation, #"{"visitorUid": "v-1", "messageId": "m2", "text": "thanks"}"#).status == .accepted)
            let after = try await resumed.value
            #expect(Array(after.prefix(expectedStored.count)) == expectedStored, "\(after)")
            #expect(after.last?.event == "VisitorMessageReceived" && after.allSatisfy { $0.id > resumeAfter })

            // Another tenant's key sees none of it; a bad Last-Event-ID is refused.
            let stranger = try await Self.collect(port: port, conversation: conversation, key: api.stranger, timeout: .seconds(1)) { !$0.isEmpty }
            #expect(stranger.isEmpty)
            let bad = try await api.request(.get, "/v1/conversations/\(conversation)/stream", key: api.read, headers: [StreamRoute.lastEventID: "soon"])
            #expect(bad.status == .badRequest && bad.errorCode == "invalid_parameter")
        }
    }

    struct Accepted: Decodable {
        var globalPosition: Int64
    }

    /// `GET /v1/stream`: every conversation of the tenant, from when it opens (or from `Last-Event-ID`), and
    /// no other tenant's.
    @Test func theTenantsStreamCarriesEveryConversationFromWhenItOpensAndResumes() async throws {
        try await APIHarness.with { api in
            let port = try #require(api.client.port)
            let (a, b, c) = (APIHarness.conversationID(), APIHarness.conversationID(), APIHarness.conversationID())
            func post(_ conversation: String, key: String? = nil) async throws -> Int64 {
                let reply = try await api.post(conversation, #"{"visitorUid": "v-\#(conversation)", "text": "hello"}"#, key: key)
                #expect(reply.status == .accepted, "\(reply.status) \(reply.text)")
                return try reply.decode(Accepted.self).globalPosition
            }
            let before = try await post(a)
            // Once a reader sees it, it lies below the head every later stream starts from.
            #expect(try await eventually { try await api.request(.get, "/v1/conversations/\(a)/messages", key: api.read).text.contains("hello") })
            let (progress, continuation) = AsyncStream<[Frame]>.makeStream()
            let live = Task {
                try await Self.collect(port: port, conversation: "", key: api.read, path: "/v1/stream", progress: continuation) { frames in
                    frames.filter { $0.event == "VisitorMessageReceived" }.count >= 2
                }
            }
            for await _ in progress { break }  // open
            let foreign = try await post(APIHarness.conversationID(), key: api.stranger)
            let (fromB, fromC) = (try await post(b), try await post(c))
            let frames = try await live.value
            let ids = Set(frames.map(\.id))
            #expect(ids.isSuperset(of: [fromB, fromC]) && !ids.contains(before) && !ids.contains(foreign), "\(frames)")
            #expect(frames.allSatisfy { $0.id > before } && frames.map(\.id) == frames.map(\.id).sorted())

            // Resumed from before the first message: the stored ones first, in order, every conversation's.
            let resumed = try await Self.collect(port: port, conversation: "", key: api.read, path: "/v1/stream", lastEventID: before - 1) { frames in
                Set(frames.map(\.id)).isSuperset(of: [before, fromB, fromC])
            }
            #expect(resumed.first?.id == before && !resumed.contains { $0.id == foreign }, "\(resumed)")
            #expect(try await api.request(.get, "/v1/stream", key: api.ingest).status == .forbidden)
        }
    }
}
