import ConvoTestSupport
import EventStore
import Foundation
import SharedTypes

struct Note: Codable, Equatable {
    var text: String
}

func note(_ text: String, id: UUID = UUID()) -> NewEvent {
    try! NewEvent(eventId: id, type: "NoteTaken", encoding: Note(text: text), metadata: EventMetadata(actorId: "test"))
}

/// readAll hands out an event only once every older transaction in the cluster has ended, and other suites
/// append (and hold transactions open) in parallel: read until `count` events are visible or 10 s pass.
func readAllSettled(_ store: PostgresEventStore, _ scope: TenantScope, count: Int) async throws -> [RecordedEvent] {
    let deadline = ContinuousClock.now + .seconds(10)
    while true {
        let events = try await store.readAll(scope, after: 0, maxCount: 1000)
        if events.count >= count || ContinuousClock.now > deadline { return events }
        try await Task.sleep(for: .milliseconds(20))
    }
}
