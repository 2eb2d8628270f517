import ConvoTestSupport
import Foundation
import HTTPTypes
import Projections
import SharedTypes
import Testing

@testable import convo

/// What the console's workflows and operations pages and the demo read, as routes: the tenant's workflow
/// list, the projections' measured status, one conversation's audit trail for an agent, and `/demo`.
@Suite struct ConsoleAPITests {
    static func workflow(_ id: String, text: String = "hi") -> String {
        #"{"id": "\#(id)", "name": "Workflow \#(id)", "start": "s", "nodes": [{"id": "s", "type": "message", "text": "\#(text)", "next": "e"}, {"id": "e", "type": "end"}]}"#
    }

    struct WorkflowList: Decodable {
        struct Entry: Decodable {
            var workflowId: String
            var name: String?
            var latestVersion: Int
            var versionCount: Int
            var publishedBy: String
        }
        var workflows: [Entry]
        var next: String?
    }

    @Test func theWorkflowListIsTheTenantsOwnPagedByIdWithBadParametersRefused() async throws {
        try await APIHarness.with { api in
            for (id, text) in [("c-flow", "1"), ("a-flow", "1"), ("b-flow", "1"), ("b-flow", "2")] {
                let published = try await api.request(.put, "/v1/workflows/\(id)", key: api.admin, body: Self.workflow(id, text: text))
                #expect(published.status == .created, "\(published.status) \(published.text)")
            }
            #expect(try await api.request(.put, "/v1/workflows/z-stranger", key: api.stranger, body: Self.workflow("z-stranger")).status == .created)

            let first = try await api.request(.get, "/v1/workflows?limit=2", key: api.read).decode(WorkflowList.self)
            #expect(first.workflows.map(\.workflowId) == ["a-flow", "b-flow"] && first.next == "b-flow")
            #expect(first.workflows[1].latestVersion == 2 && first.workflows[1].versionCount == 2 && first.workflows[1].name == "Workflow b-flow")
            #expect(first.workflows[0].publishedBy.hasPrefix("key:"))
            let second = try await api.request(.get, "/v1/workflows?limit=2&after=b-flow", key: api.read).decode(WorkflowList.self)
            // The other tenant's workflow is not there.
            #expect(second.workflows.map(\.workflowId) == ["c-flow"] && second.next == nil)
            let all = try await api.request(.get, "/v1/workflows", key: api.read).decode(WorkflowList.self)
            #expect(all.workflows.map(\.workflowId) == ["a-flow", "b-flow", "c-flow"])

            for query in ["limit=0", "limit=1001", "limit=x", "after=B-FLOW", "after=%00", "page=2"] {
                let refused = try await api.request(.get, "/v1/workflows?\(query)", key: api.read)
                #expect(refused.status == .badRequest && refused.errorCode == "invalid_parameter", "\(query): \(refused.status) \(refused.text)")
            }
            #expect(try await api.request(.get, "/v1/workflows", key: api.ingest).status == .forbidden)
            #expect(try await api.request(.get, "/v1/workflows", key: nil).status == .unauthorized)
        }
    }

    struct Projections: Decodable {
        struct Entry: Decodable {
            var name: String
            var state: String
            var head: Int64
            var lag: Int64
            var lagCountedUpTo: Int64
            var activeRunners: Int
            var problem: String?
        }
        var projections: [Entry]
    }

    /// No runner runs in this process or any other: the route says so, as measured in PostgreSQL.
    @Test func theProjectionsAreReportedAsMeasuredNotAsBelieved() async throws {
        try await TestDatabase.withFreshDatabase { database in
            try await APIHarness.with(database: database, measuresProjections: true) { api in
                let before = try await api.request(.get, "/v1/projections", key: api.read).decode(Projections.self)
                #expect(before.projections.map(\.name).sorted() == ["conversations", "visitors", "workflow_state"])
                for projection in before.projections {
                    #expect(projection.state == "not_built" && projection.activeRunners == 0 && projection.problem == "not built", "\(projection)")
                    // Read by any tenant's key, often: a backlog is counted up to 10,000, not a million.
                    #expect(projection.lagCountedUpTo == ProjectionStatus.routineLagCountLimit)
                }
                #expect(try await api.post(APIHarness.conversationID(), #"{"visitorUid": "v-1", "text": "hello"}"#).status == .accepted)
                // (The head is what every reader may see: on the shared test cluster, another test's open
                // transaction can hold it back a while.)
                var after = before
                let moved = try await eventually {
                    after = try await api.request(.get, "/v1/projections", key: api.admin).decode(Projections.self)
                    return zip(before.projections, after.projections).allSatisfy { $1.head > $0.head }
                }
                #expect(moved, "the head moves with the store: \(before) → \(after)")
                #expect(after.projections.allSatisfy { $0.state == "not_built" }, "\(after)")
                #expect(try await api.request(.get, "/v1/projections", key: api.ingest).status == .forbidden)
            }
        }
    }

    @Test func anAgentReadsOneConversationsTrailAndConflictsButNotTheTenants() async throws {
        try await APIHarness.with { api in
            let agent = try await AgentTests.people(api).agentA.key
            let conversation = APIHarness.conversationID()
            #expect(try await api.post(conversation, #"{"visitorUid": "v-1", "text": "hello"}"#).status == .accepted)
            let own = try await api.request(.get, "/v1/audit/events?conversation=\(conversation)", key: agent)
            #expect(own.status == .ok && own.text.contains("VisitorMessageReceived"), "\(own.status) \(own.text.prefix(300))")
            let tenant = try await api.request(.get, "/v1/audit/events", key: agent)
            #expect(tenant.status == .forbidden && tenant.errorCode == "missing_scope")
            let conflicts = try await api.request(.get, "/v1/audit/conflicts?conversation=\(conversation)", key: agent)
            #expect(conflicts.status == .ok && conflicts.text.contains(#""conflicts":[]"#), "\(conflicts.status) \(conflicts.text)")
            #expect(try await api.request(.get, "/v1/audit/conflicts", key: agent).status == .forbidden)
        }
    }

    struct DemoVisitor: Decodable {
        var visitorUid: String
        var conversationId: String
        var tenant: String
    }

    @Test func theDemoIsOffByDefault() async throws {
        try await APIHarness.with { api in
            for (method, path) in [(HTTPRequest.Method.get, "/demo"), (.post, "/demo/visitor"), (.post, "/demo/messages"), (.get, "/demo/stream")] {
                let reply = try await api.request(method, path, key: nil)
                #expect(reply.status == .notFound, "\(path)")
            }
        }
    }

    /// A browser becomes a visitor by a cookie; it writes and reads its own conversation only, from this site only.
    @Test func theDemoMakesABrowserAVisitorOfItsTenantByAnHttpOnlyCookie() async throws {
        try await APIHarness.with(demo: true) { api in
            let page = try await api.request(.get, "/demo", key: nil)
            #expect(page.status == .ok && page.text.contains("chat-form") && page.headers[.contentSecurityPolicy]?.contains("default-src 'none'") == true)

            let made = try await api.request(.post, "/demo/visitor", key: nil)
            let setCookie = try #require(made.headers[.setCookie], "\(made.status) \(made.text)")
            let attributes = Set(setCookie.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
            #expect(attributes.isSuperset(of: ["httponly", "samesite=strict", "path=/demo"]), "\(setCookie)")
            let cookie = String(setCookie.split(separator: ";")[0])
            let token = String(cookie.dropFirst("convo_demo=".count))
            let visitor = try made.decode(DemoVisitor.self)
            #expect(visitor.tenant == api.tenant.rawValue && visitor.visitorUid == visitor.conversationId && visitor.visitorUid.hasPrefix("demo-"))
            #expect(token.hasPrefix("cvd_") && !made.text.contains(token), "the token is not the visitor's id")
            let again = try await api.request(.post, "/demo/visitor", key: nil, headers: [.cookie: cookie])
            let againVisitor = try again.decode(DemoVisitor.self)
            #expect(again.headers[.setCookie] == nil && againVisitor.conversationId == visitor.conversationId)
            let other = try await api.request(.post, "/demo/visitor", key: nil).decode(DemoVisitor.self)
            #expect(other.conversationId != visitor.conversationId)

            let body = #"{"messageId": "d-1", "text": "where is my order?"}"#
            let noCookie = try await api.request(.post, "/demo/messages", key: nil, body: body)
            #expect(noCookie.status == .unauthorized && noCookie.errorCode == "no_demo_visitor")
            let forged = try await api.request(.post, "/demo/messages", key: nil, body: body, headers: [.cookie: "convo_demo=cvd_forged"])
            #expect(forged.status == .unauthorized)
            let foreign = try await api.request(.post, "/demo/messages", key: nil, body: body, headers: [.cookie: cookie, .origin: "https://evil.example"])
            #expect(foreign.status == .forbidden && foreign.errorCode == "csrf_failed")
            for bad in ["{", #"{"text": "no id"}"#, #"{"messageId": "d-2", "text": "a\u0000b"}"#] {
                let refused = try await api.request(.post, "/demo/messages", key: nil, body: bad, headers: [.cookie: cookie])
                #expect(refused.status == .badRequest, "\(bad): \(refused.status) \(refused.text)")
            }
            #expect(try await api.eventCount(visitor.conversationId) == 0, "nothing stored by a refused message")

            let stored = try await api.request(.post, "/demo/messages", key: nil, body: body, headers: [.cookie: cookie])
            #expect(stored.status == .accepted, "\(stored.status) \(stored.text)")
            let retried = try await api.request(.post, "/demo/messages", key: nil, body: body, headers: [.cookie: cookie])
            #expect(retried.status == .ok && retried.text.contains(#""duplicate":true"#))
            // The transcript shows what no open transaction of the cluster can still precede (another test's may).
            #expect(
                try await eventually {
                    let transcript = try await api.request(.get, "/v1/conversations/\(visitor.conversationId)/messages", key: api.read)
                    return transcript.status == .ok && transcript.text.contains("where is my order?")
                }, "stored in the demo tenant")

            // The stream is the visitor's own conversation's.
            let port = try #require(api.client.port)
            let frames = try await StreamRouteTests.collect(
                port: port, conversation: visitor.conversationId, key: nil, path: "/demo/stream", cookie: cookie, timeout: .seconds(30)
            ) { frames in frames.contains { $0.event == "VisitorMessageReceived" } }
            #expect(frames.map(\.event) == ["ConversationStarted", "VisitorMessageReceived"], "\(frames)")
            let strangers = try await StreamRouteTests.collect(
                port: port, conversation: other.conversationId, key: nil, path: "/demo/stream", cookie: "convo_demo=cvd_" + String(repeating: "A", count: 43),
                timeout: .seconds(2)
            ) { _ in false }
            #expect(strangers.isEmpty, "another visitor's stream shows nothing of this one's")
        }
    }
}
