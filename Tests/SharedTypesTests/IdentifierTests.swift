import Foundation
import SharedTypes
import Testing

@Suite struct IdentifierTests {
    @Test func streamNamesSplitAtTheFirstDash() throws {
        let name = try StreamName(parsing: "messages-8f2c-41aa")
        #expect(name.category == "messages")
        #expect(name.id == "8f2c-41aa")
        #expect(name.description == "messages-8f2c-41aa")
    }

    /// What the store wrote splits as a parsed name does; a value without a dash is all category.
    @Test(arguments: ["messages-8f2c-41aa", "workflow-c1", "audit-tenant_1", "a-b", "messages-x-", "nodash", "é-ü-x", "-lead", ""])
    func storedStreamNamesSplitWithoutValidation(_ raw: String) throws {
        let name = StreamName(unchecked: raw)
        if let parsed = try? StreamName(parsing: raw) { #expect(name == parsed) }
        let dash = raw.firstIndex(of: "-")
        #expect(name.category == dash.map { String(raw[..<$0]) } ?? raw)
        #expect(name.id == dash.map { String(raw[raw.index(after: $0)...]) } ?? "")
    }

    @Test(arguments: ["messages", "-abc", "Messages-abc", "messages-", "messages-has space", "me ssages-x", String(repeating: "a", count: 65) + "-x"])
    func invalidStreamNamesAreRefused(_ raw: String) {
        #expect(throws: StreamName.InvalidName.self) { try StreamName(parsing: raw) }
    }

    @Test func tenantIDsAreLowercaseSlugs() {
        #expect(TenantID(rawValue: "acme-eu_1") != nil)
        for raw in ["", "Acme", "-acme", "acme corp", String(repeating: "a", count: 65), "acme/eu"] {
            #expect(TenantID(rawValue: raw) == nil, "\(raw)")
        }
    }

    @Test func identifiersTravelAsBareStringsAndInvalidOnesAreRefused() throws {
        struct Ids: Codable, Equatable {
            var tenant: TenantID
            var conversation: ConversationID
            var visitor: VisitorUID
        }
        let ids = Ids(tenant: TenantID("acme"), conversation: ConversationID(rawValue: "c:1")!, visitor: VisitorUID(rawValue: "V.1")!)
        let data = try JSONEncoder().encode(ids)
        #expect(String(decoding: data, as: UTF8.self).contains(#""conversation":"c:1""#))
        #expect(try JSONDecoder().decode(Ids.self, from: data) == ids)
        for bad in [#"{"tenant":"Acme","conversation":"c","visitor":"v"}"#, #"{"tenant":"a","conversation":"has space","visitor":"v"}"#,
                    #"{"tenant":"a","conversation":"c","visitor":""}"#] {
            #expect(throws: DecodingError.self) { try JSONDecoder().decode(Ids.self, from: Data(bad.utf8)) }
        }
        #expect(ConversationID(rawValue: String(repeating: "x", count: 129)) == nil && ConversationID(rawValue: "a")! < ConversationID(rawValue: "b")!)
    }

    @Test func metadataKeepsNamedAndFreeKeysThroughJSON() throws {
        var metadata = EventMetadata(correlationId: UUID(), causationId: UUID(), actorId: "visitor:v1")
        metadata["lockToken"] = "abc"
        metadata["basedOnVersion"] = 7
        let data = try JSONEncoder().encode(metadata)
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["lockToken"] as? String == "abc")
        #expect(object["actorId"] as? String == "visitor:v1")
        #expect(try JSONDecoder().decode(EventMetadata.self, from: data) == metadata)
        #expect(metadata["basedOnVersion"]?.intValue == 7)
    }

    @Test func durationsConvertToNanoseconds() {
        #expect(Duration.milliseconds(1500).nanoseconds == 1_500_000_000)
        #expect(Duration.seconds(Int64.max).nanoseconds == .max)
    }
}
