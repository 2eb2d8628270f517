/// A small seeded generator: the same mutations on every run.
public struct SplitMix64 {
    var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func next(upTo bound: Int) -> Int { Int(next() % UInt64(bound)) }

    /// Bytes that matter to a JSON reader: structure, digits, escapes, a control character, UTF-8 lead and
    /// continuation bytes, and bytes that are never UTF-8.
    public static let jsonBytes = Array(#""\{}[],:0123456789.eE-+ntfu/ "#.utf8) + [0x00, 0x1F, 0x7F, 0xC3, 0xA9, 0x80, 0xFF]

    /// `bytes` broken in one to three places: a byte of ``jsonBytes`` put in place of one, inserted, or one removed.
    public mutating func brokenJSON(_ bytes: [UInt8]) -> [UInt8] {
        var bytes = bytes
        for _ in 0...next(upTo: 2) {
            let position = next(upTo: bytes.count)
            let byte = Self.jsonBytes[next(upTo: Self.jsonBytes.count)]
            switch next(upTo: 3) {
            case 0: bytes[position] = byte
            case 1: bytes.insert(byte, at: position)
            default: if bytes.count > 1 { bytes.remove(at: position) }
            }
        }
        return bytes
    }
}
