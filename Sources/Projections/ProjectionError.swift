/// What went wrong in the Projections module.
public struct ProjectionError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String {
            case invalidArgument = "invalid_argument"
            case unknownProjection = "unknown_projection"
            case fold
            case notBuilt = "not_built"
            case busy
            case storageFailure = "storage_failure"
        }

        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// A bad name, option or value from the caller.
        public static let invalidArgument = Code(.invalidArgument)
        /// No projection has that name.
        public static let unknownProjection = Code(.unknownProjection)
        /// The fold could not apply an event; ``ProjectionError/fold`` says which.
        public static let fold = Code(.fold)
        /// The projection's table has not been built yet.
        public static let notBuilt = Code(.notBuilt)
        /// Another process is rebuilding the projection.
        public static let busy = Code(.busy)
        /// PostgreSQL failed or holds something convo cannot read.
        public static let storageFailure = Code(.storageFailure)

        public var description: String { value.rawValue }
    }

    public var code: Code
    public var message: String
    public var fold: FoldError?
    public var cause: (any Error)?

    public init(code: Code, message: String, fold: FoldError? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.fold = fold
        self.cause = cause
    }

    public var description: String { message }
}
