import Foundation

/// Where Redis is and how convo talks to it.
public struct RedisConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Sent with `AUTH` on connect when set.
    public var password: String?
    /// Selected with `SELECT` on connect. Default: 0.
    public var database: Int
    /// How many connections the client keeps; each has its own thread for hiredis' blocking calls. Default: 4.
    public var connections: Int
    /// How long a connect or a command may take before it fails. Default: 2 seconds.
    public var timeout: Duration

    public init(host: String = "127.0.0.1", port: Int = 6379, password: String? = nil, database: Int = 0, connections: Int = 4, timeout: Duration = .seconds(2)) {
        self.host = host
        self.port = port
        self.password = password
        self.database = database
        self.connections = connections
        self.timeout = timeout
    }

    /// Parses `redis://[:password@]host[:port][/database]`.
    ///
    /// - Throws: ``ResponderError`` with ``ResponderError/Code/invalidConfiguration`` (never echoing the password).
    public init(url: String, connections: Int = 4, timeout: Duration = .seconds(2)) throws {
        guard let components = URLComponents(string: url), components.scheme == "redis", let host = components.host, !host.isEmpty else {
            throw ResponderError(code: .invalidConfiguration, message: "a Redis URL looks like redis://host:port")
        }
        let path = components.path.drop { $0 == "/" }
        guard path.isEmpty || Int(path) != nil else {
            throw ResponderError(code: .invalidConfiguration, message: "the Redis URL's path is a database number")
        }
        guard connections > 0 else { throw ResponderError(code: .invalidConfiguration, message: "Redis needs at least one connection") }
        self.init(
            host: host, port: components.port ?? 6379, password: components.password, database: Int(path) ?? 0,
            connections: connections, timeout: timeout)
    }
}
