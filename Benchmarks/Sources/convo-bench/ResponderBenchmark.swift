import ArgumentParser
import EventStore
import Foundation
import Responder
import SharedTypes

/// The visitor lock against raw Redis commands, and end-to-end processing with the lock against the same
/// run without it, in one process.
struct ResponderBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "responder", abstract: "visitor lock and end-to-end processing.")

    @Option(help: "Lock pairs per round and side.") var pairs: Int = 5000
    @Option(help: "Rounds; the sides alternate.") var rounds: Int = 2
    @Option(help: "Messages per side for the end-to-end cases (at least 2 per visitor).") var messages: Int = 2000
    @Flag(help: "Exit 1 when a ratio misses its target.") var check = false

    static let lockTarget = 0.7
    static let lockCostTarget = 0.15

    func run() async throws {
        let redisURL = ProcessInfo.processInfo.environment["CONVO_REDIS_URL"] ?? "redis://127.0.0.1:56379"
        var missed: [String] = []
        // One connection: "over the same connection".
        let single = RedisClient(configuration: try RedisConfiguration(url: redisURL, connections: 1))
        let (ours, raw) = try await lockCase(single)
        let lockRatio = ours / raw
        if lockRatio < Self.lockTarget { missed.append("lock") }
        report(
            "lock    acquire+release  ours \(ours.formatted(0)) pairs/s  raw SET NX PX + EVAL \(raw.formatted(0)) pairs/s  ratio \(lockRatio.formatted(2))  (target ≥ \(Self.lockTarget)) \(lockRatio >= Self.lockTarget ? "ok" : "MISSED")"
        )

        let more = try await BenchDatabase.withDatabase(maximumConnections: 40) { client, url in
            report("end-to-end on \(url) (created for this run, dropped after), rule provider")
            let redis = RedisClient(configuration: try RedisConfiguration(url: redisURL, connections: 8))
            let store = PostgresEventStore(client: client, keyring: BenchDatabase.keyring, logger: BenchDatabase.logger)
            let workflows = WorkflowRepository(client: client, logger: BenchDatabase.logger)
            var missed: [String] = []
            for visitors in [1, 100, 1000] {
                var locked = 0.0
                var unlocked = 0.0
                for round in 0..<rounds {
                    for locking in [false, true] {
                        let processor = ConversationProcessor(
                            store: store, redis: redis, workflows: workflows, configuration: .init(locking: locking), logger: BenchDatabase.logger)
                        let rate = try await endToEnd(
                            processor: processor, store: store, visitors: visitors, tag: "r\(round)\(locking ? "l" : "u")v\(visitors)")
                        if locking { locked += rate } else { unlocked += rate }
                    }
                }
                let cost = 1 - locked / unlocked
                if cost > Self.lockCostTarget { missed.append("end-to-end \(visitors)") }
                report(
                    "process visitors=\(visitors.padded(4))  with lock \((locked / Double(rounds)).formatted(0)) msg/s  without \((unlocked / Double(rounds)).formatted(0)) msg/s  lock costs \((cost * 100).formatted(1)) %  (target ≤ \(Int(Self.lockCostTarget * 100)) %) \(cost <= Self.lockCostTarget ? "ok" : "MISSED")"
                )
            }
            return missed
        }
        missed += more
        if check && !missed.isEmpty { throw ExitCode(1) }
    }

    private func lockCase(_ redis: RedisClient) async throws -> (ours: Double, raw: Double) {
        let lock = VisitorLock(redis: redis, ttl: .seconds(30))
        let release = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
        let clock = ContinuousClock()
        var oursTime = Duration.zero
        var rawTime = Duration.zero
        for round in 0..<rounds {
            var start = clock.now
            for index in 0..<pairs {
                let key = "bench:raw:\(round):\(index % 64)"
                let token = UUID().uuidString
                _ = try await redis.send("SET", key, token, "NX", "PX", "30000")
                _ = try await redis.send("EVAL", release, "1", key, token)
            }
            rawTime += clock.now - start
            start = clock.now
            let tenant = TenantID(rawValue: "bench")!
            for index in 0..<pairs {
                let visitor = VisitorUID(rawValue: "v\(round)-\(index % 64)")!
                guard let lease = try await lock.acquire(tenant: tenant, visitor: visitor) else { throw ValidationError("lock unexpectedly busy") }
                try await lock.release(lease)
            }
            oursTime += clock.now - start
        }
        let total = Double(pairs * rounds)
        return (total / oursTime.seconds, total / rawTime.seconds)
    }

    /// Every visitor sends its share of the messages one after another (ingest, then process), all
    /// visitors at once; returns messages processed per second.
    private func endToEnd(processor: ConversationProcessor, store: PostgresEventStore, visitors: Int, tag: String) async throws -> Double {
        let ingestor = MessageIngestor(store: store, logger: BenchDatabase.logger)
        let perVisitor = max(2, messages / visitors)
        let clock = ContinuousClock()
        let start = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for visitor in 0..<visitors {
                group.addTask {
                    let visitorUID = VisitorUID(rawValue: "\(tag)-v\(visitor)")!
                    let conversation = ConversationID(rawValue: "\(tag)-c\(visitor)")!
                    for index in 0..<perVisitor {
                        _ = try await ingestor.ingest(
                            IncomingMessage(
                                tenant: .default, conversationId: conversation, visitorUid: visitorUID, messageId: "m\(index)",
                                text: index % 3 == 0 ? "where is my order?" : "thanks, and the price?", sentAt: Date()))
                        try await processor.process(tenant: .default, visitor: visitorUID, conversation: conversation)
                    }
                }
            }
            try await group.waitForAll()
        }
        return Double(perVisitor * visitors) / (clock.now - start).seconds
    }
}
