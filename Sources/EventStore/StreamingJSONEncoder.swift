import Foundation
import NIOCore

/// Encodes `Encodable` values as JSON text written straight into a buffer, as their `encode(to:)` runs.
///
/// `JSONEncoder` first builds a tree of boxed values and then serializes it: for the events a decision
/// appends and the projection rows a runner upserts, that tree was most of what encoding cost (a profile of
/// `convo serve` answering a burst put `JSONEncoder` at about 5 % of its CPU). This writer keeps only a stack
/// of the objects and arrays still open.
///
/// The output is the same JSON value `JSONEncoder` gives with the same date format (members in the order
/// they were encoded, not sorted: everything it writes goes to `jsonb`, which orders members itself; `nil`
/// members left out by `encodeIfPresent`, `null` for `encodeNil`). What a stream cannot write (a container
/// written to after a later one was, a `superEncoder`, `Data`, `Decimal`) makes it start again with
/// `fallback`, so every value encodes as `JSONEncoder` would encode it. `StreamingJSONEncoderTests` compares
/// the two on every event and row type. Its encoders have an empty `codingPath` and `userInfo`: a type whose
/// `encode(to:)` reads them is not one to stream.
public struct StreamingJSONEncoder: Sendable {
    /// How a `Date` is written: as the string this gives.
    public let dateString: @Sendable (Date) -> String
    /// What encodes a value the stream cannot.
    public let fallback: @Sendable (any Encodable) throws -> ByteBuffer

    public init(dateString: @escaping @Sendable (Date) -> String, fallback: @escaping @Sendable (any Encodable) throws -> ByteBuffer) {
        self.dateString = dateString
        self.fallback = fallback
    }

    /// The value as JSON text.
    ///
    /// - Throws: what the value's `encode(to:)` throws (`EncodingError.invalidValue` for a number JSON
    ///   cannot carry, as `JSONEncoder` does), or what `fallback` throws.
    public func encode(_ value: some Encodable, capacity: Int = 256) throws -> ByteBuffer {
        let writer = StreamWriter(dateString: dateString, capacity: capacity)
        do {
            try writer.encodeValue(value)
            try writer.finish()
        } catch {
            // A refusal sends the value to the fallback whatever its code made of it: passed on, wrapped in an
            // error of its own, or caught and gone on from (`try?`, below).
            if writer.failed { return try fallback(value) }
            throw error
        }
        if writer.failed { return try fallback(value) }
        return writer.out
    }
}

/// The buffer, and the objects and arrays open in it (innermost last).
final class StreamWriter {
    /// Something the stream cannot write in order: the encoding starts again with the fallback.
    struct CannotStream: Error {}

    /// Whether a write was refused (``CannotStream`` thrown), even if the value's code caught it.
    private(set) var failed = false

    func refuse() -> CannotStream {
        failed = true
        return CannotStream()
    }

    struct Frame {
        var id: Int
        var isObject: Bool
        var count: Int
        /// Opened by an encoder whose `encode(to:)` has not returned: closed by ``encodeValue(_:)`` only.
        var ownedByEncoder: Bool
    }

    // The buffer and the stack live behind pointers: as stored properties of a class, every write to them
    // would go through Swift's dynamic exclusivity check (an eighth of what streaming cost).
    private let buffer: UnsafeMutablePointer<ByteBuffer>
    private let stack: UnsafeMutablePointer<[Frame]>
    private var nextID = 0
    let dateString: @Sendable (Date) -> String

    var out: ByteBuffer {
        _read { yield buffer.pointee }
        _modify { yield &buffer.pointee }
    }

    private var frames: [Frame] {
        _read { yield stack.pointee }
        _modify { yield &stack.pointee }
    }

    init(dateString: @escaping @Sendable (Date) -> String, capacity: Int) {
        self.dateString = dateString
        buffer = .allocate(capacity: 1)
        var out = ByteBuffer()
        out.reserveCapacity(capacity)
        buffer.initialize(to: out)
        stack = .allocate(capacity: 1)
        stack.initialize(to: [])
        stack.pointee.reserveCapacity(8)
    }

    deinit {
        buffer.deinitialize(count: 1)
        buffer.deallocate()
        stack.deinitialize(count: 1)
        stack.deallocate()
    }

    func finish() throws {
        guard frames.isEmpty, out.readableBytes > 0 else { throw refuse() }
    }

    /// Opens an object or array at the current place; its id.
    func open(object: Bool, ownedByEncoder: Bool) -> Int {
        nextID += 1
        out.writeInteger(object ? UInt8(ascii: "{") : UInt8(ascii: "["))
        frames.append(Frame(id: nextID, isObject: object, count: 0, ownedByEncoder: ownedByEncoder))
        return nextID
    }

    private func close(_ frame: Frame) {
        out.writeInteger(frame.isObject ? UInt8(ascii: "}") : UInt8(ascii: "]"))
    }

    /// Makes `id` the innermost open container (closing nested containers written before it) and writes the
    /// separator before its next member.
    func prepareMember(of id: Int) throws {
        if frames.last?.id != id {
            guard let index = frames.lastIndex(where: { $0.id == id }) else { throw refuse() }
            // Only nested containers (`nestedContainer`) close when their parent is written to again; an
            // encoder's own container stays open until its `encode(to:)` returns.
            guard !frames[(index + 1)...].contains(where: \.ownedByEncoder) else { throw refuse() }
            while frames.count > index + 1 { close(frames.removeLast()) }
        }
        if frames[frames.count - 1].count > 0 { out.writeInteger(UInt8(ascii: ",")) }
        frames[frames.count - 1].count += 1
    }

    func key(_ name: String) {
        JSONWriter.string(name, into: &out)
        out.writeInteger(UInt8(ascii: ":"))
    }

    /// Writes a value at the current place: the common leaves directly, anything else through its
    /// `encode(to:)` with an encoder of its own, whose containers are closed when it returns.
    func encodeValue<T: Encodable>(_ value: T) throws {
        // The common leaves by their type (a comparison of metadata pointers, no dynamic cast).
        if T.self == String.self {
            JSONWriter.string(unsafeBitCast(value, to: String.self), into: &out)
        } else if T.self == Int.self {
            out.writeString(String(unsafeBitCast(value, to: Int.self)))
        } else if T.self == Int64.self {
            out.writeString(String(unsafeBitCast(value, to: Int64.self)))
        } else if T.self == Bool.self {
            out.writeStaticString(unsafeBitCast(value, to: Bool.self) ? "true" : "false")
        } else if T.self == Double.self {
            try JSONWriter.number(unsafeBitCast(value, to: Double.self), into: &out)
        } else if T.self == Date.self {
            JSONWriter.string(dateString(unsafeBitCast(value, to: Date.self)), into: &out)
        } else if T.self == UUID.self {
            JSONWriter.string(unsafeBitCast(value, to: UUID.self).uuidString, into: &out)
        } else if T.self == Data.self || T.self == Decimal.self || T.self == URL.self {
            // JSONEncoder gives these forms of their own (Base64, a number, the absolute string).
            throw refuse()
        } else {
            let depth = frames.count
            let encoder = StreamEncoder(writer: self)
            try value.encode(to: encoder)
            if !encoder.wrote {
                // An encode(to:) that asked for no container, or asked and wrote nothing: JSONEncoder writes
                // an empty object for the first, fails on the second.
                guard frames.count == depth else { throw refuse() }
                out.writeStaticString("{}")
                return
            }
            guard frames.count >= depth else { throw refuse() }
            while frames.count > depth { close(frames.removeLast()) }
        }
    }

    func writeInteger<N: BinaryInteger>(_ number: N) {
        out.writeString(String(number))
    }

}

/// The encoder handed to one value's `encode(to:)`.
final class StreamEncoder: Encoder {
    let writer: StreamWriter
    /// The container this encoder opened (its id), once it asked for one.
    private var keyed: Int?
    private var unkeyed: Int?
    /// Whether it wrote its value (a container opened, or a single value).
    private(set) var wrote = false

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(writer: StreamWriter) {
        self.writer = writer
    }

    /// What a `superEncoder` gets: a stream cannot write a super value in its place, so the value goes to the
    /// fallback whatever is written to this (nothing too); each of its containers refuses its first write.
    init(refusing writer: StreamWriter) {
        self.writer = writer
        _ = writer.refuse()
        wrote = true
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if let keyed { return KeyedEncodingContainer(StreamKeyedContainer<Key>(writer: writer, frame: keyed)) }
        guard !wrote else {
            // A second container of another kind: nothing valid to write; the first write to it falls back.
            return KeyedEncodingContainer(StreamKeyedContainer<Key>(writer: writer, frame: -1))
        }
        wrote = true
        let frame = writer.open(object: true, ownedByEncoder: true)
        keyed = frame
        return KeyedEncodingContainer(StreamKeyedContainer<Key>(writer: writer, frame: frame))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if let unkeyed { return StreamUnkeyedContainer(writer: writer, frame: unkeyed) }
        guard !wrote else { return StreamUnkeyedContainer(writer: writer, frame: -1) }
        wrote = true
        let frame = writer.open(object: false, ownedByEncoder: true)
        unkeyed = frame
        return StreamUnkeyedContainer(writer: writer, frame: frame)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        StreamSingleValueContainer(encoder: self)
    }

    /// Claims this encoder's one value for a single-value container.
    func claimSingleValue() throws {
        guard !wrote else { throw writer.refuse() }
        wrote = true
    }
}

struct StreamSingleValueContainer: SingleValueEncodingContainer {
    let encoder: StreamEncoder
    var codingPath: [any CodingKey] { [] }
    private var writer: StreamWriter { encoder.writer }

    mutating func encodeNil() throws {
        try encoder.claimSingleValue()
        writer.out.writeStaticString("null")
    }
    mutating func encode(_ value: Bool) throws {
        try encoder.claimSingleValue()
        writer.out.writeStaticString(value ? "true" : "false")
    }
    mutating func encode(_ value: String) throws {
        try encoder.claimSingleValue()
        JSONWriter.string(value, into: &writer.out)
    }
    mutating func encode(_ value: Double) throws {
        try encoder.claimSingleValue()
        try JSONWriter.number(value, into: &writer.out)
    }
    mutating func encode(_ value: Float) throws {
        try encoder.claimSingleValue()
        try JSONWriter.number(value, into: &writer.out)
    }
    mutating func encode(_ value: Int) throws { try integer(value) }
    mutating func encode(_ value: Int8) throws { try integer(value) }
    mutating func encode(_ value: Int16) throws { try integer(value) }
    mutating func encode(_ value: Int32) throws { try integer(value) }
    mutating func encode(_ value: Int64) throws { try integer(value) }
    mutating func encode(_ value: UInt) throws { try integer(value) }
    mutating func encode(_ value: UInt8) throws { try integer(value) }
    mutating func encode(_ value: UInt16) throws { try integer(value) }
    mutating func encode(_ value: UInt32) throws { try integer(value) }
    mutating func encode(_ value: UInt64) throws { try integer(value) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try encoder.claimSingleValue()
        try writer.encodeValue(value)
    }

    private func integer<N: BinaryInteger>(_ value: N) throws {
        try encoder.claimSingleValue()
        writer.writeInteger(value)
    }
}

struct StreamKeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let writer: StreamWriter
    let frame: Int
    var codingPath: [any CodingKey] { [] }

    private func member(_ key: Key) throws {
        try writer.prepareMember(of: frame)
        writer.key(key.stringValue)
    }

    mutating func encodeNil(forKey key: Key) throws {
        try member(key)
        writer.out.writeStaticString("null")
    }
    mutating func encode(_ value: Bool, forKey key: Key) throws {
        try member(key)
        writer.out.writeStaticString(value ? "true" : "false")
    }
    mutating func encode(_ value: String, forKey key: Key) throws {
        try member(key)
        JSONWriter.string(value, into: &writer.out)
    }
    mutating func encode(_ value: Double, forKey key: Key) throws {
        try member(key)
        try JSONWriter.number(value, into: &writer.out)
    }
    mutating func encode(_ value: Float, forKey key: Key) throws {
        try member(key)
        try JSONWriter.number(value, into: &writer.out)
    }
    mutating func encode(_ value: Int, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { try integer(value, key) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try member(key)
        try writer.encodeValue(value)
    }

    private func integer<N: BinaryInteger>(_ value: N, _ key: Key) throws {
        try member(key)
        writer.writeInteger(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        do {
            try member(key)
            return KeyedEncodingContainer(StreamKeyedContainer<NestedKey>(writer: writer, frame: writer.open(object: true, ownedByEncoder: false)))
        } catch {
            return KeyedEncodingContainer(StreamKeyedContainer<NestedKey>(writer: writer, frame: -1))
        }
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        do {
            try member(key)
            return StreamUnkeyedContainer(writer: writer, frame: writer.open(object: false, ownedByEncoder: false))
        } catch {
            return StreamUnkeyedContainer(writer: writer, frame: -1)
        }
    }

    mutating func superEncoder() -> any Encoder { StreamEncoder(refusing: writer) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { StreamEncoder(refusing: writer) }
}

struct StreamUnkeyedContainer: UnkeyedEncodingContainer {
    let writer: StreamWriter
    let frame: Int
    private(set) var count = 0
    var codingPath: [any CodingKey] { [] }

    init(writer: StreamWriter, frame: Int) {
        self.writer = writer
        self.frame = frame
    }

    private mutating func element() throws {
        try writer.prepareMember(of: frame)
        count += 1
    }

    mutating func encodeNil() throws {
        try element()
        writer.out.writeStaticString("null")
    }
    mutating func encode(_ value: Bool) throws {
        try element()
        writer.out.writeStaticString(value ? "true" : "false")
    }
    mutating func encode(_ value: String) throws {
        try element()
        JSONWriter.string(value, into: &writer.out)
    }
    mutating func encode(_ value: Double) throws {
        try element()
        try JSONWriter.number(value, into: &writer.out)
    }
    mutating func encode(_ value: Float) throws {
        try element()
        try JSONWriter.number(value, into: &writer.out)
    }
    mutating func encode(_ value: Int) throws { try integer(value) }
    mutating func encode(_ value: Int8) throws { try integer(value) }
    mutating func encode(_ value: Int16) throws { try integer(value) }
    mutating func encode(_ value: Int32) throws { try integer(value) }
    mutating func encode(_ value: Int64) throws { try integer(value) }
    mutating func encode(_ value: UInt) throws { try integer(value) }
    mutating func encode(_ value: UInt8) throws { try integer(value) }
    mutating func encode(_ value: UInt16) throws { try integer(value) }
    mutating func encode(_ value: UInt32) throws { try integer(value) }
    mutating func encode(_ value: UInt64) throws { try integer(value) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try element()
        try writer.encodeValue(value)
    }

    private mutating func integer<N: BinaryInteger>(_ value: N) throws {
        try element()
        writer.writeInteger(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        do {
            try element()
            return KeyedEncodingContainer(StreamKeyedContainer<NestedKey>(writer: writer, frame: writer.open(object: true, ownedByEncoder: false)))
        } catch {
            return KeyedEncodingContainer(StreamKeyedContainer<NestedKey>(writer: writer, frame: -1))
        }
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        do {
            try element()
            return StreamUnkeyedContainer(writer: writer, frame: writer.open(object: false, ownedByEncoder: false))
        } catch {
            return StreamUnkeyedContainer(writer: writer, frame: -1)
        }
    }

    mutating func superEncoder() -> any Encoder { StreamEncoder(refusing: writer) }
}
