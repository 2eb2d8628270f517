import EventStore
import Foundation
import Logging
import Projections
import SharedTypes

/// A visitor's rights over what convo holds of them: to be forgotten (crypto-shredding: their data keys are
/// destroyed, so everything sealed with them reads as erased everywhere, for good, while the events, their
/// hash chains and the record of the erasure stay) and to get a copy.
public struct VisitorPrivacy: Sendable {
    let store: PostgresEventStore
    let logger: Logger

    public init(store: PostgresEventStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// What ``forget(_:tenant:reason:requestedBy:)`` did.
    public struct Erasure: Sendable, Codable, Equatable {
        public var erasureId: String
        public var visitorUid: String
        public var reason: String
        public var requestedBy: String
        public var conversations: [String]
        /// The key generations this erasure destroyed.
        public var keyGenerations: [Int]
        /// When the erasure was recorded.
        public var recordedAt: Date
        /// `true` when the visitor had been forgotten already and nothing was held of them since: this is
        /// the earlier erasure's record.
        public var alreadyForgotten: Bool
    }

    /// Forgets a visitor: destroys their live data keys (every process drops them from memory at once),
    /// marks each of their conversations erased (its messages so far consumed, its projections' personal
    /// values cleared), and records who asked, when and why in the tenant's audit stream. Idempotent: a
    /// visitor forgotten already gets the same record back.
    ///
    /// - Throws: ``ResponderError`` `visitorNotFound` when convo never held data of this visitor; the
    ///   store's errors (a retry finishes what a failed call began).
    public func forget(_ visitor: VisitorUID, tenant: TenantID, reason: String, requestedBy: String) async throws -> Erasure {
        let generations = try await store.vault.generations(tenant: tenant, subject: visitor)
        guard let last = generations.map(\.generation).max() else {
            throw ResponderError(code: .visitorNotFound, message: "convo holds no data of visitor \(visitor)")
        }
        let destroyed = try await store.vault.destroyKeys(tenant: tenant, subject: visitor)
        let erasureId = StableID.make("forgotten", tenant.rawValue, visitor.rawValue, "\(last)").uuidString.lowercased()
        let audit = ConversationProcessor.auditStream(tenant)
        let recordId = StableID.make("forgotten-record", tenant.rawValue, visitor.rawValue, "\(last)")
        if try await store.containsEvent(recordId), destroyed.isEmpty, let record = try await existingRecord(recordId, visitor: visitor, tenant: tenant) {
            return record
        }
        let conversations = try await store.readVisitorEvents(visitor, type: ConversationStarted.eventType, tenant: tenant)
            .compactMap { ConversationID(rawValue: $0.stream.id) }
        for conversation in conversations {
            let id = StableID.make("erased", tenant.rawValue, conversation.rawValue, "\(last)")
            guard try await !store.containsEvent(id) else { continue }
            let messagesVersion = try await store.streamVersion(conversation.messagesStream, tenant: tenant)
            let event = try NewEvent(
                eventId: id, type: VisitorDataErased.eventType,
                encoding: VisitorDataErased(visitorUid: visitor, messagesVersion: messagesVersion, erasureId: erasureId),
                metadata: EventMetadata(actorId: requestedBy, extra: ["visitorUid": .string(visitor.rawValue)]))
            do {
                try await store.append([event], to: conversation.workflowStream, tenant: tenant, expectedVersion: .any)
            } catch let error as EventStoreError where error.code == .duplicateEventID {
                continue  // a concurrent call of the same erasure wrote it
            }
        }
        let forgotten = VisitorForgotten(
            erasureId: erasureId, visitorUid: visitor, reason: reason, requestedBy: requestedBy, conversations: conversations,
            keyGenerations: destroyed.isEmpty ? generations.map(\.generation) : destroyed)
        let record = try NewEvent(eventId: recordId, type: VisitorForgotten.eventType, encoding: forgotten, metadata: EventMetadata(actorId: requestedBy))
        let result: AppendResult
        do {
            result = try await store.append([record], to: audit, tenant: tenant, expectedVersion: .any)
        } catch let error as EventStoreError where error.code == .duplicateEventID {
            if let existing = try await existingRecord(recordId, visitor: visitor, tenant: tenant) { return existing }
            throw error
        }
        logger.info(
            "visitor forgotten",
            metadata: ["convo.tenant": "\(tenant)", "convo.erasure": "\(erasureId)", "convo.conversations": "\(conversations.count)", "convo.keys": "\(destroyed.count)"])
        return Erasure(forgotten, recordedAt: result.events.first?.recordedAt ?? Date(), alreadyForgotten: result.isDuplicate)
    }

    /// The stored record of an erasure, if there is one.
    private func existingRecord(_ id: UUID, visitor: VisitorUID, tenant: TenantID) async throws -> Erasure? {
        for event in try await store.readVisitorEvents(visitor, type: VisitorForgotten.eventType, tenant: tenant) where event.eventId == id {
            return Erasure(try event.decode(VisitorForgotten.self), recordedAt: event.recordedAt, alreadyForgotten: true)
        }
        return nil
    }
}

extension VisitorPrivacy.Erasure {
    /// The erasure a stored record describes.
    init(_ record: VisitorForgotten, recordedAt: Date, alreadyForgotten: Bool) {
        self.init(
            erasureId: record.erasureId, visitorUid: record.visitorUid.rawValue, reason: record.reason, requestedBy: record.requestedBy,
            conversations: record.conversations.map(\.rawValue), keyGenerations: record.keyGenerations, recordedAt: recordedAt,
            alreadyForgotten: alreadyForgotten)
    }
}
