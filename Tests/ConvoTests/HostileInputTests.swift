import ConvoTestSupport
import EventStore
import Foundation
import Hummingbird
import HummingbirdTesting
import PostgresNIO
import SharedTypes
import Testing

@testable import convo

/// Input that PostgreSQL refuses, or that a URL or a spreadsheet reads otherwise than meant, fails only the
/// request that carries it, with a 400 that says why.
@Suite struct HostileInputTests {
    struct Accepted: Decodable {
        var conversationId: String
    }

    @Test func aPoisonedTenantNeverFailsAnotherTenantsMessages() async throws {
        // A database of its own: the trigger's DDL locks the events table, which would stall other tests.
        try await TestDatabase.withFreshDatabase { database in try await Self.poisonedTenant(database) }
    }

    static func poisonedTenant(_ database: DatabaseURL) async throws {
        try await APIHarness.with(database: database) { api in
            // PostgreSQL itself refuses some of the other tenant's messages (a data exception, as a value it
            // cannot store raises), so batches that mix both tenants fail in PostgreSQL, not in our checks.
            let name = "test_poison_\(api.strangerTenant.rawValue.filter { $0.isLetter || $0.isNumber })".lowercased()
            try await api.pg.query(
                """
                CREATE FUNCTION \(unescaped: name)() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.data->>'messageId' LIKE 'poison%' THEN RAISE EXCEPTION 'poisoned' USING ERRCODE = '22023'; END IF;
                  RETURN NEW;
                END $$
                """)
            try await api.pg.query(
                """
                CREATE TRIGGER \(unescaped: name) BEFORE INSERT ON events FOR EACH ROW
                WHEN (NEW.tenant_id = '\(unescaped: api.strangerTenant.rawValue)') EXECUTE FUNCTION \(unescaped: name)()
                """)
            do {
                let clean = Conversations(prefix: "clean")
                let dirty = Conversations(prefix: "dirty")
                let outcomes = try await withThrowingTaskGroup(of: (String, Int, Int).self) { group in
                    for worker in 0..<8 {
                        group.addTask {
                            var statuses: [Int] = []
                            for index in 0..<25 {
                                let reply = try await api.postConcurrently(clean.id(worker), #"{"visitorUid": "v\#(worker)", "text": "hello \#(index)"}"#)
                                statuses.append(reply.status.code)
                            }
                            return ("clean", worker, statuses.allSatisfy { $0 == 202 } ? 202 : statuses.first { $0 != 202 }!)
                        }
                        group.addTask {
                            var unexpected: [String] = []
                            for index in 0..<25 {
                                let (text, want, code): (String, Int, String?) =
                                    switch index % 3 {
                                    case 0: ("poison \(index)", 400, "invalid_input")
                                    case 1: ("nul \\u0000 \(index)", 400, "invalid_field")
                                    default: ("fine \(index)", 202, nil)
                                    }
                                // The texts are sealed before they reach PostgreSQL: the poison is in the message id.
                                let id = index % 3 == 0 ? "poison-\(worker)-\(index)" : UUID().uuidString
                                let reply = try await api.postConcurrently(
                                    dirty.id(worker), #"{"visitorUid": "w\#(worker)", "messageId": "\#(id)", "text": "\#(text)"}"#, key: api.stranger)
                                if reply.status.code != want || reply.errorCode != code { unexpected.append("\(text): \(reply.status) \(reply.text)") }
                            }
                            #expect(unexpected.isEmpty, "\(unexpected.prefix(3))")
                            return ("dirty", worker, unexpected.isEmpty ? 0 : 1)
                        }
                    }
                    return try await group.reduce(into: [(String, Int, Int)]()) { $0.append($1) }
                }
                // Every clean message of the clean tenant was accepted: 0 errors beside the poisoned one.
                let cleanOutcomes = outcomes.filter { $0.0 == "clean" }
                #expect(cleanOutcomes.count == 8 && cleanOutcomes.allSatisfy { $0.2 == 202 }, "\(cleanOutcomes)")
                for worker in 0..<8 {
                    let count = try await api.eventCount(clean.id(worker))
                    #expect(count == 26)
                }
                // The poisoned tenant's own clean messages were stored; nothing refused was.
                let stored = try await api.pg.query(
                    "SELECT count(*) FROM events WHERE tenant_id = \(api.strangerTenant.rawValue) AND event_type = 'VisitorMessageReceived'")
                for try await count in stored.decode(Int64.self) { #expect(count == 8 * 8) }
            } catch {
                _ = try? await api.pg.query("DROP TRIGGER \(unescaped: name) ON events; DROP FUNCTION \(unescaped: name)()")
                throw error
            }
            try await api.pg.query("DROP TRIGGER \(unescaped: name) ON events")
            try await api.pg.query("DROP FUNCTION \(unescaped: name)()")
        }
    }

    @Test func pathParametersArePercentDecodedAndDotSegmentsRefused() async throws {
        try await APIHarness.with { api in
            let id = "shop:\(APIHarness.conversationID())"
            let encoded = id.replacingOccurrences(of: ":", with: "%3A")
            let posted = try await api.post(encoded, #"{"visitorUid": "v-1", "text": "hello"}"#)
            #expect(posted.status == .accepted, "\(posted.text)")
            #expect(try posted.decode(Accepted.self).conversationId == id)
            let plain = try await api.request(.get, "/v1/conversations/\(id)", key: api.read)
            let viaEncoded = try await api.request(.get, "/v1/conversations/\(encoded)", key: api.read)
            #expect(plain.status == .ok && viaEncoded.status == .ok)
            #expect(try viaEncoded.decode(Accepted.self).conversationId == id && plain.decode(Accepted.self).conversationId == id, "\(viaEncoded.text)")
            for dots in [".", "..", "%2E", "%2E%2E", "%2e."] {
                let reply = try await api.post(dots, #"{"visitorUid": "v-1", "text": "hello"}"#)
                #expect(reply.status == .badRequest && reply.errorCode == "invalid_conversation", "\(dots): \(reply.status) \(reply.text)")
            }
            let malformed = try await api.post("a%zz", #"{"visitorUid": "v-1", "text": "hello"}"#)
            #expect(malformed.status == .badRequest && malformed.errorCode == "invalid_conversation")
        }
    }

    @Test func valuesPostgresCannotTakeAre400NotServerErrors() async throws {
        try await APIHarness.with { api in
            let overflow = try await api.request(.get, "/v1/workflows/support?version=2147483648", key: api.all)
            #expect(overflow.status == .badRequest && overflow.errorCode == "invalid_parameter", "\(overflow.text)")
            for filter in ["type", "actor", "tool"] {
                let reply = try await api.request(.get, "/v1/audit/events?\(filter)=a%00b", key: api.all)
                #expect(reply.status == .badRequest && reply.errorMessage.contains("U+0000"), "\(filter): \(reply.status) \(reply.text)")
            }
            let nulID = try await api.post(APIHarness.conversationID(), #"{"visitorUid": "v-1", "messageId": "a\u0000b", "text": "hi"}"#)
            #expect(nulID.status == .badRequest && nulID.errorCode == "invalid_field" && nulID.errorMessage.contains("messageId"))
            // A workflow whose text holds U+0000 reaches PostgreSQL's jsonb, which refuses it: 400, nothing stored.
            let workflow = #"{"id": "nul-test", "start": "hello", "nodes": [{"id": "hello", "type": "message", "text": "x\u0000y", "next": "wait"}, {"id": "wait", "type": "wait_for_input", "next": "hello"}]}"#
            let published = try await api.request(.put, "/v1/workflows/nul-test", key: api.admin, body: workflow)
            #expect(published.status == .badRequest && published.errorCode == "invalid_input", "\(published.status) \(published.text)")
            #expect(try await api.request(.get, "/v1/workflows/nul-test", key: api.read).status == .notFound)
        }
    }

    @Test func streamHeadsComeAPageAtATime() async throws {
        struct Page: Decodable {
            struct Head: Decodable { var stream: String }
            var heads: [Head]
            var next: String?
        }
        try await APIHarness.with { api in
            for index in 0..<5 {
                #expect(try await api.post("heads-\(index)-\(APIHarness.conversationID())", #"{"visitorUid": "v", "text": "hi"}"#).status == .accepted)
            }
            let all = try await api.request(.get, "/v1/audit/heads", key: api.admin).decode(Page.self)
            #expect(all.heads.count == 5 && all.next == nil)
            var collected: [String] = []
            var after: String?
            var pages = 0
            repeat {
                let query = after.map { "&after=\($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0)" } ?? ""
                let page = try await api.request(.get, "/v1/audit/heads?limit=2\(query)", key: api.admin).decode(Page.self)
                collected += page.heads.map(\.stream)
                after = page.next
                pages += 1
            } while after != nil && pages < 10
            #expect(collected == all.heads.map(\.stream) && pages == 3)
            for bad in ["limit=0", "limit=1001", "limit=x", "after="] {
                let reply = try await api.request(.get, "/v1/audit/heads?\(bad)", key: api.admin)
                #expect(reply.status == .badRequest, "\(bad): \(reply.text)")
            }
        }
    }

    @Test func theServerAnswersAsTheDocumentSays() async throws {
        try await APIHarness.with { api in
            // A method a path lacks is 405 with Allow; an unknown path stays 404.
            let wrong = try await api.request(.delete, "/v1/conversations/c-1/messages", key: api.all)
            #expect(wrong.status == .methodNotAllowed && wrong.headers[.allow] == "GET, POST" && wrong.errorCode == "method_not_allowed", "\(wrong.text)")
            let both = try await api.request(.patch, "/v1/workflows/w", key: api.all)
            #expect(both.status == .methodNotAllowed && both.headers[.allow] == "GET, PUT")
            #expect(try await api.request(.delete, "/v1/nothing", key: api.all).status == .notFound)
            // null is "absent" for the optional fields, as documented.
            let nulls = try await api.post(APIHarness.conversationID(), #"{"visitorUid": "v", "text": "hi", "messageId": null, "sentAt": null}"#)
            #expect(nulls.status == .accepted, "\(nulls.text)")
            // Lengths are counted in code points, as JSON Schema's maxLength: 200 two-byte characters pass.
            let wide = try await api.post(APIHarness.conversationID(), #"{"visitorUid": "v", "text": "hi", "messageId": "\#(String(repeating: "é", count: 200))"}"#)
            #expect(wide.status == .accepted, "\(wide.text)")
            let long = try await api.post(APIHarness.conversationID(), #"{"visitorUid": "v", "text": "hi", "messageId": "\#(String(repeating: "é", count: 201))"}"#)
            #expect(long.status == .badRequest)
            // RFC 3339 forms: lower-case t and z, any offset.
            for sentAt in ["2026-11-22t10:15:00z", "2026-11-22T10:15:00-23:23", "2026-11-22T10:15:00.123456+05:30"] {
                let reply = try await api.post(APIHarness.conversationID(), #"{"visitorUid": "v", "text": "hi", "sentAt": "\#(sentAt)"}"#)
                #expect(reply.status == .accepted, "\(sentAt): \(reply.text)")
            }
        }
    }

    @Test func csvCellsThatASpreadsheetWouldRunAreNeutralised() {
        let table = TextTable(header: ["text"], rows: [["=HYPERLINK(\"http://x\")"], ["+1"], ["-2"], ["@SUM(A1)"], ["\tx"], ["\rx"], ["plain"], ["a=b"]])
        let lines = table.csv.components(separatedBy: "\r\n")
        #expect(lines[1] == "\"'=HYPERLINK(\"\"http://x\"\")\"")
        #expect(lines[2] == "'+1" && lines[3] == "'-2" && lines[4] == "'@SUM(A1)" && lines[5] == "'\tx")
        #expect(lines[6] == "\"'\rx\"")
        #expect(lines[7] == "plain" && lines[8] == "a=b")
    }

    /// Conversation ids of one test, one per worker.
    struct Conversations {
        let base = APIHarness.conversationID()
        let prefix: String
        func id(_ worker: Int) -> String { "\(prefix)-\(worker)-\(base)" }
    }
}
