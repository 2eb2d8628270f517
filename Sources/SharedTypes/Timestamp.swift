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
/// any RFC 3339 date-time: with or without a fraction (up to nanoseconds), `Z`/`z` or an offset, `T`/`t`.
public enum Timestamp {
    /// `date` in UTC with six fractional digits.
    public static func string(from date: Date) -> String {
        let interval = date.timeIntervalSince1970
        var seconds = Int64(interval.rounded(.down))
        var micros = Int64(((interval - Double(seconds)) * 1_000_000).rounded())
        if micros >= 1_000_000 {
            seconds += 1
            micros -= 1_000_000
        }
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        var out = [UInt8]()
        out.reserveCapacity(27)
        func put(_ value: Int, digits: Int) {
            var divisor = 1
            for _ in 1..<digits { divisor *= 10 }
            var rest = value
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(rest / divisor))
                rest %= divisor
                divisor /= 10
            }
        }
        put(Int(parts.tm_year) + 1900, digits: 4)
        out.append(UInt8(ascii: "-"))
        put(Int(parts.tm_mon) + 1, digits: 2)
        out.append(UInt8(ascii: "-"))
        put(Int(parts.tm_mday), digits: 2)
        out.append(UInt8(ascii: "T"))
        put(Int(parts.tm_hour), digits: 2)
        out.append(UInt8(ascii: ":"))
        put(Int(parts.tm_min), digits: 2)
        out.append(UInt8(ascii: ":"))
        put(Int(parts.tm_sec), digits: 2)
        out.append(UInt8(ascii: "."))
        put(Int(micros), digits: 6)
        out.append(UInt8(ascii: "Z"))
        return String(decoding: out, as: UTF8.self)
    }

    /// The moment an RFC 3339 date-time names; `nil` for anything else.
    public static func date(from text: some StringProtocol) -> Date? {
        let bytes = Array(text.utf8)
        var index = 0
        func number(_ digits: Int) -> Int? {
            guard index + digits <= bytes.count else { return nil }
            var value = 0
            for _ in 0..<digits {
                let byte = bytes[index]
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
                index += 1
            }
            return value
        }
        func expect(_ characters: Character...) -> Bool {
            guard index < bytes.count, characters.contains(where: { $0.asciiValue == bytes[index] }) else { return false }
            index += 1
            return true
        }
        guard let year = number(4), expect("-"), let month = number(2), expect("-"), let day = number(2), expect("T", "t", " "),
            let hour = number(2), expect(":"), let minute = number(2), expect(":"), let second = number(2)
        else { return nil }
        guard (1...12).contains(month), (1...31).contains(day), hour <= 23, minute <= 59, second <= 60 else { return nil }
        var fraction = 0.0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            var scale = 0.1
            let start = index
            while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
                fraction += Double(bytes[index] - UInt8(ascii: "0")) * scale
                scale /= 10
                index += 1
            }
            guard index > start else { return nil }
        }
        var offset = 0
        guard index < bytes.count else { return nil }
        if expect("Z", "z") {
        } else if bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
            let sign = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            index += 1
            guard let hours = number(2), expect(":"), let minutes = number(2), hours <= 23, minutes <= 59 else { return nil }
            offset = sign * (hours * 3600 + minutes * 60)
        } else {
            return nil
        }
        guard index == bytes.count else { return nil }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        let seconds = Int64(timegm(&parts)) - Int64(offset)
        // timegm normalises out-of-range days (February 30th): refuse what it had to move.
        var check = time_t(seconds + Int64(offset))
        var back = tm()
        gmtime_r(&check, &back)
        guard Int(back.tm_mday) == day, Int(back.tm_mon) == month - 1 else { return nil }
        return Date(timeIntervalSince1970: Double(seconds) + fraction)
    }
}
