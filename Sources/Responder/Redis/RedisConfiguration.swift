import Foundation

/// A Redis server's address.
public struct RedisEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { "\(host):\(port)" }

    /// `host:port` (or `[v6]:port`), as Redis writes it in `MOVED` and as the URL lists it.
    init?(_ text: Substring, defaultPort: Int) {
        var host = text
        var port = defaultPort
        if host.hasPrefix("["), let close = host.firstIndex(of: "]") {
            let rest = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if rest.hasPrefix(":") {
                guard let value = Int(rest.dropFirst()) else { return nil }
                port = value
            } else if !rest.isEmpty {
                return nil
            }
        } else if let colon = host.lastIndex(of: ":") {
            guard let value = Int(host[host.index(after: colon)...]) else { return nil }
            port = value
            host = host[..<colon]
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        self.init(host: String(host), port: port)
    }
}

/// How the Redis servers are arranged.
public enum RedisTopology: Sendable, Equatable {
    /// One server (`redis://`).
    case standalone
    /// A primary found through Sentinel (`redis+sentinel://`), followed across failovers.
    case sentinel(sentinels: [RedisEndpoint], primaryName: String)
    /// A Redis Cluster (`redis+cluster://`): keys routed by slot, `MOVED` and `ASK` followed.
    case cluster(seeds: [RedisEndpoint])
}

/// Where Redis is and how convo talks to it.
public struct RedisConfiguration: Sendable {
    /// The server (standalone), or the first seed node (cluster).
    public var host: String
    public var port: Int
    public var topology: RedisTopology
    /// Sent with `AUTH` on connect when set (to the data nodes, not to Sentinel).
    public var password: String?
    /// Selected with `SELECT` on connect. Default: 0 (the only one a cluster has).
    public var database: Int
    /// How many connections the client keeps (per node in a cluster); each has its own thread for hiredis'
    /// blocking calls. Default: 4.
    public var connections: Int
    /// How long a connect or a command may take before it fails. Default: 2 seconds.
    public var timeout: Duration

    public init(
        host: String = "127.0.0.1", port: Int = 6379, password: String? = nil, database: Int = 0, connections: Int = 4, timeout: Duration = .seconds(2),
        topology: RedisTopology = .standalone
    ) {
        self.host = host
        self.port = port
        self.password = password
        self.database = database
        self.connections = connections
        self.timeout = timeout
        self.topology = topology
    }

    /// Parses one of:
    /// - `redis://[:password@]host[:port][/database]`
    /// - `redis+sentinel://[:password@]host[:port][,host[:port]…]/primary-name[/database]` (Sentinel's port
    ///   defaults to 26379; the password is the data nodes')
    /// - `redis+cluster://[:password@]host[:port][,host[:port]…]` (seed nodes; database 0 only)
    ///
    /// - Throws: ``ResponderError`` with ``ResponderError/Code/invalidConfiguration`` (never echoing the password).
    public init(url: String, connections: Int = 4, timeout: Duration = .seconds(2)) throws {
        func invalid(_ message: String) -> ResponderError { ResponderError(code: .invalidConfiguration, message: message) }
        guard connections > 0 else { throw invalid("Redis needs at least one connection") }
        guard let schemeEnd = url.range(of: "://") else { throw invalid("a Redis URL looks like redis://host:port") }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        var rest = url[schemeEnd.upperBound...]
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                password = String(userInfo[userInfo.index(after: colon)...]).removingPercentEncoding
            }
        }
        let hostPart = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(hostPart.count).split(separator: "/", omittingEmptySubsequences: true)
        switch scheme {
        case "redis":
            guard !hostPart.contains(","), let endpoint = RedisEndpoint(hostPart, defaultPort: 6379) else {
                throw invalid("a Redis URL looks like redis://host:port")
            }
            guard path.count <= 1, path.allSatisfy({ Int($0) != nil }) else { throw invalid("the Redis URL's path is a database number") }
            self.init(
                host: endpoint.host, port: endpoint.port, password: password, database: path.first.flatMap { Int($0) } ?? 0, connections: connections,
                timeout: timeout)
        case "redis+sentinel":
            let sentinels = hostPart.split(separator: ",").map { RedisEndpoint($0, defaultPort: 26379) }
            guard !sentinels.isEmpty, sentinels.allSatisfy({ $0 != nil }) else {
                throw invalid("a Sentinel URL looks like redis+sentinel://host:26379,host:26379/primary-name")
            }
            guard let name = path.first, path.count <= 2, path.dropFirst().allSatisfy({ Int($0) != nil }) else {
                throw invalid("a Sentinel URL names the primary: redis+sentinel://host:26379/primary-name[/database]")
            }
            let first = sentinels[0]!
            self.init(
                host: first.host, port: first.port, password: password, database: path.dropFirst().first.flatMap { Int($0) } ?? 0,
                connections: connections, timeout: timeout, topology: .sentinel(sentinels: sentinels.map { $0! }, primaryName: String(name)))
        case "redis+cluster":
            let seeds = hostPart.split(separator: ",").map { RedisEndpoint($0, defaultPort: 6379) }
            guard !seeds.isEmpty, seeds.allSatisfy({ $0 != nil }) else {
                throw invalid("a Cluster URL looks like redis+cluster://host:6379,host:6379")
            }
            guard path.isEmpty else { throw invalid("a Redis Cluster has only database 0: the Cluster URL has no path") }
            let first = seeds[0]!
            self.init(
                host: first.host, port: first.port, password: password, connections: connections, timeout: timeout,
                topology: .cluster(seeds: seeds.map { $0! }))
        default:
            throw invalid("a Redis URL begins with redis://, redis+sentinel:// or redis+cluster://")
        }
    }

    /// The server a standalone client talks to.
    var endpoint: RedisEndpoint { RedisEndpoint(host: host, port: port) }
}
