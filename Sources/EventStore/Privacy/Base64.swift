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

    /// The bytes `text` encodes; `nil` when it is not padded standard base64.
    static func decode(_ text: UnsafeRawBufferPointer) -> [UInt8]? {
        guard text.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(text.count / 4 * 3)
        var index = 0
        while index < text.count {
            let a = values[Int(text[index])], b = values[Int(text[index + 1])]
            guard a != 0xFF, b != 0xFF else { return nil }
            let last = index + 4 == text.count
            let padC = last && text[index + 2] == UInt8(ascii: "=")
            let padD = last && text[index + 3] == UInt8(ascii: "=")
            let c = padC ? 0 : values[Int(text[index + 2])]
            let d = padD ? 0 : values[Int(text[index + 3])]
            guard c != 0xFF, d != 0xFF, !(padC && !padD) else { return nil }
            let chunk = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
            out.append(UInt8(chunk >> 16 & 0xFF))
            if !padC { out.append(UInt8(chunk >> 8 & 0xFF)) }
            if !padD { out.append(UInt8(chunk & 0xFF)) }
            index += 4
        }
        return out
    }
}
