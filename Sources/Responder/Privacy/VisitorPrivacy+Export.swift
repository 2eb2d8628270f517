import EventStore
import Foundation
import Projections
import SharedTypes

extension VisitorPrivacy {
    /// Everything convo holds about a visitor, read from the events (never from a projection).
    public struct Export: Sendable, Codable {
        public struct Key: Sendable, Codable {
            public var generation: Int
            public var erased: Bool
        }

        public struct Profile: Sendable, Codable {
            public var name: String?
            public var email: String?
            public var phone: String?
        }

        public struct Message: Sendable, Codable {
            public var eventId: UUID
            public var at: Date
            /// `visitor`, `assistant` or `agent`.
            public var author: String
            /// The agent's user id, for an agent's message.
            public var authorId: String?
            public var messageId: String?
            public var text: String
            public var erased: Bool
        }

        public struct Note: Sendable, Codable {
            public var eventId: UUID
            public var at: Date
            public var agentId: String
            public var text: String
            public var erased: Bool
        }

        public struct ToolCall: Sendable, Codable {
            public var eventId: UUID
            public var at: Date
            public var tool: String
            public var arguments: JSONValue
            public var erased: Bool
        }

        public struct Conversation: Sendable, Codable {
            public var conversationId: String
            public var startedAt: Date
            public var status: String
            public var messages: [Message]
            public var notes: [Note]
            public var variables: [String: JSONValue]
            public var toolCalls: [ToolCall]
        }

        public var tenant: String
        public var visitorUid: String
        public var exportedAt: Date
        public var keys: [Key]
        public var profile: Profile
        public var conversations: [Conversation]
        public var erasures: [Erasure]
    }

    /// Everything convo holds about a visitor: their conversations' messages (theirs, the assistant's, the
    /// agents'), notes, variables and tool calls, their profile and their erasures. Erased content appears
    /// as erased.
    ///
    /// - Throws: ``ResponderError`` `visitorNotFound` when convo never held data of this visitor; the
    ///   store's errors.
    public func export(_ visitor: VisitorUID, tenant: TenantID) async throws -> Export {
        let generations = try await store.vault.generations(tenant: tenant, subject: visitor)
        guard !generations.isEmpty else { throw ResponderError(code: .visitorNotFound, message: "convo holds no data of visitor \(visitor)") }
        var profile = Export.Profile()
        var conversations: [Export.Conversation] = []
        for started in try await store.readVisitorEvents(visitor, type: ConversationStarted.eventType, tenant: tenant) {
            guard let id = ConversationID(rawValue: started.stream.id) else { continue }
            var conversation = Export.Conversation(
                conversationId: id.rawValue, startedAt: started.recordedAt, status: "", messages: [], notes: [], variables: [:], toolCalls: [])
            for event in try await store.readStreamToEnd(id.messagesStream, tenant: tenant) where event.type == VisitorMessageReceived.eventType {
                let message = try event.decode(VisitorMessageReceived.self)
                conversation.messages.append(
                    .init(
                        eventId: event.eventId, at: event.recordedAt, author: "visitor", authorId: nil, messageId: message.messageId, text: message.text,
                        erased: event.isErased))
            }
            var state = WorkflowState()
            for event in try await store.readStreamToEnd(id.workflowStream, tenant: tenant) {
                try state.apply(event)
                switch try event.workflowEvent() {
                case .assistantMessageSent(let sent):
                    conversation.messages.append(
                        .init(eventId: event.eventId, at: event.recordedAt, author: "assistant", authorId: nil, messageId: nil, text: sent.text, erased: event.isErased))
                case .agentMessageSent(let sent):
                    conversation.messages.append(
                        .init(
                            eventId: event.eventId, at: event.recordedAt, author: "agent", authorId: sent.agentId, messageId: sent.messageId, text: sent.text,
                            erased: event.isErased))
                case .noteAdded(let note):
                    conversation.notes.append(.init(eventId: event.eventId, at: event.recordedAt, agentId: note.agentId, text: note.text, erased: event.isErased))
                case .toolCalled(let call) where ToolName(rawValue: call.tool).map({ ToolCatalogue.definition($0).personal }) ?? true:
                    conversation.toolCalls.append(.init(eventId: event.eventId, at: event.recordedAt, tool: call.tool, arguments: call.arguments, erased: event.isErased))
                    if call.outcome == .succeeded, call.tool == ToolName.updateVisitorProfile.rawValue, !event.isErased {
                        if let name = call.arguments["name"]?.stringValue { profile.name = name }
                        if let email = call.arguments["email"]?.stringValue { profile.email = email }
                        if let phone = call.arguments["phone"]?.stringValue { profile.phone = phone }
                    }
                case .dataErased:
                    profile = Export.Profile()
                default:
                    break
                }
            }
            conversation.messages.sort { $0.at < $1.at }
            conversation.variables = state.variables
            conversation.status = state.status.rawValue
            conversations.append(conversation)
        }
        var erasures: [Erasure] = []
        for event in try await store.readVisitorEvents(visitor, type: VisitorForgotten.eventType, tenant: tenant) {
            erasures.append(Erasure(try event.decode(VisitorForgotten.self), recordedAt: event.recordedAt, alreadyForgotten: false))
        }
        return Export(
            tenant: tenant.rawValue, visitorUid: visitor.rawValue, exportedAt: Date(),
            keys: generations.map { Export.Key(generation: $0.generation, erased: !$0.live) }, profile: profile, conversations: conversations,
            erasures: erasures)
    }
}
