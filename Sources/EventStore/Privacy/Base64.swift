import Foundation
import NIOCore

/// Standard base64 (RFC 4648, padded) between bytes and a ByteBuffer, without Foundation's `Data`: a rebuild
/// decodes one envelope per sealed field, and the round trips through `Data` cost more than the cipher.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(index) }
        return table
    }()

    /// Writes the encoding of `bytes` to `buffer`, straight into its memory (a byte at a time through
    /// `writeInteger` checked the buffer's bounds and uniqueness for every character: a fifth of sealing).
    static func encode(_ bytes: some ContiguousBytes, into buffer: inout ByteBuffer) {
        bytes.withUnsafeBytes { input in
            let length = (input.count + 2) / 3 * 4
            guard length > 0 else { return }
            alphabet.withUnsafeBufferPointer { alphabet in
                _ = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { output in
                    var index = 0
                    var at = 0
                    while index + 3 <= input.count {
                        let chunk = UInt32(input[index]) << 16 | UInt32(input[index + 1]) << 8 | UInt32(input[index + 2])
                        output[at] = alphabet[Int(chunk >> 18 & 63)]
                        output[at + 1] = alphabet[Int(chunk >> 12 & 63)]
                        output[at + 2] = alphabet[Int(chunk >> 6 & 63)]
                        output[at + 3] = alphabet[Int(chunk & 63)]
                        index += 3
                        at += 4
                    }
                    let rest = input.count - index
                    if rest > 0 {
                        let chunk = UInt32(input[index]) << 16 | (rest == 2 ? UInt32(input[index + 1]) << 8 : 0)
                        output[at] = alphabet[Int(chunk >> 18 & 63)]
                        output[at + 1] = alphabet[Int(chunk >> 12 & 63)]
                        output[at + 2] = rest == 2 ? alphabet[Int(chunk >> 6 & 63)] : UInt8(ascii: "=")
                        output[at + 3] = UInt8(ascii: "=")
                    }
                    return length
                }
            }
        }
    }

    /// Decodes `text` into `out` (emptied first, its capacity kept: a batch decodes every envelope into one
    /// array); false when `text` is not padded standard base64.
    static func decode(_ text: UnsafeRawBufferPointer, into out: inout [UInt8]) -> Bool {
        out.removeAll(keepingCapacity: true)
        guard text.count % 4 == 0 else { return false }
        guard text.count > 0 else { return true }
        let padding = text[text.count - 1] != UInt8(ascii: "=") ? 0 : text[text.count - 2] == UInt8(ascii: "=") ? 2 : 1
        out.append(contentsOf: repeatElement(0, count: text.count / 4 * 3 - padding))
        return values.withUnsafeBufferPointer { table in
            out.withUnsafeMutableBufferPointer { output in
                // Whole quads, then the last one with its padding.
                let whole = padding == 0 ? text.count : text.count - 4
                var index = 0
                var at = 0
                while index < whole {
                    let a = table[Int(text[index])], b = table[Int(text[index + 1])]
                    let c = table[Int(text[index + 2])], d = table[Int(text[index + 3])]
                    // An invalid character (`=` too, here) has the high bit set.
                    guard (a | b | c | d) & 0x80 == 0 else { return false }
                    let chunk = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
                    output[at] = UInt8(truncatingIfNeeded: chunk >> 16)
                    output[at + 1] = UInt8(truncatingIfNeeded: chunk >> 8)
                    output[at + 2] = UInt8(truncatingIfNeeded: chunk)
                    index += 4
                    at += 3
                }
                guard padding > 0 else { return true }
                let a = table[Int(text[index])], b = table[Int(text[index + 1])]
                let c = padding == 2 ? 0 : table[Int(text[index + 2])]
                guard (a | b | c) & 0x80 == 0 else { return false }
                let chunk = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6
                output[at] = UInt8(truncatingIfNeeded: chunk >> 16)
                if padding == 1 { output[at + 1] = UInt8(truncatingIfNeeded: chunk >> 8) }
                return true
            }
        }
    }
}
