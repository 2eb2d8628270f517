import Crypto
import Foundation

/// The master keys that wrap visitors' data keys: the current one wraps every new data key, the others
/// are still accepted to unwrap, so a master key is rotated without downtime (run with `new, old`, rewrap
/// with `convo encryption rotate-master-key`, then drop `old`).
///
/// Written as base64 keys of 32 bytes, one per line or separated by commas, the current one first.
/// A key's id, stored beside every data key it wraps, is the first 8 bytes of SHA-256 of the key, in hex:
/// it names the key without revealing it.
public struct MasterKeyring: Sendable {
    public struct Key: Sendable {
        public let id: String
        let key: SymmetricKey
    }

    /// The key that wraps new data keys.
    public let current: Key
    /// Every key, the current one first.
    public let keys: [Key]

    /// Parses keys written as described above.
    ///
    /// - Throws: ``EventStoreError`` (`invalidArgument`) for a key that is not base64 of 32 bytes, or none.
    public init(parsing text: String) throws {
        var keys: [Key] = []
        for (index, part) in text.split(whereSeparator: { $0 == "," || $0.isNewline }).enumerated() {
            let trimmed = part.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty, !trimmed.hasPrefix("#") else { continue }
            guard let bytes = Data(base64Encoded: trimmed), bytes.count == 32 else {
                throw EventStoreError(code: .invalidArgument, message: "master key \(index + 1) is not base64 of 32 bytes")
            }
            keys.append(Self.key(bytes))
        }
        guard let first = keys.first else { throw EventStoreError(code: .invalidArgument, message: "no master key given") }
        self.current = first
        self.keys = keys
    }

    /// A keyring of new random keys, the first current: for tests and for `convo encryption generate-key`.
    public static func generateKey() -> String {
        SymmetricKey(size: .bits256).withUnsafeBytes { Data($0).base64EncodedString() }
    }

    static func key(_ bytes: Data) -> Key {
        let digest = SHA256.hash(data: bytes)
        return Key(id: Array(digest.prefix(8)).hexString, key: SymmetricKey(data: bytes))
    }

    /// The key with this id, if the ring holds it.
    func key(id: String) -> Key? { keys.first { $0.id == id } }
}
