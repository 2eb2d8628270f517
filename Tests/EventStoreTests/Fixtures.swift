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
