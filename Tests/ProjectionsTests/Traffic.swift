import ConvoTestSupport
import EventStore
import Foundation
import Projections
import SharedTypes

/// Appends conversations the way ingest and the responder do: visitor messages to `messages-`, decisions to
/// `workflow-` (with the visitor in the metadata), each append at the stream's exact version.
actor Traffic {
    let store: PostgresEventStore
    let tenant: TenantID
    private var versions: [String: (messages: Int64, workflow: Int64)] = [:]
    private(set) var turns: [String: Int] = [:]
    /// The position of the last event appended.
    private(set) var lastPosition: Int64 = 0

    init(store: PostgresEventStore, tenant: TenantID = TestDatabase.uniqueTenant()) {
        self.store = store
        self.tenant = tenant
    }

    /// One visitor message and the responder's answer to it.
    func turn(_ conversation: String, visitor: String? = nil) async throws {
        let id = ConversationID(rawValue: conversation)!
        let visitorUid = VisitorUID(rawValue: visitor ?? "v-\(conversation)")!
        var (messages, workflow) = versions[conversation] ?? (0, 0)
        let count = (turns[conversation] ?? 0) + 1
        var incoming: [NewEvent] = []
        if messages == 0 {
            incoming.append(try NewEvent(type: ConversationStarted.eventType, encoding: ConversationStarted(visitorUid: visitorUid, startedAt: Date())))
        }
        incoming.append(
            try NewEvent(
                type: VisitorMessageReceived.eventType,
                encoding: VisitorMessageReceived(messageId: "m\(count)", visitorUid: visitorUid, text: "message \(count)", sentAt: Date()),
                subject: PersonalDataSubject(visitor: visitorUid, mayCreateKey: true)))
        let appended = try await store.append(incoming, to: id.messagesStream, tenant: tenant, expectedVersion: .exact(messages))
        messages = appended.streamVersion
        let messagesLast = appended.lastPosition

        var decided: [WorkflowEvent] = []
        if workflow == 0 { decided.append(.started(WorkflowStarted(workflowId: "support", workflowVersion: 1, startNodeId: "wait"))) }
        decided += [
            .variableSet(WorkflowVariableSet(name: "last", value: .string("message \(count)"), nodeId: "wait")),
            .transitioned(WorkflowTransitioned(from: "wait", to: "say", causedByMessageId: "m\(count)")),
            .assistantMessageSent(AssistantMessageSent(text: "You said message \(count)", nodeId: "say", inReplyTo: ["m\(count)"], provider: "workflow")),
            .toolCalled(ToolCalled(tool: "add_tag", arguments: ["tag": .string("t\(count % 3)")], outcome: .succeeded, actorId: SystemActor.actorID, nodeId: "say")),
            .waitingForInput(WorkflowWaitingForInput(nodeId: "wait")),
            .messagesProcessed(MessagesProcessed(upToVersion: messages)),
        ]
        let metadata = EventMetadata(actorId: SystemActor.actorID, extra: ["visitorUid": .string(visitorUid.rawValue)])
        let decisions = try await store.append(
            try decided.map { try NewEvent(type: $0.eventType, encoding: $0, metadata: metadata, subject: PersonalDataSubject(visitor: visitorUid, mayCreateKey: true)) }, to: id.workflowStream, tenant: tenant,
            expectedVersion: .exact(workflow))
        workflow = decisions.streamVersion
        let workflowLast = decisions.lastPosition
        versions[conversation] = (messages, workflow)
        lastPosition = max(lastPosition, try await store.headPosition(.tenant(tenant)), messagesLast, workflowLast)
        turns[conversation] = count
    }

    /// `count` turns spread over `conversations` conversations, several at a time.
    func run(turns count: Int, conversations: Int, prefix: String = "c") async throws {
        for round in 0..<count {
            try await turn("\(prefix)\(round % conversations)")
        }
    }
}
