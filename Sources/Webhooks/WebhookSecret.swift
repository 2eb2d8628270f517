import Crypto
import Foundation

/// An endpoint's signing secret as the Standard Webhooks specification writes it: `whsec_` and the base64 of
/// 24 to 64 random bytes. Its ``description`` never shows the key.
public struct WebhookSecret: Sendable, Hashable, CustomStringConvertible {
    /// The secret as given, `whsec_…`: stored, and shown to the caller once.
    public let encoded: String
    let key: SymmetricKey

    public static let prefix = "whsec_"

    /// Parses `whsec_<base64>`: 32 to 84 base64 characters (padded to a multiple of 4), a key of 24 to 63
    /// bytes. The OpenAPI pattern of `secret` is the same rule.
    ///
    /// - Throws: ``WebhookError/invalidSecret`` when the prefix is missing or the rest is not such base64.
    public init(_ encoded: String) throws(WebhookError) {
        guard encoded.hasPrefix(Self.prefix) else {
            throw WebhookError(code: .invalidSecret, message: "a webhook secret starts with whsec_")
        }
        let base64 = Array(encoded.utf8.dropFirst(Self.prefix.utf8.count))
        let padding = base64.reversed().prefix { $0 == UInt8(ascii: "=") }.count
        let body = base64.dropLast(padding)
        guard base64.count % 4 == 0, (32...84).contains(base64.count), padding <= 2, body.allSatisfy(Self.isBase64Character),
            let bytes = Data(base64Encoded: String(decoding: base64, as: UTF8.self))
        else {
            throw WebhookError(code: .invalidSecret, message: "a webhook secret is whsec_ and the base64 of 24 to 63 bytes (32 to 84 characters, padded)")
        }
        self.encoded = encoded
        self.key = SymmetricKey(data: bytes)
    }

    private static func isBase64Character(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "+") || byte == UInt8(ascii: "/")
    }

    /// A new secret of 32 random bytes.
    public static func generate() -> WebhookSecret {
        let key = SymmetricKey(size: .bits256)
        let encoded = prefix + key.withUnsafeBytes { Data($0).base64EncodedString() }
        return try! WebhookSecret(encoded)
    }

    /// The versioned signature of one message: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
    public func signature(id: String, timestamp: Int64, body: some DataProtocol) -> String {
        var mac = HMAC<SHA256>(key: key)
        mac.update(data: Data("\(id).\(timestamp).".utf8))
        mac.update(data: body)
        return "v1," + Data(mac.finalize()).base64EncodedString()
    }

    public static func == (lhs: WebhookSecret, rhs: WebhookSecret) -> Bool { lhs.encoded == rhs.encoded }
    public func hash(into hasher: inout Hasher) { hasher.combine(encoded) }

    /// The first characters only.
    public var description: String { String(encoded.prefix(Self.prefix.count + 4)) + "…" }
}

/// What signs an endpoint's messages: its current secret and, during a rotation, the previous one until it
/// retires. Each live secret adds a signature to the `webhook-signature` header, so a receiver holding
/// either verifies.
public struct WebhookSigningKeys: Sendable, Equatable {
    public struct Key: Sendable, Equatable {
        public var secret: WebhookSecret
        /// When this key stops signing; `nil` for the current key.
        public var retiresAt: Date?

        public init(secret: WebhookSecret, retiresAt: Date? = nil) {
            self.secret = secret
            self.retiresAt = retiresAt
        }
    }

    public var keys: [Key]

    public init(keys: [Key]) { self.keys = keys }

    /// The `webhook-signature` header: one `v1,…` per live key, separated by spaces, the current first.
    public func signatureHeader(id: String, timestamp: Int64, body: some DataProtocol, now: Date) -> String {
        keys.filter { $0.retiresAt.map { $0 > now } ?? true }.map { $0.secret.signature(id: id, timestamp: timestamp, body: body) }
            .joined(separator: " ")
    }
}
