import Foundation
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
