import ConvoTestSupport
import EventStore
import Foundation
import Testing

@testable import convo

/// `convo keys …` as an operator runs them.
@Suite struct KeysCommandTests {
    /// A key's format, as every request's key is checked before any lookup: the keys convo makes, and near
    /// misses of each rule (prefix, separator, the id's length and digits, the secret's length, not ASCII).
    @Test func aKeyIsParsedOnlyInItsOwnFormat() {
        for _ in 0..<200 {
            let (id, key) = APIKeyStore.generate()
            #expect(APIKeyStore.parse(key)?.id == id, "\(key)")
        }
        let secret = String(repeating: "Ab9_-", count: 14)
        func part(_ count: Int) -> String { String(secret.prefix(count)) }
        let id = "0123456789abcdef"
        let taken = ["cvk_\(id)_\(part(32))", "cvk_\(id)_\(part(64))", "cvk_0123456789ABCDEF_\(part(43))", "cvk_\(id)_\(part(40))"]
        for key in taken {
            let parsed = APIKeyStore.parse(key)
            #expect(parsed?.id == String(key.dropFirst(4).prefix(16)) && parsed?.secret == String(key.dropFirst(21)), "\(key)")
        }
        let refused = [
            "", "cvk_", "cvk__", "CVK_\(id)_\(part(40))", "cvk_\(id)\(part(40))", "cvk_\(id)_\(part(31))", "cvk_\(id)_\(part(65))",
            "cvk_0123456789abcde_\(part(40))", "cvk_0123456789abcdef0_\(part(40))", "cvk_0123456789abcdeg_\(part(40))",
            "cvk_\(id)_\(part(40))é", "cvk_0123456789abcde\u{FF10}_\(part(40))", "cvk_\(id)_\(part(30))e\u{301}e\u{301}",
        ]
        for key in refused { #expect(APIKeyStore.parse(key) == nil, "\(key)") }
    }

    struct Created: Decodable {
        var key: String
        var id: String
        var tenant: String
        var scopes: [String]
    }

    struct Listed: Decodable {
        var id: String
        var tenant: String
        var scopes: [String]
        var revokedAt: Date?
    }

    @Test func createListRevokeAndOnlyAHashIsStored() async throws {
        try await TestDatabase.withFreshDatabase { database in
            let url = "postgres://\(database.username)@\(database.host):\(database.port)/\(database.database)"
            let env = ["CONVO_DATABASE_URL": url, "CI": "true"]
            #expect(try await ConvoProcess.run(["migrate"], environment: env).status == 0)

            let made = try await ConvoProcess.run(["keys", "create", "--tenant", "acme", "--scopes", "ingest,read", "--json"], environment: env)
            #expect(made.status == 0, "\(made.stderr)")
            let created = try JSONDecoder().decode(Created.self, from: Data(made.stdout.utf8))
            #expect(created.key.hasPrefix("cvk_\(created.id)_") && created.tenant == "acme" && created.scopes == ["ingest", "read"])
            let plain = try await ConvoProcess.run(["keys", "create", "--tenant", "acme", "--scopes", "admin"], environment: env)
            #expect(plain.status == 0 && plain.stdout.hasPrefix("cvk_") && plain.stderr.contains("not shown again"))

            // The key itself is nowhere in the database: only its SHA-256.
            try await TestDatabase.withClient(url: database, maximumConnections: 2) { client in
                let rows = try await client.query("SELECT count(*) FROM api_keys WHERE position(\(created.key) in secret_hash::text || id || name) > 0")
                for try await count in rows.decode(Int64.self) { #expect(count == 0) }
                let store = APIKeyStore(client: client, logger: TestDatabase.logger)
                #expect(try await store.authenticate(created.key)?.tenant.rawValue == "acme")
                #expect(try await store.authenticate(created.key + "x") == nil)
                let tampered = String(created.key.dropLast()) + (created.key.hasSuffix("A") ? "B" : "A")
                #expect(try await store.authenticate(tampered) == nil)
            }

            let listed = try await ConvoProcess.run(["keys", "list", "--tenant", "acme", "--json"], environment: env)
            let keys = try JSONDecoder.iso8601.decode([Listed].self, from: Data(listed.stdout.utf8))
            #expect(keys.count == 2 && keys.allSatisfy { $0.tenant == "acme" && $0.revokedAt == nil })
            #expect(!listed.stdout.contains(created.key))
            let table = try await ConvoProcess.run(["keys", "list"], environment: env)
            #expect(table.status == 0 && table.stdout.contains(created.id) && table.stdout.contains("ingest,read"))

            let revoked = try await ConvoProcess.run(["keys", "revoke", created.id], environment: env)
            #expect(revoked.status == 0 && revoked.stdout.contains("revoked key \(created.id)"))
            let after = try JSONDecoder.iso8601.decode([Listed].self, from: Data(try await ConvoProcess.run(["keys", "list", "--json"], environment: env).stdout.utf8))
            #expect(after.first { $0.id == created.id }?.revokedAt != nil)
            try await TestDatabase.withClient(url: database, maximumConnections: 2) { client in
                let found = try await APIKeyStore(client: client, logger: TestDatabase.logger).authenticate(created.key)
                #expect(found == nil)
            }

            for bad in [["keys", "create", "--tenant", "acme", "--scopes", "root"], ["keys", "create", "--tenant", "Not Valid", "--scopes", "read"],
                        ["keys", "create", "--tenant", "acme", "--scopes", ""], ["keys", "revoke", "nope"]] {
                let result = try await ConvoProcess.run(bad, environment: env)
                #expect(result.status != 0 && !result.stderr.isEmpty, "\(bad)")
            }
        }
    }
}
