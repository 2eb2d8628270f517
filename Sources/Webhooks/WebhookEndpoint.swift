import Foundation
import SharedTypes

/// A tenant's webhook endpoint: where its messages go, which event types it wants, how they are signed,
/// and how far it has followed the event store.
public struct WebhookEndpoint: Sendable, Equatable {
    public var tenant: TenantID
    public var id: String
    /// The advisory lock's object id: the one sender of this endpoint holds it.
    public var lockKey: Int32
    public var url: String
    public var eventTypes: [WebhookEventType]
    public var signing: WebhookSigningKeys
    /// Grows with each change of the configuration; a running sender picks the change up.
    public var configVersion: Int64
    /// The global position up to which events were turned into deliveries.
    public var checkpoint: Int64
    public var createdAt: Date
    public var updatedAt: Date
    public var disabledAt: Date?
    /// Why it was disabled: the delivery that could not be made, for how long, and the last answer.
    public var disabledReason: String?

    public var enabled: Bool { disabledAt == nil }

    /// 1 to 64 of A-Z a-z 0-9 `_ -`.
    public static func isValidID(_ id: String) -> Bool {
        (1...64).contains(id.utf8.count)
            && id.utf8.allSatisfy {
                $0.isASCIIAlphanumeric || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
            }
    }

    /// An absolute `http` or `https` URL: a host name (labels of letters, digits and inner `-`, joined by `.`),
    /// an optional port 1 to 65535, an optional path and query of URL characters (`%` only as `%XX`); at
    /// most 2,048 characters, no credentials, no fragment. The OpenAPI pattern of `url` is the same rule.
    ///
    /// - Throws: ``WebhookError/Code/invalidURL``.
    public static func validateURL(_ url: String) throws(WebhookError) {
        guard isValidURL(url) else {
            throw WebhookError(
                code: .invalidURL,
                message: "a webhook url is http:// or https://, a host name, an optional port (1-65535), path and query; at most 2048 characters, no credentials")
        }
    }

    static func isValidURL(_ url: String) -> Bool {
        let bytes = Array(url.utf8)
        guard bytes.count <= 2048 else { return false }
        var index: Int
        if bytes.starts(with: Array("http://".utf8)) {
            index = 7
        } else if bytes.starts(with: Array("https://".utf8)) {
            index = 8
        } else {
            return false
        }
        // Host: labels joined by dots.
        var labelLength = 0
        var lastWasHyphen = false
        var labels = 0
        while index < bytes.count, bytes[index] != UInt8(ascii: ":"), bytes[index] != UInt8(ascii: "/"), bytes[index] != UInt8(ascii: "?") {
            let byte = bytes[index]
            if byte == UInt8(ascii: ".") {
                guard labelLength > 0, !lastWasHyphen else { return false }
                labels += 1
                labelLength = 0
            } else if byte.isASCIIAlphanumeric {
                labelLength += 1
                lastWasHyphen = false
            } else if byte == UInt8(ascii: "-") {
                guard labelLength > 0 else { return false }
                labelLength += 1
                lastWasHyphen = true
            } else {
                return false
            }
            guard labelLength <= 63 else { return false }
            index += 1
        }
        guard labelLength > 0, !lastWasHyphen else { return false }
        labels += 1
        _ = labels
        // Port.
        if index < bytes.count, bytes[index] == UInt8(ascii: ":") {
            index += 1
            var digits = 0
            var port = 0
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]), digits < 6 {
                if digits == 0 && bytes[index] == UInt8(ascii: "0") { return false }
                port = port * 10 + Int(bytes[index] - UInt8(ascii: "0"))
                digits += 1
                index += 1
            }
            guard (1...65535).contains(port) else { return false }
        }
        // Path, then query.
        var inQuery = false
        if index < bytes.count, bytes[index] != UInt8(ascii: "/"), bytes[index] != UInt8(ascii: "?") { return false }
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "%") {
                guard index + 2 < bytes.count, bytes[index + 1].isASCIIHexDigit, bytes[index + 2].isASCIIHexDigit else { return false }
                index += 3
                continue
            }
            if byte == UInt8(ascii: "?") {
                inQuery = true
            } else if !(byte.isASCIIAlphanumeric || Self.pathCharacters.contains(byte) || (inQuery && byte == UInt8(ascii: "?"))) {
                return false
            }
            index += 1
        }
        return true
    }

    /// Besides letters and digits, what a path segment or query may hold unencoded (`/` separates segments).
    private static let pathCharacters = Set("/._~!$&'()*+,;=:@-".utf8)
}

extension UInt8 {
    fileprivate var isASCIIAlphanumeric: Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(self) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(self)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(self)
    }
}

/// One message owed to an endpoint, or delivered to it, with every attempt.
public struct WebhookDelivery: Sendable, Equatable, Codable {
    public struct Attempt: Sendable, Equatable, Codable {
        public var at: Date
        /// The receiver's status code; `nil` when no answer came (refused connection, timeout).
        public var statusCode: Int?
        public var latencyMs: Int
        /// What went wrong, when it did: a status other than 2xx, or the connection's error.
        public var error: String?
        /// The process that sent it (host and pid).
        public var instance: String

        public init(at: Date, statusCode: Int?, latencyMs: Int, error: String?, instance: String) {
            self.at = at
            self.statusCode = statusCode
            self.latencyMs = latencyMs
            self.error = error
            self.instance = instance
        }
    }

    public var id: Int64
    /// The Standard Webhooks `webhook-id`: the same for every attempt and redelivery of one event.
    public var messageId: String
    public var eventId: UUID
    public var eventType: String
    public var position: Int64
    public var conversationId: String
    /// `event` or `redelivery`.
    public var origin: String
    /// `requested`, `pending` or `delivered`.
    public var status: String
    public var attempts: [Attempt]
    public var createdAt: Date
    public var deliveredAt: Date?
}
