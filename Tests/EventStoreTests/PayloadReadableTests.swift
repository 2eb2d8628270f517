import ConvoTestSupport
import EventStore
import Foundation
import NIOCore
import SharedTypes
import Testing

/// The payloads read by hand must read exactly as `JSONDecoder` reads them: the same value when the reader
/// handles a payload, and the decoder's answer (value or error) when it does not.
@Suite struct PayloadReadableTests {
    static let tricky =
        "quote \" backslash \\ slash / newline \n tab \t bell \u{07} é 日本 🙂 \u{1F} \u{0}"

    static let samples = samples(tricky)

    /// One of every type, with optional members set and unset, `tricky` in their texts.
    static func samples(_ tricky: String) -> [any PayloadReadable] {
        [
            ConversationStarted(
                visitorUid: VisitorUID(rawValue: "v-1")!,
                startedAt: Date(timeIntervalSince1970: 1_795_000_000.123456)),
            VisitorMessageReceived(
                messageId: "m-1", visitorUid: VisitorUID(rawValue: "v.1:A_b")!, text: tricky,
                sentAt: Date(timeIntervalSince1970: -12.5)),
            WorkflowStarted(workflowId: "support", workflowVersion: 12, startNodeId: "start"),
            WorkflowTransitioned(from: nil, to: "say", causedByMessageId: "m-1"),
            WorkflowTransitioned(from: "wait", to: "say", causedByMessageId: nil),
            WorkflowVariableSet(name: "answer", value: .string(tricky), nodeId: "ask"),
            WorkflowVariableSet(
                name: "order",
                value: [
                    "id": 12, "total": .number(12.75), "tiny": .number(1e-7), "huge": .number(-1.5e300),
                    "tags": ["a", .null, true, false, [:], []], "note": .string(tricky),
                ],
                nodeId: "lookup"),
            WorkflowVariableSet(name: "nothing", value: .null, nodeId: "n"),
            AssistantMessageSent(
                text: tricky, nodeId: "say", inReplyTo: ["m-1", "m-2"], provider: "workflow"),
            AssistantMessageSent(
                text: "", nodeId: "ai", inReplyTo: [], provider: "openai", model: "gpt", latencyMs: -3),
            ToolCalled(
                tool: "add_tag", arguments: ["tag": "vip", "weights": [1, .number(2.5)]],
                outcome: .succeeded, actorId: "user:ai", nodeId: "tag"),
            ToolCalled(
                tool: "set_profile", arguments: .array([]), outcome: .rejected, error: tricky, actorId: "a",
                nodeId: "p"),
            WorkflowWaitingForInput(nodeId: "wait"),
            ConversationHandedOff(nodeId: "human", team: nil, reason: tricky),
            ConversationHandedOff(nodeId: "human", team: "billing", reason: nil),
            WorkflowCompleted(nodeId: "end"),
            WorkflowFailed(nodeId: nil, reason: "step limit"),
            WorkflowFailed(nodeId: "ai", reason: tricky),
            AIReplyFailed(nodeId: "ai", provider: "openai", reason: "timeout"),
            MessagesProcessed(upToVersion: Int64.max),
            MessagesProcessed(upToVersion: Int64.min),
            VisitorDataErased(
                visitorUid: VisitorUID(rawValue: "v-9")!, messagesVersion: 7, erasureId: "e-1"),
            ConversationAssigned(agentId: "u-1", agentName: tricky, fromAgentId: nil),
            ConversationAssigned(agentId: "u-1", agentName: "Ann", fromAgentId: "u-2"),
            AgentMessageSent(messageId: "am-1", text: tricky, agentId: "u-1", agentName: "Ann"),
            InternalNoteAdded(noteId: "n-1", text: tricky, agentId: "u-1", agentName: "Ann"),
            ConversationHandedBack(nodeId: "wait", agentId: "u-1"),
            ConversationResolved(agentId: "u-1"),
            ConversationReopened(agentId: nil, causedByMessageId: nil),
            ConversationReopened(agentId: "u-1", causedByMessageId: "m-3"),
        ]
    }

    /// What the reader alone gives (`nil`: not handled), what ``StoredPayload/read(_:)`` gives, and what
    /// the decoder gives, for the same bytes.
    struct Outcome<T: PayloadReadable> {
        var handled: T?
        var read: Answer<T>
        var decoded: Answer<T>
    }

    /// A value, or the text of the error thrown instead.
    enum Answer<T: PayloadReadable>: Equatable {
        case success(T)
        case failure(String)

        init(_ body: () throws -> T) {
            do { self = .success(try body()) } catch { self = .failure("\(error)") }
        }

        var value: T? {
            if case .success(let value) = self { return value }
            return nil
        }
    }

    static func outcome<T: PayloadReadable>(_ type: T.Type, _ bytes: [UInt8]) -> Outcome<T> {
        let handled = bytes.withUnsafeBytes { raw -> T? in
            var reader = PayloadReader(raw)
            return try? T(reading: &reader)
        }
        let event = RecordedEvent(
            globalPosition: 1, eventId: UUID(), tenant: TenantID(rawValue: "t")!,
            stream: try! StreamName(category: "workflow", id: "c"), streamVersion: 1,
            type: T.eventType, data: ByteBuffer(bytes: bytes), metadataJSON: ByteBuffer(string: "{}"),
            recordedAt: Date())
        let read = Answer { try event.read(T.self) }
        let decoded = Answer { try JSONCoding.decoder.decode(T.self, from: Data(bytes)) }
        return Outcome(handled: handled, read: read, decoded: decoded)
    }

    /// The encoder's bytes with a space after every `:` and `,` outside strings, as PostgreSQL prints jsonb.
    static func spaced(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var inString = false
        var escaped = false
        for byte in bytes {
            out.append(byte)
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
            } else if byte == UInt8(ascii: "\"") {
                inString = true
            } else if byte == UInt8(ascii: ":") || byte == UInt8(ascii: ",") {
                out.append(UInt8(ascii: " "))
            }
        }
        return out
    }

    @Test func everyTypeIsReadByHandAsTheDecoderReadsIt() throws {
        func check<T: PayloadReadable>(_ sample: T) throws {
            let compact = Array(try JSONCoding.encoder.encode(sample))
            for bytes in [
                compact, Self.spaced(compact), Array(" \n".utf8) + Self.spaced(compact) + Array("\t ".utf8),
            ] {
                let outcome = Self.outcome(T.self, bytes)
                #expect(
                    outcome.handled == sample,
                    "\(T.self) not read by hand: \(String(decoding: bytes, as: UTF8.self))")
                #expect(outcome.decoded == .success(sample))
                #expect(outcome.read == .success(sample))
            }
        }
        for sample in Self.samples { try check(sample) }
    }

    @Test func membersTheTypeDoesNotHaveArePassedOverAndMissingOptionalsAreNil() throws {
        let bytes = Array(
            #"{"unknown": {"a": [1, -2.5e3, "x\"y", null, true, {"b": []}]}, "to": "say", "later": "z", "from": null}"#
                .utf8)
        let outcome = Self.outcome(WorkflowTransitioned.self, bytes)
        #expect(outcome.handled == WorkflowTransitioned(from: nil, to: "say", causedByMessageId: nil))
        #expect(
            outcome.decoded
                == .success(WorkflowTransitioned(from: nil, to: "say", causedByMessageId: nil)))
    }

    /// Keys the type does not read may repeat (jsonb never stores that, but a payload might hold it): read as
    /// the decoder reads it, whichever way that is.
    @Test func repeatedKeysTheTypeDoesNotReadReadAsTheDecoderReadsThem() {
        let bytes = Array(#"{"nodeId": "a", "x": 1, "x": [2], "y": {"z": 1, "z": 2}}"#.utf8)
        let outcome = Self.outcome(WorkflowCompleted.self, bytes)
        if let handled = outcome.handled { #expect(outcome.decoded == .success(handled)) }
        #expect(outcome.read == outcome.decoded)
    }

    @Test func escapesReadAsTheDecoderReadsThem() throws {
        let bytes = Array(#"{"nodeId": "a\u00e9\u65e5\ud83d\ude42\/\b\f\n\r\t\"\\\u0000z"}"#.utf8)
        let outcome = Self.outcome(WorkflowCompleted.self, bytes)
        #expect(outcome.handled == WorkflowCompleted(nodeId: "aé日🙂/\u{8}\u{C}\n\r\t\"\\\u{0}z"))
        #expect(
            outcome.decoded == .success(WorkflowCompleted(nodeId: "aé日🙂/\u{8}\u{C}\n\r\t\"\\\u{0}z")))
    }

    /// What the reader leaves alone goes to the decoder, which gives its own value or its own error.
    @Test(arguments: [
        #"{"nodeId": "a", "nodeId": "b"}"#,  // a duplicate key
        #"{"node\u0049d": "a"}"#,  // an escaped key
        #"{}"#,  // a missing member
        #"{"nodeId": 1}"#,  // a value of another kind
        #"{"nodeId": null}"#,
        #"{"nodeId": "a"} x"#,  // something after the object
        #"{"nodeId": "a",}"#,
        #"["nodeId"]"#,
        #"{"nodeId": "\ud83d"}"#,  // a lone surrogate
        #"{"nodeId": "\x"}"#,
        "{\"nodeId\": \"a\u{1}\"}",  // a control character
        "",
    ])
    func payloadsTheReaderLeavesGoToTheDecoder(_ text: String) {
        let outcome = Self.outcome(WorkflowCompleted.self, Array(text.utf8))
        #expect(outcome.handled == nil)
        #expect(outcome.read == outcome.decoded)
    }

    @Test(arguments: [
        #"{"upToVersion": 1.0}"#, #"{"upToVersion": 1e2}"#, #"{"upToVersion": 01}"#,
        #"{"upToVersion": 9223372036854775808}"#, #"{"upToVersion": -}"#,
    ])
    func integersTheReaderLeavesGoToTheDecoder(_ text: String) {
        let outcome = Self.outcome(MessagesProcessed.self, Array(text.utf8))
        #expect(outcome.handled == nil)
        #expect(outcome.read == outcome.decoded)
    }

    @Test func bytesThatAreNotUTF8AreLeftToTheDecoder() {
        let bytes = Array(#"{"nodeId": ""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        let outcome = Self.outcome(WorkflowCompleted.self, bytes)
        #expect(outcome.handled == nil)
        #expect(outcome.read == outcome.decoded)
    }

    @Test func nestingDeeperThanTheReadersLimitIsLeftToTheDecoder() {
        let depth = PayloadReader.maximumDepth + 1
        let value = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        let bytes = Array(#"{"name": "n", "nodeId": "x", "value": \#(value)}"#.utf8)
        let outcome = Self.outcome(WorkflowVariableSet.self, bytes)
        #expect(outcome.handled == nil)
        #expect(outcome.read == outcome.decoded)
        #expect(outcome.read.value != nil)
    }

    /// Thousands of payloads broken at random (a byte replaced, inserted or removed): whenever the reader
    /// gives a value, the decoder gives the same one, and `read` always answers as the decoder does.
    @Test func payloadsBrokenAtRandomReadAsTheDecoderReadsThem() throws {
        var random = SplitMix64(seed: 0x5eed_c0de)
        var handledCount = 0
        var mutations = 0
        func mutate<T: PayloadReadable>(_ sample: T) throws {
            let original = Self.spaced(Array(try JSONCoding.encoder.encode(sample)))
            for _ in 0..<300 {
                let bytes = random.brokenJSON(original)
                let outcome = Self.outcome(T.self, bytes)
                mutations += 1
                if let handled = outcome.handled {
                    handledCount += 1
                    #expect(outcome.decoded == .success(handled), "\(String(decoding: bytes, as: UTF8.self))")
                }
                #expect(outcome.read == outcome.decoded, "\(String(decoding: bytes, as: UTF8.self))")
            }
        }
        for sample in Self.samples { try mutate(sample) }
        // Some mutations leave a readable payload (a changed letter in a string): both paths were compared.
        #expect(handledCount > mutations / 20)
    }

    /// What PostgreSQL hands back (jsonb printed its way, personal members sealed and opened again) is read
    /// by hand, not left to the decoder.
    @Test func storedPayloadsAreReadByHand() async throws {
        try await TestDatabase.withStore { store in
            let tenant = TestDatabase.uniqueTenant()
            let stream = TestDatabase.uniqueStream("workflow")
            func event<T: PayloadReadable>(_ sample: T) throws -> NewEvent {
                try NewEvent(
                    type: T.eventType, encoding: sample, metadata: EventMetadata(actorId: "test"),
                    subject: PersonalDataSubject(visitor: VisitorUID(rawValue: "v-1")!, mayCreateKey: true))
            }
            // PostgreSQL stores no U+0000 in text.
            let samples = Self.samples(Self.tricky.replacingOccurrences(of: "\u{0}", with: ""))
            try await store.append(
                try samples.map { try event($0) }, to: stream, tenant: tenant, expectedVersion: .noStream)
            let stored = try await store.readStream(stream, tenant: tenant, fromVersion: 1, maxCount: 100)
            try #require(stored.count == samples.count)
            func check<T: PayloadReadable>(_ sample: T, _ recorded: RecordedEvent) {
                let handled = recorded.withPayloadBytes { raw -> T? in
                    var reader = PayloadReader(raw)
                    return try? T(reading: &reader)
                }
                #expect(handled == sample, "\(T.self): \(String(buffer: recorded.data))")
            }
            for (sample, recorded) in zip(samples, stored) { check(sample, recorded) }
        }
    }
}

