import ConvoTestSupport
import EventStore
import Foundation
import Hummingbird
import HummingbirdTesting
import Projections
import Responder
import SharedTypes
import Testing

@testable import convo

@Suite struct APIRouteTests {
    struct Accepted: Decodable, Equatable {
        var conversationId: String
        var messageId: String
        var streamVersion: Int64
        var globalPosition: Int64
        var duplicate: Bool
    }

    @Test func everyRouteAsksForAKeyOfItsTenantWithTheRightScope() async throws {
        try await APIHarness.with { api in
            let conversation = APIHarness.conversationID()
            #expect(try await api.post(conversation, #"{"visitorUid": "v-1", "text": "hello"}"#).status == .accepted)
            let reads = ["/v1/conversations/\(conversation)", "/v1/conversations/\(conversation)/messages", "/v1/conversations/\(conversation)/events",
                         "/v1/conversations/\(conversation)/state", "/v1/workflows/support"]
            _ = try await api.request(.put, "/v1/workflows/support", key: api.admin, body: String(decoding: WorkflowRepository.demoWorkflowJSON, as: UTF8.self))

            for uri in reads + ["/v1/tools"] {
                let none = try await api.request(.get, uri, key: nil)
                #expect(none.status == .unauthorized && none.errorCode == "missing_key" && none.headers[.wwwAuthenticate] == "Bearer", "\(uri)")
                let forged = try await api.request(.get, uri, key: "cvk_0123456789abcdef_" + String(repeating: "A", count: 43))
                #expect(forged.status == .unauthorized && forged.errorCode == "invalid_key", "\(uri)")
                let garbage = try await api.request(.get, uri, key: "not-a-key")
                #expect(garbage.status == .unauthorized, "\(uri)")
            }
            for uri in reads {
                #expect(try await api.request(.get, uri, key: api.read).status == .ok, "\(uri)")
                #expect(try await api.request(.get, uri, key: api.all).status == .ok, "\(uri)")
                let ingestOnly = try await api.request(.get, uri, key: api.ingest)
                #expect(ingestOnly.status == .forbidden && ingestOnly.errorCode == "missing_scope", "\(uri)")
                // Another tenant's key sees nothing of this tenant: the same ids are its own (none here).
                #expect(try await api.request(.get, uri, key: api.stranger).status == .notFound, "\(uri)")
            }
            #expect(try await api.request(.get, "/v1/tools", key: api.ingest).status == .ok)
            let readPosts = try await api.post(conversation, #"{"visitorUid": "v-1", "text": "again"}"#, key: api.read)
            #expect(readPosts.status == .forbidden && readPosts.errorMessage.contains("ingest"))
            let workflow = String(decoding: WorkflowRepository.demoWorkflowJSON, as: UTF8.self)
            #expect(try await api.request(.put, "/v1/workflows/support", key: api.read, body: workflow).status == .forbidden)
            #expect(try await api.request(.put, "/v1/workflows/support", key: api.ingest, body: workflow).status == .forbidden)

            // The same conversation id in another tenant is another conversation, with another visitor.
            let theirs = try await api.post(conversation, #"{"visitorUid": "v-other", "text": "mine"}"#, key: api.stranger)
            #expect(theirs.status == .accepted)
            #expect(try await api.eventCount(conversation) == 2)

            // A revoked key stops at once here (the test application keeps no key cache).
            let id = String(api.read.dropFirst(4).prefix(16))
            _ = try await APIKeyStore(client: api.pg, logger: TestDatabase.logger).revoke(id)
            #expect(try await api.request(.get, reads[0], key: api.read).status == .unauthorized)

            // Routes that need no key.
            for uri in ["/healthz", "/openapi.json", "/metrics"] { #expect(try await api.request(.get, uri, key: nil).status == .ok, "\(uri)") }
        }
    }

    @Test func ingestIsIdempotentAndRefusesBadInputWithoutWritingAnything() async throws {
        try await APIHarness.with { api in
            let conversation = APIHarness.conversationID()
            let first = try await api.post(conversation, #"{"visitorUid": "v-1", "messageId": "m1", "text": "hello"}"#)
            #expect(first.status == .accepted)
            let accepted = try first.decode(Accepted.self)
            #expect(accepted.streamVersion == 2 && !accepted.duplicate && accepted.messageId == "m1" && accepted.conversationId == conversation)
            let again = try await api.post(conversation, #"{"visitorUid": "v-1", "messageId": "m1", "text": "hello"}"#)
            #expect(again.status == .ok)
            let duplicate = try again.decode(Accepted.self)
            #expect(duplicate.duplicate && duplicate.globalPosition == accepted.globalPosition && duplicate.streamVersion == accepted.streamVersion)
            let generated = try await api.post(conversation, #"{"visitorUid": "v-1", "text": "no id given", "sentAt": "2026-11-22T10:00:00Z"}"#)
            let generatedID = try generated.decode(Accepted.self).messageId
            #expect(generated.status == .accepted && generatedID.count == 36)
            let stored = try await api.eventCount(conversation)
            #expect(stored == 3)

            let big = String(repeating: "x", count: 70 * 1024)
            let cases: [(String, String, HTTPResponse.Status, String, String)] = [
                (conversation, #"{"visitorUid": "v-1", "messageId": "m1", "text": "something else"}"#, .conflict, "message_id_reused", "m1"),
                (conversation, #"{"visitorUid": "v-2", "messageId": "m2", "text": "hi"}"#, .conflict, "conversation_owned_by_another_visitor", "another visitor"),
                (conversation, #"{"visitorUid": "v-1", "messageId": "m3", "text": "   "}"#, .badRequest, "invalid_field", "text"),
                (conversation, #"{"visitorUid": "v-1", "messageId": "m3"}"#, .badRequest, "invalid_body", "missing field 'text'"),
                (conversation, #"{"visitorUid": 7, "text": "x"}"#, .badRequest, "invalid_body", "'visitorUid' is not a string"),
                (conversation, #"{"visitorUid": "v-1", "text": "x", "sentAt": "yesterday"}"#, .badRequest, "invalid_field", "sentAt"),
                (conversation, "not json", .badRequest, "invalid_body", "not valid JSON"),
                (conversation, "[1, 2]", .badRequest, "invalid_body", "not a JSON object"),
                (conversation, #"{"visitorUid": "bad visitor!", "text": "x"}"#, .badRequest, "invalid_field", "visitorUid"),
                (conversation, #"{"visitorUid": "v-1", "messageId": "", "text": "x"}"#, .badRequest, "invalid_field", "messageId"),
                ("bad%20id!", #"{"visitorUid": "v-1", "text": "x"}"#, .badRequest, "invalid_conversation", "conversation id"),
                (conversation, #"{"visitorUid": "v-1", "text": "\#(String(repeating: "y", count: 10_001))"}"#, .contentTooLarge, "text_too_long", "10000"),
                (conversation, #"{"visitorUid": "v-1", "text": "\#(big)"}"#, .contentTooLarge, "body_too_large", "64 KiB"),
            ]
            for (target, json, status, code, words) in cases {
                let reply = try await api.post(target, json)
                #expect(reply.status == status && reply.errorCode == code && reply.errorMessage.contains(words), "\(json.prefix(80)): \(reply.text.prefix(200))")
            }
            let plain = try await api.request(
                .post, "/v1/conversations/\(conversation)/messages", key: api.ingest, body: #"{"visitorUid": "v-1", "text": "x"}"#,
                headers: [.contentType: "text/plain"])
            #expect(plain.status == .unsupportedMediaType && plain.errorCode == "unsupported_media_type")
            let unknownRoute = try await api.request(.get, "/v1/nothing-here", key: api.all)
            #expect(unknownRoute.status == .notFound && unknownRoute.errorCode == "not_found")
            // Nothing of the refused requests was written.
            #expect(try await api.eventCount(conversation) == stored)
        }
    }

    struct Conversation: Decodable {
        struct Counts: Decodable {
            var visitorMessages: Int64
            var assistantMessages: Int64
            var unprocessed: Int64
        }

        struct State: Decodable {
            var workflowId: String?
            var workflowVersion: Int?
            var currentNodeId: String?
            var status: String
            var variables: [String: JSONValue]
        }

        struct Reflects: Decodable {
            var messagesVersion: Int64
            var workflowVersion: Int64
            var globalPosition: Int64
        }

        var conversationId: String
        var visitorUid: String?
        var status: String
        var counts: Counts
        var workflowState: State
        var reflects: Reflects
    }

    struct Transcript: Decodable {
        struct Message: Decodable {
            var role: String
            var text: String
            var globalPosition: Int64
            var messageId: String?
            var inReplyTo: [String]?
        }

        var messages: [Message]
        var next: Int64?
    }

    struct Events: Decodable {
        struct Event: Decodable {
            var eventId: UUID
            var type: String
            var stream: String
            var streamVersion: Int64
            var globalPosition: Int64
            var data: JSONValue
            var metadata: JSONValue
        }

        var events: [Event]
        var next: Int64?
    }

    @Test func theConversationItsTranscriptAndItsEventsAfterProcessing() async throws {
        try await APIHarness.with { api in
            let conversation = APIHarness.conversationID()
            for route in ["", "/messages", "/events", "/state"] {
                let missing = try await api.request(.get, "/v1/conversations/\(conversation)\(route)", key: api.read)
                #expect(missing.status == .notFound && missing.errorCode == "conversation_not_found", "\(route)")
            }
            _ = try await api.post(conversation, #"{"visitorUid": "v-9", "messageId": "m1", "text": "my order has not arrived"}"#)
            // Before the responder ran: the message is there, unprocessed, whatever the projection's lag.
            let before = try await api.request(.get, "/v1/conversations/\(conversation)", key: api.read).decode(Conversation.self)
            #expect(before.counts.visitorMessages == 1 && before.counts.unprocessed == 1 && before.visitorUid == "v-9")
            try await api.process(conversation, visitor: "v-9")

            let after = try await api.request(.get, "/v1/conversations/\(conversation)", key: api.read).decode(Conversation.self)
            #expect(after.conversationId == conversation && after.status == "open")
            #expect(after.counts.unprocessed == 0 && after.counts.assistantMessages >= 1)
            #expect(after.workflowState.workflowId == "support" && after.workflowState.workflowVersion == 1)
            #expect(after.workflowState.status == "waiting_for_input" && after.workflowState.currentNodeId != nil)
            #expect(after.workflowState.variables["question"] == "my order has not arrived")
            #expect(after.reflects.messagesVersion == 2 && after.reflects.workflowVersion > 0 && after.reflects.globalPosition > before.reflects.globalPosition)

            // The transcript and the event pages withhold events behind open transactions (of any test here):
            // wait until nothing is held back.
            let stored = try await api.eventCount(conversation)
            #expect(try await eventually {
                try await api.request(.get, "/v1/conversations/\(conversation)/events?limit=1000", key: api.read).decode(Events.self).events.count == stored
            })
            let transcript = try await api.request(.get, "/v1/conversations/\(conversation)/messages", key: api.read).decode(Transcript.self)
            #expect(transcript.messages.first?.role == "visitor" && transcript.messages.first?.messageId == "m1")
            #expect(transcript.messages.dropFirst().allSatisfy { $0.role == "assistant" } && transcript.messages.count >= 2)
            #expect(transcript.messages.last?.inReplyTo == ["m1"], "\(transcript.messages)")
            #expect(transcript.messages.map(\.globalPosition) == transcript.messages.map(\.globalPosition).sorted())
            #expect(transcript.next == nil)

            // Every event of both streams in global order, page by page with `next`.
            let all = try await api.request(.get, "/v1/conversations/\(conversation)/events?limit=1000", key: api.read).decode(Events.self)
            #expect(all.next == nil && all.events.count == Int(stored))
            #expect(Set(all.events.map(\.stream)) == ["messages-\(conversation)", "workflow-\(conversation)"])
            var paged: [Events.Event] = []
            var uri = "/v1/conversations/\(conversation)/events?limit=2"
            while true {
                let page = try await api.request(.get, uri, key: api.read).decode(Events.self)
                paged += page.events
                guard let next = page.next else { break }
                uri = "/v1/conversations/\(conversation)/events?limit=2&after=\(next)"
            }
            #expect(paged.map(\.eventId) == all.events.map(\.eventId))
            #expect(all.events.map(\.globalPosition) == all.events.map(\.globalPosition).sorted())
            let transition = try #require(all.events.first { $0.type == "WorkflowTransitioned" })
            #expect(transition.metadata["actorId"] == .string(SystemActor.userID.uuidString.lowercased()))
            #expect(transition.metadata["lockToken"] != nil && transition.metadata["causationId"] != nil)

            for bad in ["after=-1", "limit=0", "limit=1001", "after=x"] {
                let reply = try await api.request(.get, "/v1/conversations/\(conversation)/events?\(bad)", key: api.read)
                #expect(reply.status == .badRequest && reply.errorCode == "invalid_parameter", "\(bad)")
            }
        }
    }

    struct Workflow: Decodable {
        var workflowId: String
        var version: Int
        var versions: [Int]
        var created: Bool?
        var definition: JSONValue
    }

    struct WorkflowError: Decodable {
        struct Body: Decodable {
            struct Detail: Decodable {
                var nodeId: String?
                var message: String
            }

            var code: String
            var details: [Detail]?
        }

        var error: Body
    }

    @Test func workflowsArePublishedAsVersionsAndInvalidOnesListTheirProblems() async throws {
        try await APIHarness.with { api in
            let json = #"{"id": "greeter", "start": "hello", "nodes": [{"id": "hello", "type": "message", "text": "Hi!", "next": "wait"}, {"id": "wait", "type": "wait_for_input", "next": "hello"}]}"#
            let first = try await api.request(.put, "/v1/workflows/greeter", key: api.admin, body: json)
            #expect(first.status == .created, "\(first.text)")
            let published = try first.decode(Workflow.self)
            #expect(published.version == 1 && published.created == true)
            let same = try await api.request(.put, "/v1/workflows/greeter", key: api.admin, body: json)
            let sameCreated = try same.decode(Workflow.self).created
            #expect(same.status == .ok && sameCreated == false)
            let changed = json.replacingOccurrences(of: "Hi!", with: "Hello again!")
            #expect(try await api.request(.put, "/v1/workflows/greeter", key: api.admin, body: changed).decode(Workflow.self).version == 2)

            let latest = try await api.request(.get, "/v1/workflows/greeter", key: api.read).decode(Workflow.self)
            #expect(latest.version == 2 && latest.versions == [1, 2] && "\(latest.definition)".contains("Hello again!"))
            let old = try await api.request(.get, "/v1/workflows/greeter?version=1", key: api.read).decode(Workflow.self)
            #expect(old.version == 1 && "\(old.definition)".contains("Hi!"))
            #expect(try await api.request(.get, "/v1/workflows/greeter?version=9", key: api.read).status == .notFound)
            #expect(try await api.request(.get, "/v1/workflows/nobody", key: api.read).status == .notFound)
            #expect(try await api.request(.get, "/v1/workflows/greeter", key: api.stranger).status == .notFound)

            let broken = #"{"id": "greeter", "start": "hello", "nodes": [{"id": "hello", "type": "teleport", "next": "gone"}, {"id": "tool", "type": "tool", "tool": "launch_rockets", "next": "hello"}]}"#
            let invalid = try await api.request(.put, "/v1/workflows/greeter", key: api.admin, body: broken)
            #expect(invalid.status == .unprocessableContent)
            let problems = try invalid.decode(WorkflowError.self).error
            #expect(problems.code == "invalid_workflow")
            #expect(Set((problems.details ?? []).compactMap(\.nodeId)).isSuperset(of: ["hello", "tool"]), "\(invalid.text)")
            let mismatch = try await api.request(.put, "/v1/workflows/other", key: api.admin, body: json)
            #expect(mismatch.status == .badRequest && mismatch.errorCode == "workflow_id_mismatch")
            #expect(try await api.request(.put, "/v1/workflows/Bad!", key: api.admin, body: json).errorCode == "invalid_workflow_id")
            #expect(try await api.request(.get, "/v1/workflows/greeter", key: api.read).decode(Workflow.self).version == 2)
        }
    }

    @Test func theOpenAPIDocumentDescribesExactlyTheRoutesServed() async throws {
        try await APIHarness.with { api in
            let reply = try await api.request(.get, "/openapi.json", key: nil)
            #expect(reply.status == .ok && reply.headers[.contentType] == "application/json")
            let document = try #require(try JSONSerialization.jsonObject(with: reply.body) as? [String: Any])
            #expect(document["openapi"] as? String == "3.1.0")
            let paths = try #require(document["paths"] as? [String: [String: Any]])
            let methods: Set<String> = ["get", "put", "post", "delete", "patch"]
            var documented: Set<String> = []
            for (path, item) in paths {
                for method in item.keys where methods.contains(method) { documented.insert("\(method) \(path)") }
            }
            let served = Set(api.table.routes.map(\.description))
            #expect(served == documented, "served only: \(served.subtracting(documented)); documented only: \(documented.subtracting(served))")

            // Every $ref points at something the document defines.
            let text = reply.text
            let refs = text.matches(of: /"\$ref"\s*:\s*"#\/components\/(\w+)\/(\w+)"/).map { (String($0.output.1), String($0.output.2)) }
            let components = try #require(document["components"] as? [String: [String: Any]])
            #expect(!refs.isEmpty)
            for (kind, name) in refs { #expect(components[kind]?[name] != nil, "\(kind)/\(name)") }
        }
    }

    @Test func metricsCountRequestsByRouteAndStatusAndIngests() async throws {
        try await APIHarness.with { api in
            let conversation = APIHarness.conversationID()
            _ = try await api.post(conversation, #"{"visitorUid": "v-1", "text": "count me"}"#)
            _ = try await api.request(.get, "/v1/conversations/\(conversation)", key: nil)
            let metrics = try await api.request(.get, "/metrics", key: nil)
            #expect(metrics.status == .ok && metrics.headers[.contentType]?.hasPrefix("text/plain") == true)
            let text = metrics.text
            #expect(text.contains(#"hb_requests{http_route="/v1/conversations/{conversationId}/messages",http_request_method="POST",http_response_status_code="202"}"#), "\(text.prefix(3000))")
            #expect(text.contains(#"http_response_status_code="401""#))
            #expect(text.contains(#"convo_ingest_messages{outcome="accepted"}"#))
            #expect(text.contains("convo_sse_streams "))
            #expect(text.contains("convo_eventstore_tail_reads ") && text.contains("convo_eventstore_tail_shared "), "\(text.suffix(2000))")
            // The route tests run no responder: an ingested message queues nothing.
            #expect(text.contains("convo_responder_scheduled 0"), "\(text.suffix(2000))")
            #expect(text.contains("convo_responder_holding 0"), "\(text.suffix(2000))")
        }
    }
}
