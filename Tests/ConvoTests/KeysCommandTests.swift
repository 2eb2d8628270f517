import ConvoTestSupport
import EventStore
import Foundation
import Testing

@testable import convo

/// `convo keys …` as an operator runs them.
@Suite struct KeysCommandTests {
    /// Every request's key is read byte by byte when it is ASCII: it must take and refuse exactly what the
    /// reading by characters does (random keys, near misses, and keys that are not ASCII).
    @Test func aKeyIsReadByBytesAsItIsByCharacters() {
        var random = SplitMix64(seed: 0x6b65_7973)
        let alphabet = Array("0123456789abcdefABCDEFgxyz_-Z%é日🙂\u{301} ")
        let hex = Array("0123456789abcdefABCDEF")
        let secret = String(repeating: "Ab9_-", count: 14)
        func part(_ count: Int) -> String { String(secret.prefix(count)) }
        let id = "0123456789abcdef"
        var samples: [String] = ["", "cvk_", "cvk__", "CVK_\(id)_\(part(40))", "cvk_\(id)\(part(40))"]
        samples += ["cvk_\(id)_\(part(43))", "cvk_0123456789ABCDEF_\(part(32))", "cvk_\(id)_\(part(31))", "cvk_\(id)_\(part(64))"]
        samples += ["cvk_\(id)_\(part(65))", "cvk_\(id)_\(part(45))é", "cvk_0123456789abcdeé_\(part(40))", "cvk_\(id)_\(part(30))e\u{301}e\u{301}"]
        for _ in 0..<3000 {
            var key = random.next(upTo: 8) == 0 ? "" : "cvk_"
            for _ in 0..<(14 + random.next(upTo: 4)) { key.append(random.next(upTo: 6) == 0 ? alphabet[random.next(upTo: alphabet.count)] : hex[random.next(upTo: hex.count)]) }
            if random.next(upTo: 5) > 0 { key.append("_") }
            for _ in 0..<(28 + random.next(upTo: 40)) { key.append(alphabet[random.next(upTo: alphabet.count)]) }
            samples.append(key)
        }
        var taken = 0
        for key in samples {
            let bytes = APIKeyStore.parse(key), characters = APIKeyStore.parseCharacters(key)
            #expect(bytes?.id == characters?.id && bytes?.secret == characters?.secret, "\(key)")
            if bytes != nil { taken += 1 }
        }
        // Both outcomes were compared many times.
        #expect(taken > 100 && taken < samples.count - 100, "\(taken) of \(samples.count)")
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
