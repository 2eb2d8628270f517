import Foundation
import SharedTypes
import Testing

@Suite struct TimestampTests {
    @Test func writesMicrosecondsInUTC() throws {
        let date = try #require(Timestamp.date(from: "2026-12-05T05:21:33.123456Z"))
        #expect(Timestamp.string(from: date) == "2026-12-05T05:21:33.123456Z")
        #expect(Timestamp.string(from: Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000000Z")
    }

    @Test func readsEveryRFC3339Form() throws {
        let base = try #require(Timestamp.date(from: "2026-11-22T10:15:00Z"))
        #expect(Timestamp.date(from: "2026-11-22t10:15:00z") == base)
        #expect(Timestamp.date(from: "2026-11-22T11:15:00+01:00") == base)
        #expect(Timestamp.date(from: "2026-11-21T10:52:00-23:23") == base)
        let fine = try #require(Timestamp.date(from: "2026-11-22T10:15:00.000001Z"))
        #expect(abs(fine.timeIntervalSince(base) - 0.000001) < 0.0000002)
        #expect(Timestamp.date(from: "2026-11-22T10:15:00.123456789Z") != nil)
    }

    @Test func refusesWhatIsNotADateTime() {
        for text in ["", "2026-11-22", "2026-11-22T10:15:00", "2026-02-30T10:15:00Z", "2026-13-01T00:00:00Z", "2026-11-22T10:15:00.Z",
                     "2026-11-22T24:00:00Z", "2026-11-22T10:15:00+1:00", "2026-11-22T10:15:00Zjunk", "2026-11-22T10:15:00+22:99",
                     "2026-11-22T10:15:00-05:60"] {
            #expect(Timestamp.date(from: text) == nil, "\(text)")
        }
    }

    @Test func aRoundTripKeepsMicroseconds() throws {
        for micros in [0, 1, 999_999, 123_456, 500_000] {
            let text = "2030-06-15T23:59:59.\(String(format: "%06d", micros))Z"
            let date = try #require(Timestamp.date(from: text))
            #expect(Timestamp.string(from: date) == text)
        }
    }
}
