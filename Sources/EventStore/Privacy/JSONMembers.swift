#if canImport(Glibc)
import Glibc
#endif
/// The top-level members of a JSON object, found in its bytes without decoding it: what sealing and
/// opening a payload's personal members need, at the cost of one pass and no allocation.
enum JSONMembers {
    /// A member: where its key's characters (between the quotes) and its whole value are.
    struct Member {
        var key: Range<Int>
        var value: Range<Int>
    }

    struct Malformed: Error {}

    /// The top-level members of the object in `bytes`, in order.
    ///
    /// - Throws: ``Malformed`` when `bytes` is not a JSON object.
    static func members(of bytes: UnsafeRawBufferPointer) throws(Malformed) -> [Member] {
        var members: [Member] = []
        try forEach(in: bytes) { members.append($0) }
        return members
    }

    /// Calls `body` with each top-level member of the object in `bytes`, in order, storing none of them.
    ///
    /// - Throws: ``Malformed`` when `bytes` is not a JSON object.
    @inline(__always)
    static func forEach(in bytes: UnsafeRawBufferPointer, _ body: (Member) throws(Malformed) -> Void) throws(Malformed) {
        var index = skipSpace(bytes, 0)
        guard index < bytes.count, bytes[index] == UInt8(ascii: "{") else { throw Malformed() }
        index = skipSpace(bytes, index + 1)
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") { return }
        while true {
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw Malformed() }
            let keyEnd = try stringEnd(bytes, index)
            let key = (index + 1)..<(keyEnd - 1)
            index = skipSpace(bytes, keyEnd)
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw Malformed() }
            let valueStart = skipSpace(bytes, index + 1)
            let valueEnd = try self.valueEnd(bytes, valueStart)
            try body(Member(key: key, value: valueStart..<valueEnd))
            index = skipSpace(bytes, valueEnd)
            guard index < bytes.count else { throw Malformed() }
            if bytes[index] == UInt8(ascii: "}") { return }
            guard bytes[index] == UInt8(ascii: ",") else { throw Malformed() }
            index = skipSpace(bytes, index + 1)
        }
    }

    /// Whether the bytes in `range` are `name`'s.
    static func matches(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ name: String) -> Bool {
        let compared = name.utf8.withContiguousStorageIfAvailable { name in
            name.count == range.count && (range.isEmpty || memcmp(bytes.baseAddress! + range.lowerBound, name.baseAddress!, range.count) == 0)
        }
        if let compared { return compared }
        var utf8 = name.utf8.makeIterator()
        for index in range {
            guard let byte = utf8.next(), byte == bytes[index] else { return false }
        }
        return utf8.next() == nil
    }

    @inline(__always)
    private static func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D }

    private static func skipSpace(_ bytes: UnsafeRawBufferPointer, _ start: Int) -> Int {
        var index = start
        while index < bytes.count, isSpace(bytes[index]) { index += 1 }
        return index
    }

    /// The index after the closing quote of the string opening at `start`.
    private static func stringEnd(_ bytes: UnsafeRawBufferPointer, _ start: Int) throws(Malformed) -> Int {
        // The closing quote is the first one with no backslash before it since the last escape: `memchr`
        // (vectorized) finds both, where a long string (an envelope) would otherwise be read a byte at a time.
        if let base = bytes.baseAddress {
            var index = start + 1
            while index < bytes.count {
                guard let quote = memchr(base + index, Int32(UInt8(ascii: "\"")), bytes.count - index) else { throw Malformed() }
                let at = base.distance(to: UnsafeRawPointer(quote))
                guard let escape = memchr(base + index, Int32(UInt8(ascii: "\\")), at - index) else { return at + 1 }
                index = base.distance(to: UnsafeRawPointer(escape)) + 2
            }
            throw Malformed()
        }
        var index = start + 1
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "\\"): index += 2
            case UInt8(ascii: "\""): return index + 1
            default: index += 1
            }
        }
        throw Malformed()
    }

    /// The index after the value starting at `start`.
    static func valueEnd(_ bytes: UnsafeRawBufferPointer, _ start: Int) throws(Malformed) -> Int {
        guard start < bytes.count else { throw Malformed() }
        switch bytes[start] {
        case UInt8(ascii: "\""):
            return try stringEnd(bytes, start)
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var depth = 0
            var index = start
            while index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: "\""):
                    index = try stringEnd(bytes, index)
                    continue
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { return index + 1 }
                default:
                    break
                }
                index += 1
            }
            throw Malformed()
        default:
            var index = start
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: ",") || byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") || isSpace(byte) { break }
                index += 1
            }
            guard index > start else { throw Malformed() }
            return index
        }
    }
}
