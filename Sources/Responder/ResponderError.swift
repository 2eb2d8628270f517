/// An error of the responder: Redis, the visitor lock, workflows, tools and AI providers. Its description
/// never carries a message text, a key or a credential.
public struct ResponderError: Error, CustomStringConvertible {
    /// What went wrong, as a value callers can compare with `==`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidConfiguration
            case redisUnavailable
            case redisCommandFailed
            case aiProviderFailed
            case lockLost
            case invalidWorkflow
            case conversationOwnedByAnotherVisitor
            case workflowNotFound
            case invalidMessage
            case messageIdReused
            case messageTooLong
            case overloaded
            case notStored
            case visitorNotFound
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A URL, a timeout or another setting is not valid.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// Redis could not be reached, or the connection broke during a command.
        public static let redisUnavailable = Code(.redisUnavailable)
        /// Redis answered a command with an error.
        public static let redisCommandFailed = Code(.redisCommandFailed)

        /// The AI provider gave no usable answer (timeout, refusal, HTTP error, malformed reply).
        public static let aiProviderFailed = Code(.aiProviderFailed)
        /// The visitor lock expired or was taken by another worker while this one worked.
        public static let lockLost = Code(.lockLost)
        /// A workflow definition is not valid.
        public static let invalidWorkflow = Code(.invalidWorkflow)
        /// A message names a conversation that belongs to another visitor.
        public static let conversationOwnedByAnotherVisitor = Code(.conversationOwnedByAnotherVisitor)
        /// No workflow with this id (and version) is published.
        public static let workflowNotFound = Code(.workflowNotFound)

        /// A message to ingest is not valid (empty text, too long, bad id).
        public static let invalidMessage = Code(.invalidMessage)
        /// A message's text is over ``IncomingMessage/maxTextLength`` characters.
        public static let messageTooLong = Code(.messageTooLong)
        /// A message id was ingested before with another text or visitor.
        public static let messageIdReused = Code(.messageIdReused)
        /// The ingest queue is full: the message was refused at once, nothing of it stored (load shedding).
        public static let overloaded = Code(.overloaded)
        /// The message was given up before its batch was written (the request's deadline passed): not stored.
        public static let notStored = Code(.notStored)
        /// convo holds nothing of this visitor (no data key was ever made for them).
        public static let visitorNotFound = Code(.visitorNotFound)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String
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

    public var description: String { "ResponderError.\(code): \(message)" }
}
