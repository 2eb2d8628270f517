import ArgumentParser
import EventStore
import Foundation
import NIOCore
import NIOFoundationCompat
import Projections
import SharedTypes

/// What one decision of the answering benchmark encodes (its seven events' payloads and the two projection
/// rows it changes), with `JSONEncoder` and with the streaming encoder the store and the runners use,
/// alternating in rounds, in one process: no database, CPU only.
struct EncodingBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encoding", abstract: "a decision's payloads and rows encoded: JSONEncoder against the streaming encoder.")

    @Option(help: "Decisions per side and round.") var decisions: Int = 20_000
    @Option(help: "Rounds; the median ratio counts.") var rounds: Int = 5

    func run() async throws {
        let payloads: [any Encodable] = [
            WorkflowTransitioned(from: "await_followup", to: "route", causedByMessageId: "m-12"),
            WorkflowTransitioned(from: "route", to: "answer", causedByMessageId: "m-12"),
            ToolCalled(tool: "add_tag", arguments: ["tag": "shipping"], outcome: .succeeded, actorId: "user:ai", nodeId: "answer"),
            AssistantMessageSent(
                text: "Orders usually arrive within 3 to 5 working days. If yours is late, tell me your email and I'll have it looked into.",
                nodeId: "answer", inReplyTo: ["m-12"], provider: "rules"),
            WorkflowTransitioned(from: "answer", to: "await_followup", causedByMessageId: "m-12"),
            WorkflowWaitingForInput(nodeId: "await_followup"),
            MessagesProcessed(upToVersion: 25),
        ]
        let at = Date()
        var conversation = ConversationRow(key: ConversationKey(tenantId: "bench", conversationId: "c-123"))
        conversation.visitorUid = "v-123"
        conversation.tags = ["shipping"]
        conversation.startedAt = at
        conversation.lastActivityAt = at
        var state = WorkflowState()
        state.workflowId = "support"
        state.workflowVersion = 1
        state.currentNode = "await_followup"
        state.status = .waitingForInput
        state.variables = ["question": "Where is my order? It has not arrived yet."]
        state.updatedAt = at
        let rows: [any Encodable] = [[conversation], [WorkflowStateRow(key: ConversationKey(tenantId: "bench", conversationId: "c-123"), state: state)]]

        let foundation = JSONCoding.encoder
        let rowDates: @Sendable (Date) -> String = { Timestamp.string(from: $0) }
        let rowFoundation: JSONEncoder = {
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .custom { date, encoder in
                var container = encoder.singleValueContainer()
                try container.encode(rowDates(date))
            }
            return encoder
        }()
        let rowStreaming = StreamingJSONEncoder(dateString: rowDates, fallback: { ByteBuffer(data: try rowFoundation.encode($0)) })
        let decisions = decisions

        func side(_ encode: (any Encodable, Bool) throws -> Int) throws -> (seconds: Double, bytes: Int) {
            let start = ContinuousClock.now
            var bytes = 0
            for _ in 0..<decisions {
                for payload in payloads { bytes += try encode(payload, false) }
                for row in rows { bytes += try encode(row, true) }
            }
            return ((ContinuousClock.now - start).seconds, bytes)
        }
        report("encoding: \(decisions) decisions per side and round (\(payloads.count) payloads and \(rows.count) rows each)")
        var ratios: [Double] = []
        for round in 1...rounds {
            // The JSONEncoder side first in odd rounds.
            var sides: [(String, Double)] = []
            for name in round % 2 == 1 ? ["JSONEncoder", "streaming"] : ["streaming", "JSONEncoder"] {
                let (seconds, _) =
                    name == "JSONEncoder"
                    ? try side { value, isRow in
                        isRow ? try rowFoundation.encode(value).count : try foundation.encodeAsByteBuffer(value, allocator: ByteBufferAllocator()).readableBytes
                    }
                    : try side { value, isRow in
                        isRow ? try rowStreaming.encode(value, capacity: 1024).readableBytes : try JSONCoding.streaming.encode(value).readableBytes
                    }
                sides.append((name, seconds))
            }
            let foundationSeconds = sides.first { $0.0 == "JSONEncoder" }!.1
            let streamingSeconds = sides.first { $0.0 == "streaming" }!.1
            ratios.append(foundationSeconds / streamingSeconds)
            report(
                "  round \(round): JSONEncoder \((foundationSeconds / Double(decisions) * 1e6).formatted(1)) µs per decision, "
                    + "streaming \((streamingSeconds / Double(decisions) * 1e6).formatted(1)) µs: ×\((foundationSeconds / streamingSeconds).formatted(2)) faster")
        }
        report("streaming encoder: ×\(ratios.sorted()[ratios.count / 2].formatted(2)) the speed of JSONEncoder, median of \(rounds)")
    }
}
