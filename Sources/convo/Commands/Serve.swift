import ArgumentParser
import EventStore
import Hummingbird
import PostgresNIO
import Responder

extension Convo {
    /// `convo serve`: the HTTP service.
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the HTTP service until SIGTERM or SIGINT.")

        @OptionGroup var options: GlobalOptions

        @Option(help: "Address to listen on (env CONVO_HOST; default 127.0.0.1).")
        var host: String?

        @Option(help: "Port to listen on (env CONVO_PORT; default 8080).")
        var port: Int?

        @Option(name: .customLong("database-pool-size"), help: "Most PostgreSQL connections (env CONVO_DATABASE_POOL_SIZE; default 20).")
        var databasePoolSize: Int?

        @Option(name: .customLong("redis-pool-size"), help: "Redis connections (env CONVO_REDIS_POOL_SIZE; default 4).")
        var redisPoolSize: Int?

        func validate() throws {
            for (name, value) in [("port", try resolvedPort()), ("database pool size", try resolved(databasePoolSize, "CONVO_DATABASE_POOL_SIZE", 20)),
                                  ("redis pool size", try resolved(redisPoolSize, "CONVO_REDIS_POOL_SIZE", 4))] where value < 1 || value > 65535 {
                throw ValidationError("\(name) \(value) is out of range")
            }
        }

        func run() async throws {
            let logger = try options.makeLogger()
            let url = try options.databaseURL()
            var postgres = url.clientConfiguration(maximumConnections: try resolved(databasePoolSize, "CONVO_DATABASE_POOL_SIZE", 20))
            postgres.options.connectTimeout = .seconds(5)
            let client = PostgresClient(configuration: postgres, backgroundLogger: backgroundLogger(logger))
            let redis = RedisClient(configuration: try RedisConfiguration(url: options.redisURL(), connections: try resolved(redisPoolSize, "CONVO_REDIS_POOL_SIZE", 4)))
            let provider: any AIProvider
            if let ai = try OpenAICompatibleProvider.Configuration.fromEnvironment(options.environment) {
                provider = OpenAICompatibleProvider(configuration: ai, logger: logger)
                logger.info("AI provider: OpenAI-compatible", metadata: ["convo.ai.base_url": "\(ai.baseURL)", "convo.ai.model": "\(ai.model)"])
            } else {
                provider = RuleProvider()
            }
            let lockTTL = try resolved(nil, "CONVO_LOCK_TTL_MS", 30_000)
            let context = ServerContext.make(
                client: client, redis: redis, provider: provider, processing: .init(lockTTL: .milliseconds(lockTTL)), logger: logger)
            let host = host ?? options.environment["CONVO_HOST"] ?? "127.0.0.1"
            let port = try resolvedPort()
            logger.info("convo serving", metadata: ["convo.http.address": "\(host):\(port)", "convo.database": "\(url)"])
            try await buildApplication(context, host: host, port: port, logger: logger).runService()
        }

        private func resolvedPort() throws -> Int { try resolved(port, "CONVO_PORT", 8080) }

        private func resolved(_ flag: Int?, _ variable: String, _ fallback: Int) throws -> Int {
            if let flag { return flag }
            guard let raw = options.environment[variable] else { return fallback }
            guard let value = Int(raw) else { throw ValidationError("\(variable)=\(raw) is not a number") }
            return value
        }
    }
}
