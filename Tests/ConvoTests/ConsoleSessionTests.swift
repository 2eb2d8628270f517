import ConvoTestSupport
import Crypto
import EventStore
import Foundation
import HTTPTypes
import PostgresNIO
import SharedTypes
import Testing

@testable import convo

/// The console's sign-in: a key exchanged for an HttpOnly session cookie that the `/v1` API takes in its
/// place, with a CSRF token for every change, ended by sign-out, expiry or the key's revocation.
@Suite struct ConsoleSessionTests {
    struct Session: Decodable {
        var keyId: String
        var tenant: String
        var scopes: [String]
        var csrfToken: String
        var expiresAt: Date
    }

    /// Signs in with `key`: the session and its cookie header value (`convo_session=…`).
    static func signIn(_ api: APIHarness, key: String) async throws -> (session: Session, cookie: String, setCookie: String) {
        let reply = try await api.request(.post, "/console/session", key: nil, body: #"{"key": "\#(key)"}"#)
        guard reply.status == .created, let setCookie = reply.headers[.setCookie] else {
            throw APIHarness.Reply.Unexpected(description: "sign-in: \(reply.status) \(reply.text)")
        }
        let pair = String(setCookie.split(separator: ";").first ?? "")
        return (try reply.decode(Session.self), pair, setCookie)
    }

    static func message(_ id: String) -> String { #"{"visitorUid": "v-console", "messageId": "\#(id)", "text": "hello"}"# }

    @Test func aKeyIsExchangedForAnHttpOnlyStrictCookieThatTheAPITakesInItsPlace() async throws {
        try await APIHarness.with { api in
            let (session, cookie, setCookie) = try await Self.signIn(api, key: api.all)
            let attributes = Set(setCookie.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
            #expect(attributes.isSuperset(of: ["httponly", "samesite=strict", "path=/", "max-age=43200"]), "\(setCookie)")
            #expect(!attributes.contains("secure"), "plain HTTP: a Secure cookie would never come back")
            #expect(session.tenant == api.tenant.rawValue && session.scopes == ["admin", "ingest", "read"])
            #expect(session.csrfToken.count == 43)
            let token = String(cookie.dropFirst("convo_session=".count))
            #expect(token.hasPrefix("cvs_") && !token.contains(api.all) && token != api.all)
            // Only the token's hash is stored.
            let rows = try await api.pg.query(
                "SELECT count(*) FROM console_sessions WHERE token_hash = \(Data(SHA256.hash(data: Data(token.utf8)))) AND key_id = \(session.keyId)")
            for try await count in rows.decode(Int.self) { #expect(count == 1) }
            let stored = try await api.pg.query("SELECT count(*) FROM console_sessions WHERE csrf_token = \(token) OR encode(token_hash, 'escape') LIKE \("%" + token + "%")")
            for try await count in stored.decode(Int.self) { #expect(count == 0) }

            // The cookie in place of the key: the tenant's own data, and who is signed in.
            let conversation = APIHarness.conversationID()
            #expect(try await api.post(conversation, Self.message("m-1")).status == .accepted)
            // (A reader sees an event once every write transaction of the cluster begun before it has ended:
            // on the shared test cluster, other tests' transactions can hold it back a while.)
            var read = try await api.request(.get, "/v1/conversations/\(conversation)/messages", key: nil, headers: [.cookie: cookie])
            let seen = try await eventually {
                read = try await api.request(.get, "/v1/conversations/\(conversation)/messages", key: nil, headers: [.cookie: cookie])
                return read.status != .ok || read.text.contains("hello")
            }
            #expect(seen && read.status == .ok && read.text.contains("hello"), "\(read.status) \(read.text)")
            let again = try await api.request(.get, "/console/session", key: nil, headers: [.cookie: cookie])
            #expect(again.status == .ok && again.headers[.cacheControl] == "no-store")
            #expect(try again.decode(Session.self).csrfToken == session.csrfToken)
            // Another tenant's conversation stays out of reach.
            let stranger = try await Self.signIn(api, key: api.stranger)
            let foreign = try await api.request(.get, "/v1/conversations/\(conversation)/messages", key: nil, headers: [.cookie: stranger.cookie])
            #expect(foreign.status == .notFound || (foreign.status == .ok && !foreign.text.contains("hello")), "\(foreign.status) \(foreign.text)")
        }
    }

    @Test func aChangeNeedsTheCSRFTokenAndThisServersOriginAndNothingIsWrittenWithout() async throws {
        try await APIHarness.with { api in
            let (session, cookie, _) = try await Self.signIn(api, key: api.all)
            let conversation = APIHarness.conversationID()
            let path = "/v1/conversations/\(conversation)/messages"
            let missing = try await api.request(.post, path, key: nil, body: Self.message("m-1"), headers: [.cookie: cookie])
            #expect(missing.status == .forbidden && missing.errorCode == "csrf_failed", "\(missing.status) \(missing.text)")
            let wrong = try await api.request(
                .post, path, key: nil, body: Self.message("m-1"), headers: [.cookie: cookie, Authenticate.csrfHeader: String(session.csrfToken.reversed())])
            #expect(wrong.status == .forbidden && wrong.errorCode == "csrf_failed")
            for origin in ["https://evil.example", "null"] {
                let foreign = try await api.request(
                    .post, path, key: nil, body: Self.message("m-1"), headers: [.cookie: cookie, Authenticate.csrfHeader: session.csrfToken, .origin: origin])
                #expect(foreign.status == .forbidden && foreign.errorCode == "csrf_failed", "\(origin): \(foreign.status)")
            }
            #expect(try await api.eventCount(conversation) == 0)
            // With the token (and this server's own origin, or none): accepted like a key's request.
            // (The test client sends `Host: localhost`; a browser sends the port too, in both.)
            let accepted = try await api.request(
                .post, path, key: nil, body: Self.message("m-1"), headers: [.cookie: cookie, Authenticate.csrfHeader: session.csrfToken, .origin: "http://localhost"])
            #expect(accepted.status == .accepted, "\(accepted.status) \(accepted.text)")
            #expect(try await api.eventCount(conversation) > 0)
            // Reads need no token.
            #expect(try await api.request(.get, path, key: nil, headers: [.cookie: cookie]).status == .ok)
            // A read-only key's session may not write, token or not.
            let reader = try await Self.signIn(api, key: api.read)
            let refused = try await api.request(
                .post, path, key: nil, body: Self.message("m-2"), headers: [.cookie: reader.cookie, Authenticate.csrfHeader: reader.session.csrfToken])
            #expect(refused.status == .forbidden && refused.errorCode == "missing_scope", "\(refused.status) \(refused.text)")
        }
    }

    @Test func signOutExpiryAndARevokedKeyEndTheSession() async throws {
        try await APIHarness.with { api in
            let (session, cookie, _) = try await Self.signIn(api, key: api.all)
            // An event stream opened with the session ends when the session does.
            let port = try #require(api.client.port)
            let stream = try await SSEStream(baseURL: "http://127.0.0.1:\(port)", conversation: APIHarness.conversationID(), headers: [("Cookie", cookie)])
            #expect(stream.status == 200)
            let noToken = try await api.request(.delete, "/console/session", key: nil, headers: [.cookie: cookie])
            #expect(noToken.status == .forbidden && noToken.errorCode == "csrf_failed")
            let out = try await api.request(.delete, "/console/session", key: nil, headers: [.cookie: cookie, Authenticate.csrfHeader: session.csrfToken])
            #expect(out.status == .noContent)
            let cleared = out.headers[.setCookie] ?? ""
            #expect(cleared.hasPrefix("convo_session=;") && cleared.contains("Max-Age=0"), "\(cleared)")
            #expect(try await eventually(timeout: .seconds(15)) { stream.ended })
            for path in ["/console/session", "/v1/tools"] {
                let after = try await api.request(.get, path, key: nil, headers: [.cookie: cookie])
                #expect(after.status == .unauthorized && after.errorCode == "invalid_session", "\(path): \(after.status) \(after.text)")
            }

            // A revoked key's sessions end with it.
            let keys = APIKeyStore(client: api.pg, logger: TestDatabase.logger)
            let made = try await keys.create(tenant: api.tenant, scopes: [.read], name: "console")
            let second = try await Self.signIn(api, key: made.key)
            let live = try await api.request(.get, "/v1/tools", key: nil, headers: [.cookie: second.cookie])
            #expect(live.status == .ok, "\(live.status) \(live.text)")
            _ = try await keys.revoke(made.record.id)
            let revoked = try await api.request(.get, "/v1/tools", key: nil, headers: [.cookie: second.cookie])
            #expect(revoked.status == .unauthorized && revoked.errorCode == "invalid_session")

            // An expired one is refused (a session made to last one second).
            let store = ConsoleSessionStore(client: api.pg, logger: TestDatabase.logger)
            let record = try #require(try await keys.list(tenant: api.tenant).first { $0.revokedAt == nil })
            let short = try await store.create(for: record, lifetime: .seconds(1))
            #expect(
                try await eventually(timeout: .seconds(30)) {
                    try await api.request(.get, "/v1/tools", key: nil, headers: [.cookie: "convo_session=\(short.token)"]).status == .unauthorized
                })
            #expect(short.session.expiresAt < Date())

            // A row that expired long ago is pruned by the next sign-in; the recently expired one is kept.
            let old = Data((0..<32).map { _ in UInt8.random(in: 0...255) })
            try await api.pg.query(
                """
                INSERT INTO console_sessions (token_hash, key_id, csrf_token, created_at, expires_at)
                VALUES (\(old), \(record.id), \(String(repeating: "c", count: 43)), now() - interval '41 days', now() - interval '40 days')
                """)
            _ = try await Self.signIn(api, key: api.all)
            let left = try await api.pg.query(
                "SELECT count(*) FILTER (WHERE token_hash = \(old)), count(*) FILTER (WHERE token_hash = \(ConsoleSessionStore.hash(short.token))) FROM console_sessions")
            for try await (stale, recent) in left.decode((Int, Int).self) { #expect(stale == 0 && recent == 1, "stale \(stale), recent \(recent)") }
        }
    }

    @Test func badSignInsAndBadCookiesGetClearErrors() async throws {
        try await APIHarness.with { api in
            let notJSON = try await api.request(.post, "/console/session", key: nil, body: "key=abc", headers: [.contentType: "application/x-www-form-urlencoded"])
            #expect(notJSON.status == .badRequest || notJSON.status == .unsupportedMediaType, "\(notJSON.status) \(notJSON.text)")
            #expect(notJSON.errorCode != nil)
            let noKey = try await api.request(.post, "/console/session", key: nil, body: "{}")
            #expect(noKey.status == .badRequest && noKey.errorCode != nil, "\(noKey.status) \(noKey.text)")
            let unknown = try await api.request(.post, "/console/session", key: nil, body: #"{"key": "cvk_0123456789abcdef_\#(String(repeating: "A", count: 43))"}"#)
            #expect(unknown.status == .unauthorized && unknown.errorCode == "invalid_key")
            let none = try await api.request(.get, "/console/session", key: nil)
            #expect(none.status == .unauthorized && none.errorCode == "not_signed_in")
            // An empty cookie is none (what sign-out leaves, until the browser drops it).
            let empty = try await api.request(.get, "/v1/tools", key: nil, headers: [.cookie: "convo_session="])
            #expect(empty.status == .unauthorized && empty.errorCode == "missing_key")
            for garbage in ["convo_session=cvs_short", "convo_session=\(api.all)", "convo_session=cvs_\(String(repeating: "A", count: 43))"] {
                let reply = try await api.request(.get, "/v1/tools", key: nil, headers: [.cookie: garbage])
                #expect(reply.status == .unauthorized && reply.errorCode == "invalid_session", "\(garbage): \(reply.status) \(reply.text)")
            }
            // A key in the header wins over a cookie: the key's own answer.
            let both = try await api.request(.get, "/v1/tools", key: api.read, headers: [.cookie: "convo_session=cvs_bad"])
            #expect(both.status == .ok)
            // Guessing sessions is limited like guessing keys: 429 with Retry-After past the address's budget.
            // (A burst of 20, then 2 a second for as long as the guessing took.)
            var limited: APIHarness.Reply?
            var refused = 0
            let started = ContinuousClock.now
            for attempt in 0..<500 where limited == nil {
                let guess = "convo_session=cvs_\(String(format: "%043d", attempt))"
                let reply = try await api.request(.get, "/v1/tools", key: nil, headers: [.cookie: guess])
                if reply.status == .tooManyRequests { limited = reply } else { refused += 1 }
            }
            let budget = 20 + Int(((ContinuousClock.now - started).inSeconds * 2).rounded(.up))
            #expect(limited?.errorCode == "too_many_failed_authentications" && limited?.headers[.retryAfter] != nil, "\(String(describing: limited?.text))")
            #expect(refused >= 10 && refused <= budget, "\(refused) refused before the first 429, budget \(budget)")
        }
    }
}
