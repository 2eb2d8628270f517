#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// RFC 3339 timestamps with microseconds, the form every date in an event payload is stored in.
///
/// Foundation's `.iso8601` coding strategy writes whole seconds: an event, which never changes, would lose
/// the sub-second part of what its caller sent for good. This writes `2026-12-05T05:21:33.123456Z` and reads
/// any RFC 3339 date-time: with or without a fraction (kept to the microsecond), `Z`/`z` or an offset,
/// `T`/`t`. Projection rows use the same form (`RowCoding`), so there is one implementation of it.
public enum Timestamp {
    /// `date` in UTC with six fractional digits: `2026-11-22T10:15:30.123456Z`. By hand, digit by digit: a
    /// rebuild formats two dates for every row it writes, and `String(format:)` was a good part of writing them.
    public static func string(from date: Date) -> String {
        let micros = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
        var seconds = micros / 1_000_000
        var fraction = micros % 1_000_000
        if fraction < 0 {
            fraction += 1_000_000
            seconds -= 1
        }
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        let year = Int(parts.tm_year) + 1900
        guard (0...9999).contains(year) else {
            return String(
                format: "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", Int32(year), parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec, Int32(fraction))
        }
        return String(unsafeUninitializedCapacity: 27) { buffer in
            var index = 0
            func put(_ value: Int, digits: Int) {
                var value = value
                for offset in stride(from: digits - 1, through: 0, by: -1) {
                    buffer[index + offset] = UInt8(ascii: "0") + UInt8(value % 10)
                    value /= 10
                }
                index += digits
            }
            func put(_ character: Unicode.Scalar) {
                buffer[index] = UInt8(ascii: character)
                index += 1
            }
            put(year, digits: 4)
            put("-")
            put(Int(parts.tm_mon) + 1, digits: 2)
            put("-")
            put(Int(parts.tm_mday), digits: 2)
            put("T")
            put(Int(parts.tm_hour), digits: 2)
            put(":")
            put(Int(parts.tm_min), digits: 2)
            put(":")
            put(Int(parts.tm_sec), digits: 2)
            put(".")
            put(Int(fraction), digits: 6)
            put("Z")
            return index
        }
    }

    /// The moment an RFC 3339 date-time names; `nil` for anything else. `strict: false` also takes what
    /// PostgreSQL writes for a `timestamptz`: `±HH` offsets without minutes.
    public static func date(from text: some StringProtocol, strict: Bool = true) -> Date? {
        let bytes = Array(text.utf8)
        var index = 0
        func number(_ digits: Int) -> Int? {
            guard index + digits <= bytes.count else { return nil }
            var value = 0
            for _ in 0..<digits {
                let byte = bytes[index]
                guard byte >= 0x30 && byte <= 0x39 else { return nil }
                value = value * 10 + Int(byte - 0x30)
                index += 1
            }
            return value
        }
        func expect(_ characters: String) -> Bool {
            guard index < bytes.count, characters.utf8.contains(bytes[index]) else { return false }
            index += 1
            return true
        }
        guard let year = number(4), expect("-"), let month = number(2), expect("-"), let day = number(2), expect(strict ? "Tt" : "Tt "),
            let hour = number(2), expect(":"), let minute = number(2), expect(":"), let second = number(2)
        else { return nil }
        var micros = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            var digits = 0
            while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 {
                if digits < 6 { micros = micros * 10 + Int(bytes[index] - 0x30) }
                digits += 1
                index += 1
            }
            guard digits > 0 else { return nil }
            for _ in digits..<max(digits, 6) { micros *= 10 }
        }
        var offset = 0
        guard index < bytes.count else { return nil }
        if bytes[index] == UInt8(ascii: "Z") || bytes[index] == UInt8(ascii: "z") {
            index += 1
        } else {
            let sign = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            guard expect("+-"), let hours = number(2) else { return nil }
            var minutes = 0
            // RFC 3339 wants `±HH:MM`; PostgreSQL writes `±HH` when the minutes are zero.
            if index < bytes.count || strict {
                guard expect(":") || !strict, let value = number(2), value <= 59 else { return nil }
                minutes = value
            }
            offset = sign * (hours * 3600 + minutes * 60)
        }
        guard index == bytes.count else { return nil }
        guard (1...12).contains(month), (1...31).contains(day), hour <= 23, minute <= 59, second <= 59, offset.magnitude < 86_400 else { return nil }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        let local = Int64(timegm(&parts))
        // timegm moves an impossible day (February 30th) into the next month: refuse what it had to move.
        var check = time_t(local)
        var back = tm()
        gmtime_r(&check, &back)
        guard Int(back.tm_mday) == day, Int(back.tm_mon) == month - 1 else { return nil }
        let seconds = local - Int64(offset)
        return Date(timeIntervalSince1970: Double(seconds * 1_000_000 + Int64(micros)) / 1_000_000)
    }
}
