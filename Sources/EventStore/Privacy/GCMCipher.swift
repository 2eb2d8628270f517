import COpenSSLCrypto
import Crypto
import NIOCore

/// AES-256-GCM with one data key, its key schedule and GHASH table set up once and kept for every message
/// sealed or opened with it (libcrypto's EVP interface).
///
/// swift-crypto's `AES.GCM` sets up a new cipher context on every call and hands every part through `Data`
/// (the box, the nonce, the ciphertext, the tag, the plaintext); a rebuild opens hundreds of thousands of
/// members with a few thousand keys, so that setup and those copies were half of what opening cost. A
/// batch keeps one cipher per key here and its messages go straight between the caller's buffers.
///
/// The format is the one `AES.GCM.SealedBox.combined` has: nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes),
/// the nonce random: either side opens what the other sealed (`GCMCipherTests`). Data keys are still
/// wrapped and unwrapped with swift-crypto.
///
/// Not for sharing between tasks: a context holds one message's state while it works.
final class GCMCipher {
    static let nonceSize = 12
    static let tagSize = 16

    private let context: OpaquePointer
    private let sealing: Bool

    private init(context: OpaquePointer, sealing: Bool) {
        self.context = context
        self.sealing = sealing
    }

    deinit { EVP_CIPHER_CTX_free(context) }

    /// The cipher's implementation, fetched once: OpenSSL 3 looks it up again (a lock, a property query)
    /// every time a context is set up with `EVP_aes_256_gcm()`. Read-only once fetched, shared by all threads.
    private nonisolated(unsafe) static let algorithm: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-256-GCM", nil) ?? EVP_aes_256_gcm()

    /// A cipher with `key` (256 bits) that seals, or opens; `nil` when libcrypto cannot set it up.
    static func make(key: SymmetricKey, sealing: Bool) -> GCMCipher? {
        guard key.bitCount == 256, let algorithm, let context = EVP_CIPHER_CTX_new() else { return nil }
        guard EVP_CipherInit_ex(context, algorithm, nil, nil, nil, sealing ? 1 : 0) == 1 else {
            EVP_CIPHER_CTX_free(context)
            return nil
        }
        let cipher = GCMCipher(context: context, sealing: sealing)
        return cipher.use(key) ? cipher : nil
    }

    /// Sets the context's key (256 bits).
    private func use(_ key: SymmetricKey) -> Bool {
        guard key.bitCount == 256 else { return false }
        return key.withUnsafeBytes { key in
            EVP_CipherInit_ex(context, nil, nil, key.baseAddress?.assumingMemoryBound(to: UInt8.self), nil, -1) == 1
        }
    }

    /// Opens `combined` (nonce ‖ ciphertext ‖ tag), bound to `associatedData`, writing the plaintext at the
    /// end of `out`.
    ///
    /// - Returns: whether it authenticated; when it did not, nothing is written (the bytes it had decrypted
    ///   are overwritten before they could be read).
    func open(_ combined: UnsafeRawBufferPointer, authenticating associatedData: UnsafeRawBufferPointer, into out: inout ByteBuffer) -> Bool {
        guard !sealing, combined.count >= Self.nonceSize + Self.tagSize, let box = combined.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
            return false
        }
        let length = combined.count - Self.nonceSize - Self.tagSize
        var count: Int32 = 0
        guard EVP_DecryptInit_ex(context, nil, nil, nil, box) == 1, authenticate(associatedData, &count) else { return false }
        let tag = UnsafeMutableRawPointer(mutating: box + Self.nonceSize + length)
        var opened = false
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: max(1, length)) { output in
            guard let plaintext = output.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return 0 }
            var final: Int32 = 0
            if EVP_DecryptUpdate(context, plaintext, &count, box + Self.nonceSize, Int32(length)) == 1, Int(count) == length,
                EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_SET_TAG, Int32(Self.tagSize), tag) == 1,
                EVP_DecryptFinal_ex(context, plaintext + length, &final) == 1, final == 0
            {
                opened = true
                return length
            }
            plaintext.initialize(repeating: 0, count: length)
            return 0
        }
        return opened
    }

    /// Seals `plaintext`, bound to `associatedData`, with a random nonce: `combined` becomes
    /// nonce ‖ ciphertext ‖ tag (its capacity kept from call to call).
    ///
    /// - Returns: false when libcrypto failed (no random bytes, a context error); `combined` is then empty.
    func seal(_ plaintext: UnsafeRawBufferPointer, authenticating associatedData: UnsafeRawBufferPointer, into combined: inout [UInt8]) -> Bool {
        guard sealing else { return false }
        let length = plaintext.count
        combined.removeAll(keepingCapacity: true)
        combined.append(contentsOf: repeatElement(0, count: Self.nonceSize + length + Self.tagSize))
        let sealed = combined.withUnsafeMutableBufferPointer { box -> Bool in
            guard let nonce = box.baseAddress, RAND_bytes(nonce, Int32(Self.nonceSize)) == 1 else { return false }
            var count: Int32 = 0
            var final: Int32 = 0
            guard EVP_EncryptInit_ex(context, nil, nil, nil, nonce) == 1, authenticate(associatedData, &count) else { return false }
            let input = plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self)
            if length > 0 {
                guard let input, EVP_EncryptUpdate(context, nonce + Self.nonceSize, &count, input, Int32(length)) == 1, Int(count) == length else { return false }
            }
            return EVP_EncryptFinal_ex(context, nonce + Self.nonceSize + length, &final) == 1 && final == 0
                && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_GET_TAG, Int32(Self.tagSize), nonce + Self.nonceSize + length) == 1
        }
        if !sealed { combined.removeAll(keepingCapacity: true) }
        return sealed
    }

    /// Hands the associated data to the message under way.
    private func authenticate(_ associatedData: UnsafeRawBufferPointer, _ count: inout Int32) -> Bool {
        guard associatedData.count > 0, let bytes = associatedData.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return true }
        return EVP_CipherUpdate(context, nil, &count, bytes, Int32(associatedData.count)) == 1
    }
}
