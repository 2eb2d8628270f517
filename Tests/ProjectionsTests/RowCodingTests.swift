import EventStore
import Foundation
import NIOCore
import NIOFoundationCompat
import SharedTypes
import Testing

@testable import Projections

@Suite struct RowCodingTests {
    @Test(arguments: [
        (0.0, "1970-01-01T00:00:00.000000Z"),
        (1_795_342_530.123456, "2026-11-22T10:15:30.123456Z"),
        (-0.5, "1969-12-31T23:59:59.500000Z"),
        (951_782_400.000001, "2000-02-29T00:00:00.000001Z"),
        (253_402_300_799.5, "9999-12-31T23:59:59.500000Z"),
    ])
    func datesFormatAsUTCWithMicroseconds(_ seconds: Double, _ text: String) throws {
        let date = Date(timeIntervalSince1970: seconds)
        #expect(RowCoding.format(date) == text)
        let parsed = try #require(RowCoding.parse(text))
        #expect(parsed == RowCoding.truncated(date))
    }

    @Test func yearsPastFourDigitsStillFormat() throws {
        let date = Date(timeIntervalSince1970: 253_402_300_800)  // 10000-01-01
        #expect(RowCoding.format(date) == "10000-01-01T00:00:00.000000Z")
    }
}

@Suite struct RowStreamingTests {
    struct FellBack: Error {}

    static let streamingOnly = StreamingJSONEncoder(dateString: { RowCoding.format($0) }, fallback: { _ in throw FellBack() })

    static func value(_ buffer: ByteBuffer) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(buffer.readableBytesView))
    }

    /// Rows of every table, with their optional columns set and unset, streamed as `JSONEncoder` writes
    /// them (what `jsonb_to_recordset` reads), and read back equal.
    @Test func rowsStreamAsJSONEncoderWritesThem() throws {
        let at = RowCoding.truncated(Date(timeIntervalSince1970: 1_795_000_000.123456))
        var conversation = ConversationRow(key: ConversationKey(tenantId: "t", conversationId: "c-1"))
        var full = conversation
        full.visitorUid = "v \"1\""
        full.handedOffTo = "billing"
        full.tags = ["vip", "日本"]
        full.withPeopleSince = at
        full.firstResponseAt = at
        full.startedAt = at
        full.lastActivityAt = at
        full.assignedTo = "u-1"
        full.unreadCount = 3
        conversation.messagesVersion = Int64.max
        var state = WorkflowState()
        state.workflowId = "support"
        state.workflowVersion = 2
        state.currentNode = "wait"
        state.status = .waitingForInput
        state.variables = ["question": "where is \\ my order?", "order": ["id": 12, "items": [1, .null, true]]]
        state.updatedAt = at
        var visitor = VisitorRow(key: VisitorKey(tenantId: "t", visitorUid: "v-1"))
        visitor.email = "a@example.com"
        visitor.firstSeenAt = at

        func check<Row: Codable & Equatable>(_ rows: [Row]) throws {
            let streamed = try Self.streamingOnly.encode(rows)
            #expect(try Self.value(streamed) == Self.value(ByteBuffer(data: RowCoding.encoder.encode(rows))), "\(String(buffer: streamed))")
            #expect(try RowCoding.decoder.decode([Row].self, from: Data(streamed.readableBytesView)) == rows)
        }
        try check([conversation, full])
        try check([WorkflowStateRow(key: ConversationKey(tenantId: "t", conversationId: "c"), state: state), WorkflowStateRow(key: ConversationKey(tenantId: "t", conversationId: "d"), state: WorkflowState())])
        try check([visitor, VisitorRow(key: VisitorKey(tenantId: "t", visitorUid: "v-2"))])
    }
}
