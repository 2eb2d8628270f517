/// Reads an event payload (a JSON object) member by member, straight from its bytes.
///
/// `JSONDecoder` first builds a map of the whole document and then decodes through boxed containers and
/// generic metadata lookups: about a third of a rebuild's CPU went there, for payloads of five short
/// strings. A type that conforms to ``PayloadReadable`` reads itself with this instead, and only the
/// plain cases are handled here: anything else (an escaped key, a duplicate key, a missing member, a value
/// of another kind, a number that is not a plain integer where one is expected, nesting deeper than
/// ``maximumDepth``, bytes that are not UTF-8) throws ``Unhandled``, and the caller decodes the payload
/// with `JSONDecoder` as before. So what a payload decodes to, and the error a bad one gives, are
/// `JSONDecoder`'s; this is only faster on the payloads convo writes.
public struct PayloadReader {
    /// This reader does not handle the payload; `JSONDecoder` decides.
    public struct Unhandled: Error {
        public init() {}
    }

    /// A member's key, between its quotes (never escaped: an escaped key is ``Unhandled``).
    public struct Key {
        let bytes: UnsafeRawBufferPointer
        let range: Range<Int>

        /// Whether the key is `name`: what a `switch` over keys matches with.
        public static func ~= (name: StaticString, key: Key) -> Bool {
            guard name.utf8CodeUnitCount == key.range.count else { return false }
            let name = UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
            var index = key.range.lowerBound
            for byte in name {
                guard key.bytes[index] == byte else { return false }
                index += 1
            }
            return true
        }
    }

    /// Where a decoded member is kept until the object ends: set once (a second value is a duplicate key,
    /// which `JSONDecoder` may read otherwise), then taken.
    public struct Member<Value> {
        private var value: Value?

        public init() {}

        public mutating func set(_ newValue: Value) throws(Unhandled) {
            guard value == nil else { throw Unhandled() }
            value = newValue
        }

        /// The value; ``Unhandled`` when the member was missing (`JSONDecoder` says which).
        public func required() throws(Unhandled) -> Value {
            guard let value else { throw Unhandled() }
            return value
        }

        /// The value of an optional member: `nil` when it was missing or `null`, as `decodeIfPresent` reads.
        public func optional<Wrapped>() -> Wrapped? where Value == Wrapped? { value ?? nil }
    }

    /// Arrays and objects nested deeper than this in one value are left to `JSONDecoder`: a hostile payload
    /// cannot run this reader's recursion out of stack.
    public static let maximumDepth = 64

    private let bytes: UnsafeRawBufferPointer
    private var index = 0
    private var opened = false

    public init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    // MARK: Members

    /// The next member's key, the reader then standing at its value; `nil` after the object's last member,
    /// when nothing but white space may follow.
    public mutating func nextKey() throws(Unhandled) -> Key? {
        skipSpace()
        if !opened {
            opened = true
            try expect(UInt8(ascii: "{"))
            guard try hasItems(before: UInt8(ascii: "}")) else { return try end() }
        } else {
            guard try more(before: UInt8(ascii: "}")) else { return try end() }
        }
        try expect(UInt8(ascii: "\""))
        let start = index
        while true {
            let byte = try peek()
            if byte == UInt8(ascii: "\"") { break }
            // Every key a payload type reads is ASCII: any other is left to the decoder, which checks it.
            if byte == UInt8(ascii: "\\") || byte < 0x20 || byte >= 0x80 { throw Unhandled() }
            index += 1
        }
        let key = Key(bytes: bytes, range: start..<index)
        index += 1
        skipSpace()
        try expect(UInt8(ascii: ":"))
        skipSpace()
        return key
    }

    /// After the object's closing brace: nothing but white space may follow.
    private mutating func end() throws(Unhandled) -> Key? {
        skipSpace()
        guard index == bytes.count else { throw Unhandled() }
        return nil
    }

    /// Just after an array's or object's opening bracket: whether an item follows (the reader then at it),
    /// or `closing` (the reader then past it).
    private mutating func hasItems(before closing: UInt8) throws(Unhandled) -> Bool {
        skipSpace()
        guard try peek() == closing else { return true }
        index += 1
        return false
    }

    /// After an item of an array or object: `true` at a comma (the reader then at the next item), `false` at
    /// `closing` (the reader then past it); anything else is ``Unhandled``.
    private mutating func more(before closing: UInt8) throws(Unhandled) -> Bool {
        skipSpace()
        switch try peek() {
        case UInt8(ascii: ","):
            index += 1
            skipSpace()
            return true
        case closing:
            index += 1
            return false
        default:
            throw Unhandled()
        }
    }

    // MARK: Values

    public mutating func string() throws(Unhandled) -> String {
        try expect(UInt8(ascii: "\""))
        let start = index
        var ascii = true
        while true {
            let byte = try peek()
            if byte == UInt8(ascii: "\"") { break }
            if byte == UInt8(ascii: "\\") { return try escapedString(from: start) }
            if byte < 0x20 { throw Unhandled() }
            if byte >= 0x80 { ascii = false }
            index += 1
        }
        let text = UnsafeRawBufferPointer(rebasing: bytes[start..<index])
        index += 1
        if ascii { return String(decoding: text, as: UTF8.self) }
        guard let valid = String(validating: text, as: UTF8.self) else { throw Unhandled() }
        return valid
    }

    /// A string or `null`.
    public mutating func optionalString() throws(Unhandled) -> String? {
        if try readNull() { return nil }
        return try string()
    }

    /// A whole number written as one (`-12`, never `1.0` or `1e2`, which `JSONDecoder` reads its own way).
    public mutating func integer<Number: FixedWidthInteger & SignedInteger>(_: Number.Type = Number.self) throws(Unhandled) -> Number {
        let negative = try peek() == UInt8(ascii: "-")
        if negative { index += 1 }
        let start = index
        var value: Number = 0
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) {
            let digit = Number(bytes[index] - UInt8(ascii: "0"))
            let (shifted, overflowShift) = value.multipliedReportingOverflow(by: 10)
            let (next, overflowAdd) = negative ? shifted.subtractingReportingOverflow(digit) : shifted.addingReportingOverflow(digit)
            guard !overflowShift, !overflowAdd else { throw Unhandled() }
            value = next
            index += 1
        }
        // No digits, a leading zero (`01`), or a fraction or exponent following.
        guard index > start, bytes[start] != UInt8(ascii: "0") || index == start + 1, !endsInNumberPart() else { throw Unhandled() }
        return value
    }

    /// A whole number or `null`.
    public mutating func optionalInteger<Number: FixedWidthInteger & SignedInteger>(_: Number.Type = Number.self) throws(Unhandled) -> Number? {
        if try readNull() { return nil }
        return try integer(Number.self)
    }

    /// An array of strings.
    public mutating func strings() throws(Unhandled) -> [String] {
        try expect(UInt8(ascii: "["))
        var items: [String] = []
        guard try hasItems(before: UInt8(ascii: "]")) else { return items }
        repeat { items.append(try string()) } while try more(before: UInt8(ascii: "]"))
        return items
    }

    /// Any JSON value, as ``JSONValue`` decodes it.
    public mutating func value() throws(Unhandled) -> JSONValue {
        try value(depth: 0)
    }

    /// Passes over a value of a member nobody reads, as `JSONDecoder` ignores unknown keys.
    public mutating func skip() throws(Unhandled) {
        _ = try value(depth: 0)
    }

    private mutating func value(depth: Int) throws(Unhandled) -> JSONValue {
        guard depth < Self.maximumDepth else { throw Unhandled() }
        switch try peek() {
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "{"):
            index += 1
            var members: [String: JSONValue] = [:]
            guard try hasItems(before: UInt8(ascii: "}")) else { return .object(members) }
            repeat {
                let name = try string()
                skipSpace()
                try expect(UInt8(ascii: ":"))
                skipSpace()
                guard members.updateValue(try value(depth: depth + 1), forKey: name) == nil else { throw Unhandled() }
            } while try more(before: UInt8(ascii: "}"))
            return .object(members)
        case UInt8(ascii: "["):
            index += 1
            var items: [JSONValue] = []
            guard try hasItems(before: UInt8(ascii: "]")) else { return .array(items) }
            repeat { items.append(try value(depth: depth + 1)) } while try more(before: UInt8(ascii: "]"))
            return .array(items)
        case UInt8(ascii: "t"):
            try literal("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null")
            return .null
        default:
            return .number(try number())
        }
    }

    /// A number in JSON's grammar, read by the standard library's correctly rounded parser; one that does
    /// not fit a `Double` is ``Unhandled``.
    private mutating func number() throws(Unhandled) -> Double {
        let start = index
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        let integerStart = index
        let integerDigits = digits()
        guard integerDigits > 0, bytes[integerStart] != UInt8(ascii: "0") || integerDigits == 1 else { throw Unhandled() }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard digits() > 0 else { throw Unhandled() }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard digits() > 0 else { throw Unhandled() }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        guard let number = Double(text), number.isFinite else { throw Unhandled() }
        return number
    }

    // MARK: Bytes

    private mutating func digits() -> Int {
        let start = index
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
        return index - start
    }

    private func endsInNumberPart() -> Bool {
        guard index < bytes.count else { return false }
        let byte = bytes[index]
        return byte == UInt8(ascii: ".") || byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E")
    }

    private mutating func readNull() throws(Unhandled) -> Bool {
        guard try peek() == UInt8(ascii: "n") else { return false }
        try literal("null")
        return true
    }

    private mutating func literal(_ word: StaticString) throws(Unhandled) {
        let count = word.utf8CodeUnitCount
        guard bytes.count - index >= count else { throw Unhandled() }
        for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] { throw Unhandled() }
        index += count
    }

    @inline(__always)
    private func peek() throws(Unhandled) -> UInt8 {
        guard index < bytes.count else { throw Unhandled() }
        return bytes[index]
    }

    @inline(__always)
    private mutating func expect(_ byte: UInt8) throws(Unhandled) {
        guard try peek() == byte else { throw Unhandled() }
        index += 1
    }

    @inline(__always)
    private mutating func skipSpace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    /// The rest of a string holding escapes, from its first character at `start`.
    private mutating func escapedString(from start: Int) throws(Unhandled) -> String {
        var utf8 = Array(UnsafeRawBufferPointer(rebasing: bytes[start..<index]))
        while true {
            let byte = try peek()
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                guard let text = String(validating: utf8, as: UTF8.self) else { throw Unhandled() }
                return text
            case UInt8(ascii: "\\"):
                let escape = try peek()
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(escape)
                case UInt8(ascii: "b"): utf8.append(0x08)
                case UInt8(ascii: "f"): utf8.append(0x0C)
                case UInt8(ascii: "n"): utf8.append(0x0A)
                case UInt8(ascii: "r"): utf8.append(0x0D)
                case UInt8(ascii: "t"): utf8.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        // A high surrogate must be followed by an escaped low one.
                        try expect(UInt8(ascii: "\\"))
                        try expect(UInt8(ascii: "u"))
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else { throw Unhandled() }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let character = Unicode.Scalar(scalar) else { throw Unhandled() }
                    utf8.append(contentsOf: String(character).utf8)
                default:
                    throw Unhandled()
                }
            default:
                guard byte >= 0x20 else { throw Unhandled() }
                utf8.append(byte)
            }
        }
    }

    private mutating func hex4() throws(Unhandled) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = try peek()
            index += 1
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw Unhandled()
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }
}
