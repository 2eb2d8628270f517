import Foundation
import NIOSSL
import PostgresNIO

/// A PostgreSQL connection URL: `postgres://user[:password]@host[:port]/database[?sslmode=disable|prefer|require]`.
public struct DatabaseURL: Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var sslMode: String

    /// Parses a URL.
    ///
    /// - Throws: ``EventStoreError`` with ``EventStoreError/Code/invalidArgument`` naming what is wrong (never the password).
    public init(_ string: String) throws {
        guard let components = URLComponents(string: string), let scheme = components.scheme,
            ["postgres", "postgresql"].contains(scheme)
        else {
            throw EventStoreError(code: .invalidArgument, message: "a database URL looks like postgres://user@host:port/database")
        }
        guard let host = components.host, !host.isEmpty else {
            throw EventStoreError(code: .invalidArgument, message: "the database URL has no host")
        }
        let database = String(components.path.drop { $0 == "/" })
        guard !database.isEmpty else { throw EventStoreError(code: .invalidArgument, message: "the database URL names no database") }
        self.host = host
        self.port = components.port ?? 5432
        self.username = components.user ?? "postgres"
        self.password = components.password
        self.database = database
        self.sslMode = components.queryItems?.first { $0.name == "sslmode" }?.value ?? "disable"
        guard ["disable", "prefer", "require"].contains(sslMode) else {
            throw EventStoreError(code: .invalidArgument, message: "sslmode is disable, prefer or require")
        }
    }

    /// The same server with another database, e.g. for a benchmark's or a test's own database.
    public func with(database: String) -> DatabaseURL {
        var copy = self
        copy.database = database
        return copy
    }

    /// A PostgresClient configuration for this URL, with at most `maximumConnections` connections.
    /// A client configuration for this database.
    ///
    /// - Parameters:
    ///   - sessionTimeouts: the sessions' `statement_timeout` and, unless `idleInTransaction` is given, at a fifth
    ///     of it (at least 10 s) `idle_in_transaction_session_timeout`; `nil` leaves PostgreSQL's (none). `convo
    ///     serve` sets them, so a stuck statement or a session idle inside a transaction (its process frozen or
    ///     hung) is ended by the server instead of holding locks and every reader's horizon (`pg_snapshot_xmin`).
    ///   - idleInTransaction: `idle_in_transaction_session_timeout` itself.
    public func clientConfiguration(
        maximumConnections: Int = 20, sessionTimeouts: Duration? = nil, idleInTransaction: Duration? = nil
    ) -> PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS
        switch sslMode {
        case "require": tls = .require(.makeClientConfiguration())
        case "prefer": tls = .prefer(.makeClientConfiguration())
        default: tls = .disable
        }
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: username, password: password, database: database, tls: tls)
        configuration.options.maximumConnections = maximumConnections
        if let sessionTimeouts {
            let seconds = max(1, sessionTimeouts.components.seconds)
            configuration.options.additionalStartupParameters = [
                ("statement_timeout", "\(seconds)s"),
                ("idle_in_transaction_session_timeout", "\(idleInTransaction.map { max(1, $0.components.seconds) } ?? max(10, seconds / 5))s"),
            ]
        }
        return configuration
    }

    /// The URL without its password.
    public var description: String { "postgres://\(username)@\(host):\(port)/\(database)" }
}
