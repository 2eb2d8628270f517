import Foundation

/// An event payload that reads itself with a ``PayloadReader``: the types every fold and every decision
/// decodes. Each reads exactly what its synthesized `Decodable` reads (a missing or `null` optional member
/// is `nil`, unknown members are passed over) and throws ``PayloadReader/Unhandled`` for anything else, so
/// ``StoredPayload/read(_:)`` can leave that payload to `JSONDecoder`. `PayloadReadableTests` holds every
/// type to its `Decodable` on the same bytes.
public protocol PayloadReadable: DomainEvent {
    init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled)
}

extension StoredPayload {
    /// The payload as a `T`: read by hand when ``PayloadReader`` handles it, else decoded by `JSONDecoder`.
    ///
    /// - Throws: the decoder's error when the payload is not a `T`.
    public func read<T: PayloadReadable>(_ type: T.Type = T.self) throws -> T {
        let read = withPayloadBytes { bytes -> T? in
            var reader = PayloadReader(bytes)
            return try? T(reading: &reader)
        }
        return try read ?? decode(T.self)
    }
}

extension PayloadReader {
    fileprivate mutating func date() throws(Unhandled) -> Date {
        guard let date = Timestamp.date(from: try string()) else { throw Unhandled() }
        return date
    }

    fileprivate mutating func visitorUID() throws(Unhandled) -> VisitorUID {
        guard let uid = VisitorUID(rawValue: try string()) else { throw Unhandled() }
        return uid
    }
}

// MARK: messages-

extension ConversationStarted: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var visitorUid = PayloadReader.Member<VisitorUID>(), startedAt = PayloadReader.Member<Date>()
        while let key = try payload.nextKey() {
            switch key {
            case "visitorUid": try visitorUid.set(payload.visitorUID())
            case "startedAt": try startedAt.set(payload.date())
            default: try payload.skip()
            }
        }
        self.init(visitorUid: try visitorUid.required(), startedAt: try startedAt.required())
    }
}

extension VisitorMessageReceived: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var messageId = PayloadReader.Member<String>(), visitorUid = PayloadReader.Member<VisitorUID>()
        var text = PayloadReader.Member<String>(), sentAt = PayloadReader.Member<Date>()
        while let key = try payload.nextKey() {
            switch key {
            case "messageId": try messageId.set(payload.string())
            case "visitorUid": try visitorUid.set(payload.visitorUID())
            case "text": try text.set(payload.string())
            case "sentAt": try sentAt.set(payload.date())
            default: try payload.skip()
            }
        }
        self.init(messageId: try messageId.required(), visitorUid: try visitorUid.required(), text: try text.required(), sentAt: try sentAt.required())
    }
}

// MARK: workflow-

extension WorkflowStarted: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var workflowId = PayloadReader.Member<String>(), workflowVersion = PayloadReader.Member<Int>(), startNodeId = PayloadReader.Member<String>()
        while let key = try payload.nextKey() {
            switch key {
            case "workflowId": try workflowId.set(payload.string())
            case "workflowVersion": try workflowVersion.set(payload.integer())
            case "startNodeId": try startNodeId.set(payload.string())
            default: try payload.skip()
            }
        }
        self.init(workflowId: try workflowId.required(), workflowVersion: try workflowVersion.required(), startNodeId: try startNodeId.required())
    }
}

extension WorkflowTransitioned: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var from = PayloadReader.Member<String?>(), to = PayloadReader.Member<String>(), causedByMessageId = PayloadReader.Member<String?>()
        while let key = try payload.nextKey() {
            switch key {
            case "from": try from.set(payload.optionalString())
            case "to": try to.set(payload.string())
            case "causedByMessageId": try causedByMessageId.set(payload.optionalString())
            default: try payload.skip()
            }
        }
        self.init(from: from.optional(), to: try to.required(), causedByMessageId: causedByMessageId.optional())
    }
}

extension WorkflowVariableSet: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var name = PayloadReader.Member<String>(), value = PayloadReader.Member<JSONValue>(), nodeId = PayloadReader.Member<String>()
        while let key = try payload.nextKey() {
            switch key {
            case "name": try name.set(payload.string())
            case "value": try value.set(payload.value())
            case "nodeId": try nodeId.set(payload.string())
            default: try payload.skip()
            }
        }
        self.init(name: try name.required(), value: try value.required(), nodeId: try nodeId.required())
    }
}

extension AssistantMessageSent: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var text = PayloadReader.Member<String>(), nodeId = PayloadReader.Member<String>(), inReplyTo = PayloadReader.Member<[String]>()
        var provider = PayloadReader.Member<String>(), model = PayloadReader.Member<String?>(), latencyMs = PayloadReader.Member<Int?>()
        while let key = try payload.nextKey() {
            switch key {
            case "text": try text.set(payload.string())
            case "nodeId": try nodeId.set(payload.string())
            case "inReplyTo": try inReplyTo.set(payload.strings())
            case "provider": try provider.set(payload.string())
            case "model": try model.set(payload.optionalString())
            case "latencyMs": try latencyMs.set(payload.optionalInteger())
            default: try payload.skip()
            }
        }
        self.init(
            text: try text.required(), nodeId: try nodeId.required(), inReplyTo: try inReplyTo.required(), provider: try provider.required(),
            model: model.optional(), latencyMs: latencyMs.optional())
    }
}

extension ToolCalled: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var tool = PayloadReader.Member<String>(), arguments = PayloadReader.Member<JSONValue>(), outcome = PayloadReader.Member<Outcome>()
        var error = PayloadReader.Member<String?>(), actorId = PayloadReader.Member<String>(), nodeId = PayloadReader.Member<String>()
        while let key = try payload.nextKey() {
            switch key {
            case "tool": try tool.set(payload.string())
            case "arguments": try arguments.set(payload.value())
            case "outcome":
                guard let value = Outcome(rawValue: try payload.string()) else { throw PayloadReader.Unhandled() }
                try outcome.set(value)
            case "error": try error.set(payload.optionalString())
            case "actorId": try actorId.set(payload.string())
            case "nodeId": try nodeId.set(payload.string())
            default: try payload.skip()
            }
        }
        self.init(
            tool: try tool.required(), arguments: try arguments.required(), outcome: try outcome.required(), error: error.optional(),
            actorId: try actorId.required(), nodeId: try nodeId.required())
    }
}

/// The payloads that are one node id.
private func readNodeId(_ payload: inout PayloadReader) throws(PayloadReader.Unhandled) -> String {
    var nodeId = PayloadReader.Member<String>()
    while let key = try payload.nextKey() {
        switch key {
        case "nodeId": try nodeId.set(payload.string())
        default: try payload.skip()
        }
    }
    return try nodeId.required()
}

extension WorkflowWaitingForInput: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        self.init(nodeId: try readNodeId(&payload))
    }
}

extension WorkflowCompleted: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        self.init(nodeId: try readNodeId(&payload))
    }
}

extension ConversationHandedOff: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var nodeId = PayloadReader.Member<String>(), team = PayloadReader.Member<String?>(), reason = PayloadReader.Member<String?>()
        while let key = try payload.nextKey() {
            switch key {
            case "nodeId": try nodeId.set(payload.string())
            case "team": try team.set(payload.optionalString())
            case "reason": try reason.set(payload.optionalString())
            default: try payload.skip()
            }
        }
        self.init(nodeId: try nodeId.required(), team: team.optional(), reason: reason.optional())
    }
}

extension WorkflowFailed: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var nodeId = PayloadReader.Member<String?>(), reason = PayloadReader.Member<String>()
        while let key = try payload.nextKey() {
            switch key {
            case "nodeId": try nodeId.set(payload.optionalString())
            case "reason": try reason.set(payload.string())
            default: try payload.skip()
            }
        }
        self.init(nodeId: nodeId.optional(), reason: try reason.required())
    }
}

extension AIReplyFailed: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var nodeId = PayloadReader.Member<String>(), provider = PayloadReader.Member<String>(), reason = PayloadReader.Member<String>()
        while let key = try payload.nextKey() {
            switch key {
            case "nodeId": try nodeId.set(payload.string())
            case "provider": try provider.set(payload.string())
            case "reason": try reason.set(payload.string())
            default: try payload.skip()
            }
        }
        self.init(nodeId: try nodeId.required(), provider: try provider.required(), reason: try reason.required())
    }
}

extension MessagesProcessed: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var upToVersion = PayloadReader.Member<Int64>()
        while let key = try payload.nextKey() {
            switch key {
            case "upToVersion": try upToVersion.set(payload.integer())
            default: try payload.skip()
            }
        }
        self.init(upToVersion: try upToVersion.required())
    }
}

extension VisitorDataErased: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var visitorUid = PayloadReader.Member<VisitorUID>(), messagesVersion = PayloadReader.Member<Int64>(), erasureId = PayloadReader.Member<String>()
        while let key = try payload.nextKey() {
            switch key {
            case "visitorUid": try visitorUid.set(payload.visitorUID())
            case "messagesVersion": try messagesVersion.set(payload.integer())
            case "erasureId": try erasureId.set(payload.string())
            default: try payload.skip()
            }
        }
        self.init(visitorUid: try visitorUid.required(), messagesVersion: try messagesVersion.required(), erasureId: try erasureId.required())
    }
}

// MARK: people

extension ConversationAssigned: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var agentId = PayloadReader.Member<String>(), agentName = PayloadReader.Member<String>(), fromAgentId = PayloadReader.Member<String?>()
        while let key = try payload.nextKey() {
            switch key {
            case "agentId": try agentId.set(payload.string())
            case "agentName": try agentName.set(payload.string())
            case "fromAgentId": try fromAgentId.set(payload.optionalString())
            default: try payload.skip()
            }
        }
        self.init(agentId: try agentId.required(), agentName: try agentName.required(), fromAgentId: fromAgentId.optional())
    }
}

/// The two payloads of an agent's text: an id, the text, and its author.
private func readAgentText(_ payload: inout PayloadReader, id idKey: StaticString) throws(PayloadReader.Unhandled) -> (String, String, String, String) {
    var id = PayloadReader.Member<String>(), text = PayloadReader.Member<String>()
    var agentId = PayloadReader.Member<String>(), agentName = PayloadReader.Member<String>()
    while let key = try payload.nextKey() {
        switch key {
        case idKey: try id.set(payload.string())
        case "text": try text.set(payload.string())
        case "agentId": try agentId.set(payload.string())
        case "agentName": try agentName.set(payload.string())
        default: try payload.skip()
        }
    }
    return (try id.required(), try text.required(), try agentId.required(), try agentName.required())
}

extension AgentMessageSent: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        let (messageId, text, agentId, agentName) = try readAgentText(&payload, id: "messageId")
        self.init(messageId: messageId, text: text, agentId: agentId, agentName: agentName)
    }
}

extension InternalNoteAdded: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        let (noteId, text, agentId, agentName) = try readAgentText(&payload, id: "noteId")
        self.init(noteId: noteId, text: text, agentId: agentId, agentName: agentName)
    }
}

extension ConversationHandedBack: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var nodeId = PayloadReader.Member<String>(), agentId = PayloadReader.Member<String>()
        while let key = try payload.nextKey() {
            switch key {
            case "nodeId": try nodeId.set(payload.string())
            case "agentId": try agentId.set(payload.string())
            default: try payload.skip()
            }
        }
        self.init(nodeId: try nodeId.required(), agentId: try agentId.required())
    }
}

extension ConversationResolved: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var agentId = PayloadReader.Member<String>()
        while let key = try payload.nextKey() {
            switch key {
            case "agentId": try agentId.set(payload.string())
            default: try payload.skip()
            }
        }
        self.init(agentId: try agentId.required())
    }
}

extension ConversationReopened: PayloadReadable {
    public init(reading payload: inout PayloadReader) throws(PayloadReader.Unhandled) {
        var agentId = PayloadReader.Member<String?>(), causedByMessageId = PayloadReader.Member<String?>()
        while let key = try payload.nextKey() {
            switch key {
            case "agentId": try agentId.set(payload.optionalString())
            case "causedByMessageId": try causedByMessageId.set(payload.optionalString())
            default: try payload.skip()
            }
        }
        self.init(agentId: agentId.optional(), causedByMessageId: causedByMessageId.optional())
    }
}
