/// An error of webhooks: a refused configuration, a missing endpoint, or the storage behind them. Its
/// description never carries a secret or a payload.
public struct WebhookError: Error, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidSecret, invalidURL, invalidEventTypes, invalidArgument, notFound, unavailable, storageFailure
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The secret is not `whsec_` and base64 of 24 to 64 bytes.
        public static let invalidSecret = Code(.invalidSecret)
        /// The URL is not an absolute http or https URL.
        public static let invalidURL = Code(.invalidURL)
        /// An event type is unknown, or none is given.
        public static let invalidEventTypes = Code(.invalidEventTypes)
        /// Another argument is out of range (an endpoint id, a page size).
        public static let invalidArgument = Code(.invalidArgument)
        /// No such endpoint or delivery for this tenant.
        public static let notFound = Code(.notFound)
        /// PostgreSQL could not be reached.
        public static let unavailable = Code(.unavailable)
        /// PostgreSQL refused or failed the operation.
        public static let storageFailure = Code(.storageFailure)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String
    /// The underlying error; not part of ``description``.
    public var cause: (any Error)?
    public var file: String
    public var line: Int

    public init(code: Code, message: String, cause: (any Error)? = nil, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.cause = cause
        self.file = file
        self.line = line
    }

    public var description: String { "WebhookError.\(code): \(message)" }
}
