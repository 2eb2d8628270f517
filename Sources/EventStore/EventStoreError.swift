import SharedTypes

/// An error of the event store. Its description names the stream and versions involved, never a payload
/// or a connection string.
public struct EventStoreError: Error, CustomStringConvertible {
    /// What went wrong, as a value callers can compare with `==`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case wrongExpectedVersion
            case duplicateEventID
            case invalidArgument
            case unavailable
            case storageFailure
            case migrationChecksumMismatch
            case migrationFailed
            case schemaOutdated
            case outcomeUnknown
            case keyUnavailable
            case subjectErased
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The stream's version is not the one the append expected.
        public static let wrongExpectedVersion = Code(.wrongExpectedVersion)
        /// An event id of the append is already stored somewhere else, or only some of them are stored.
        public static let duplicateEventID = Code(.duplicateEventID)
        /// The call itself is wrong: no events, a bad type name, a page size out of range.
        public static let invalidArgument = Code(.invalidArgument)
        /// PostgreSQL could not be reached.
        public static let unavailable = Code(.unavailable)
        /// PostgreSQL refused or failed the operation for another reason.
        public static let storageFailure = Code(.storageFailure)
        /// An applied migration's file changed since it was applied.
        public static let migrationChecksumMismatch = Code(.migrationChecksumMismatch)
        /// A migration's SQL failed; nothing of it was applied.
        public static let migrationFailed = Code(.migrationFailed)
        /// Migrations this binary needs are not applied yet.
        public static let schemaOutdated = Code(.schemaOutdated)
        /// A write was sent, and then the connection was lost or the wait given up before PostgreSQL answered:
        /// it may or may not have committed. Retry it with the same event ids (appends are idempotent by id).
        public static let outcomeUnknown = Code(.outcomeUnknown)
        /// Personal data cannot be sealed or opened: no master key is configured, or not the one that wrapped
        /// a data key.
        public static let keyUnavailable = Code(.keyUnavailable)
        /// The visitor was forgotten, and the append (derived from what was read before) may not give them a
        /// new key.
        public static let subjectErased = Code(.subjectErased)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String
    /// The stream the failed operation was about, if any.
    public var stream: StreamName?
    /// With ``Code/wrongExpectedVersion``: what the append expected.
    public var expected: ExpectedVersion?
    /// With ``Code/wrongExpectedVersion``: the stream's version when the append ran.
    public var actual: Int64?
    /// The underlying error, if any. Not part of ``description``: it may carry SQL.
    public var cause: (any Error)?
    public var file: String
    public var line: Int

    public init(
        code: Code, message: String, stream: StreamName? = nil, expected: ExpectedVersion? = nil, actual: Int64? = nil,
        cause: (any Error)? = nil, file: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.stream = stream
        self.expected = expected
        self.actual = actual
        self.cause = cause
        self.file = file
        self.line = line
    }

    /// The stream's version is `actual`, not what `expected` said.
    public static func wrongExpectedVersion(
        stream: StreamName, expected: ExpectedVersion, actual: Int64, file: String = #fileID, line: Int = #line
    ) -> EventStoreError {
        EventStoreError(
            code: .wrongExpectedVersion, message: "stream \(stream) is at version \(actual), the append expected \(expected)",
            stream: stream, expected: expected, actual: actual, file: file, line: line
        )
    }

    public var description: String { "EventStoreError.\(code): \(message)" }
}
