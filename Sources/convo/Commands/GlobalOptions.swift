import ArgumentParser
import Audit
import EventStore
import Foundation
import Logging
import Projections
import Responder
import Webhooks

/// Where PostgreSQL and Redis are, and how much to log. Flags win over `CONVO_*` variables, which win over
/// the defaults `./scripts/dev` uses.
struct GlobalOptions: ParsableArguments {
    static let defaultDatabaseURL = "postgres://convo@127.0.0.1:55432/convo"
    static let defaultRedisURL = "redis://127.0.0.1:56379"

    @Option(name: .customLong("database-url"), help: "PostgreSQL URL (env CONVO_DATABASE_URL; default \(Self.defaultDatabaseURL)).")
    var databaseURLFlag: String?

    @Option(name: .customLong("redis-url"), help: "Redis URL (env CONVO_REDIS_URL; default \(Self.defaultRedisURL)).")
    var redisURLFlag: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (env CONVO_LOG_LEVEL; default info).")
    var logLevelFlag: String?

    @Option(name: .customLong("connect-timeout"), help: "Seconds to wait for PostgreSQL to answer before giving up (env CONVO_CONNECT_TIMEOUT; default 10).")
    var connectTimeoutFlag: Double?

    @Option(
        name: .customLong("master-key-file"),
        help: "A file of base64 master keys, one per line, the current one first (env CONVO_MASTER_KEY_FILE, or the keys themselves in CONVO_MASTER_KEY).")
    var masterKeyFileFlag: String?

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// The master keys of visitors' data keys, when given: `--master-key-file`, else `CONVO_MASTER_KEY_FILE`,
    /// else `CONVO_MASTER_KEY`.
    ///
    /// - Throws: `ValidationError` for a file that cannot be read or keys that are not valid.
    func keyring() throws -> MasterKeyring? {
        let text: String
        if let path = masterKeyFileFlag ?? environment["CONVO_MASTER_KEY_FILE"] {
            do {
                text = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw ValidationError("cannot read the master key file \(path)")
            }
        } else if let keys = environment["CONVO_MASTER_KEY"] {
            text = keys
        } else {
            return nil
        }
        do {
            return try MasterKeyring(parsing: text)
        } catch {
            throw ValidationError(Self.message(of: error))
        }
    }

    /// The master keys, required: for what stores or reads personal data.
    func requiredKeyring() throws -> MasterKeyring {
        guard let keyring = try keyring() else {
            throw ValidationError(
                "a master key is needed: set CONVO_MASTER_KEY or --master-key-file (make one with `convo encryption generate-key`)")
        }
        return keyring
    }

    func databaseURL() throws -> DatabaseURL {
        try DatabaseURL(databaseURLFlag ?? environment["CONVO_DATABASE_URL"] ?? Self.defaultDatabaseURL)
    }

    func redisURL() -> String {
        redisURLFlag ?? environment["CONVO_REDIS_URL"] ?? Self.defaultRedisURL
    }

    func connectTimeout() throws -> Duration {
        var raw = connectTimeoutFlag ?? 10
        if connectTimeoutFlag == nil, let variable = environment["CONVO_CONNECT_TIMEOUT"] {
            guard let seconds = Double(variable) else { throw ValidationError("CONVO_CONNECT_TIMEOUT=\(variable) is not a number of seconds") }
            raw = seconds
        }
        guard raw > 0, raw <= 3600 else { throw ValidationError("the connect timeout is between 0 and 3600 seconds") }
        return .milliseconds(Int64(raw * 1000))
    }

    func logLevel() throws -> Logger.Level {
        let raw = logLevelFlag ?? environment["CONVO_LOG_LEVEL"] ?? "info"
        guard let level = Logger.Level(rawValue: raw) else { throw ValidationError("unknown log level '\(raw)'") }
        return level
    }

    func validate() throws {
        _ = try logLevel()
        _ = try connectTimeout()
        _ = try keyring()
        do {
            _ = try databaseURL()
            _ = try RedisConfiguration(url: redisURL())
        } catch {
            throw ValidationError(Self.message(of: error))
        }
    }

    /// The root logger: only the executable creates one.
    func makeLogger(label: String = "convo") throws -> Logger {
        var logger = Logger(label: label) { DeferredMetadataLogHandler(label: $0) }
        logger.logLevel = try logLevel()
        return logger
    }

    /// A human sentence for an error, without type names.
    static func message(of error: any Error) -> String {
        switch error {
        case let error as EventStoreError: return error.message
        case let error as ResponderError: return error.message
        case let error as ProjectionError: return error.message
        case let error as AuditError: return error.message
        case let error as WebhookError: return error.message
        default: return "\(error)"
        }
    }
}

/// A command that failed for a reason the operator can act on: printed as `error: …`, exit status 1.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
    init(_ error: any Error) { self.description = GlobalOptions.message(of: error) }
}
