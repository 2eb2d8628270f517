import ArgumentParser
import Audit
import EventStore
import Foundation
import PostgresNIO
import SharedTypes

/// The audit-trail queries on a large store (by default 1,000,000 events over 10,000 conversations, with
/// the indexes of the migrations): each query's latency over many runs with random arguments, its 50th, 95th
/// and 99th percentile against the target p95, and, for scale, a raw primary-key read of one conversation's
/// two streams in the same run.
struct AuditBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "audit", abstract: "audit-trail query latency on a large store (p95 target).")

    @Option(help: "Events in the store.") var events: Int = 1_000_000
    @Option(help: "Conversations the events are spread over.") var conversations: Int = 10_000
    @Option(help: "Recorded conflicts.") var conflicts: Int = 2_000
    @Option(help: "Seconds between two conversations' starts (26: the store spans three days).") var spacing: Int = 26
    @Option(help: "Runs per query.") var runs: Int = 300
    @Option(help: "Concurrent callers per query.") var concurrency: Int = 1
    @Flag(help: "Exit 1 when a target is missed.") var check = false

    static let targetMilliseconds = 50.0

    func run() async throws {
        try await BenchDatabase.withDatabase(maximumConnections: max(4, concurrency + 2)) { client, _ in
            let tenant = TenantID("bench")
            let turns = max(1, (events / conversations - 2) / 7)
            let started = ContinuousClock.now
            try await client.query(ProjectionBenchmark.generate(conversations: conversations, turns: turns, startSpacing: spacing), logger: BenchDatabase.logger)
            try await client.query(Self.generateConflicts(conflicts, conversations: conversations), logger: BenchDatabase.logger)
            try await client.query("VACUUM ANALYZE events", logger: BenchDatabase.logger)
            let store = PostgresEventStore(client: client, keyring: BenchDatabase.keyring, logger: BenchDatabase.logger)
            let total = try await store.countEvents()
            report(
                "audit: \(total) events over \(conversations) conversations (\(turns) turns each) and \(conflicts) conflicts, generated in \((ContinuousClock.now - started).seconds.formatted(1)) s"
            )
            let trail = AuditTrail(store: store, logger: BenchDatabase.logger)
            let replies = try await Self.sampleReplies(client, count: runs)
            let middle = try await Self.middlePosition(client)
            let conversations = self.conversations
            @Sendable func conversation() -> ConversationID { ConversationID(rawValue: "c\(Int.random(in: 1...conversations))")! }
            @Sendable func filter(_ change: (inout AuditFilter) -> Void) -> AuditFilter {
                var filter = AuditFilter()
                change(&filter)
                return filter
            }
            let base = Date(timeIntervalSince1970: 1_795_341_600)  // 2026-11-22 10:00 UTC, where the generated times start
            let span = conversations * spacing + turns * 60
            /// A random window of `seconds` inside the generated span.
            @Sendable func window(_ filter: inout AuditFilter, seconds: Int) {
                let start = base.addingTimeInterval(Double(Int.random(in: 0..<max(1, span - seconds))))
                filter.from = start
                filter.to = start.addingTimeInterval(Double(seconds))
            }

            let runs = self.runs
            let concurrency = self.concurrency
            var missed = false
            func measure(_ name: String, _ body: @escaping @Sendable () async throws -> Int) async throws {
                _ = try await body()  // warm
                let (latencies, rows) = try await Self.latencies(runs: runs, concurrency: concurrency, body)
                let sorted = latencies.sorted()
                func percentile(_ p: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] * 1000 }
                let p95 = percentile(0.95)
                let ok = p95 < Self.targetMilliseconds
                if !ok && !name.hasPrefix("raw") { missed = true }
                report(
                    "\(name.padding(toLength: 44, withPad: " ", startingAt: 0)) p50 \(percentile(0.5).formatted(2)) ms  p95 \(p95.formatted(2)) ms  p99 \(percentile(0.99).formatted(2)) ms  rows/query \(rows / runs)"
                        + (name.hasPrefix("raw") ? "  (baseline)" : "  (target p95 < \(Int(Self.targetMilliseconds)) ms) \(ok ? "ok" : "MISSED")"))
            }

            try await measure("raw read of a conversation's two streams") {
                let c = conversation()
                var count = 0
                let rows = try await client.query(
                    """
                    SELECT global_position, data, metadata FROM events
                    WHERE tenant_id = 'bench' AND stream_name IN (\("messages-" + c.rawValue), \("workflow-" + c.rawValue)) ORDER BY global_position
                    """)
                for try await _ in rows { count += 1 }
                return count
            }
            try await measure("workflow-state history") { try await trail.workflowHistory(conversation(), tenant: tenant).changes.count }
            try await measure("explain a reply") {
                let (id, c) = replies.randomElement()!
                return try await trail.explain(id, in: c, tenant: tenant).walk.count
            }
            let searches: [(String, @Sendable () -> AuditFilter)] = [
                ("search: conversation", { filter { $0.conversation = conversation() } }),
                ("search: visitor", { filter { $0.visitor = VisitorUID(rawValue: "v\(Int.random(in: 1...conversations))") } }),
                ("search: actor System, first page", { filter { $0.actor = SystemActor.actorID } }),
                ("search: actor System, a middle page", { filter { $0.actor = SystemActor.actorID; $0.after = middle } }),
                ("search: actor System, newest first", { filter { $0.actor = SystemActor.actorID; $0.order = .descending } }),
                ("search: one visitor as actor", { filter { $0.actor = "visitor:v\(Int.random(in: 1...conversations))" } }),
                ("search: tool add_tag", { filter { $0.tool = "add_tag" } }),
                ("search: tool add_tag, a middle page", { filter { $0.tool = "add_tag"; $0.after = middle } }),
                ("search: type AssistantMessageSent", { filter { $0.types = [AssistantMessageSent.eventType] } }),
                ("search: type + conversation", { filter { $0.types = [ToolCalled.eventType]; $0.conversation = conversation() } }),
                ("search: a 5-minute window", { filter { window(&$0, seconds: 300) } }),
                ("search: a 1-hour window", { filter { window(&$0, seconds: 3600) } }),
                ("search: a 1-day window", { filter { window(&$0, seconds: 86400) } }),
                ("search: the last 12 hours (from only)", {
                    filter { $0.from = base.addingTimeInterval(Double(span - 43_200)) }
                }),
                ("search: type in a 1-hour window", { filter { $0.types = [ToolCalled.eventType]; window(&$0, seconds: 3600) } }),
            ]
            for (name, make) in searches {
                try await measure(name) { try await trail.events(tenant: tenant, filter: make()).events.count }
            }
            try await measure("conflicts, first page") { try await trail.conflicts(tenant: tenant).conflicts.count }
            try await measure("conflicts of a conversation") { try await trail.conflicts(tenant: tenant, filter: filter { $0.conversation = conversation() }).conflicts.count }
            if check && missed { throw ExitCode(1) }
        }
    }

    /// Runs `body` `runs` times from `concurrency` callers; the seconds of each run and the rows it returned.
    static func latencies(runs: Int, concurrency: Int, _ body: @escaping @Sendable () async throws -> Int) async throws -> ([Double], Int) {
        try await withThrowingTaskGroup(of: ([Double], Int).self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var latencies: [Double] = []
                    var rows = 0
                    for _ in stride(from: worker, to: runs, by: concurrency) {
                        let start = ContinuousClock.now
                        rows += try await body()
                        latencies.append((ContinuousClock.now - start).seconds)
                    }
                    return (latencies, rows)
                }
            }
            var all: [Double] = []
            var rows = 0
            for try await (part, count) in group {
                all += part
                rows += count
            }
            return (all, rows)
        }
    }

    /// `count` conflicts in `audit-bench`, about random conversations, after every generated event.
    static func generateConflicts(_ count: Int, conversations: Int) -> PostgresQuery {
        """
        INSERT INTO events (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
        SELECT (SELECT max(global_position) FROM events) + n, gen_random_uuid(), 'bench', 'audit-bench', n, 'ProcessingConflictDetected',
               jsonb_build_object('conversationId', 'c' || c, 'visitorUid', 'v' || c, 'stream', 'workflow-c' || c, 'expectedVersion', 3,
                                  'actualVersion', 4, 'lockToken', 'token-' || n, 'instance', 'bench-host:' || (n % 4)),
               jsonb_build_object('actorId', '00000000-0000-4000-8000-000000000001', 'lockToken', 'token-' || n),
               timestamptz '2026-11-22 10:00:00+00' + n * interval '1 second', sha256(convert_to('conflict/' || n, 'UTF8'))
        FROM generate_series(1, \(count)) AS n, LATERAL (SELECT 1 + (n * 7919) % \(conversations) AS c) AS pick
        """
    }

    static func sampleReplies(_ client: PostgresClient, count: Int) async throws -> [(UUID, ConversationID)] {
        let rows = try await client.query(
            """
            SELECT event_id, stream_name FROM events TABLESAMPLE SYSTEM (5)
            WHERE tenant_id = 'bench' AND event_type = 'AssistantMessageSent' LIMIT \(count)
            """)
        var replies: [(UUID, ConversationID)] = []
        for try await (id, stream) in rows.decode((UUID, String).self) {
            replies.append((id, ConversationID(rawValue: String(stream.dropFirst("workflow-".count)))!))
        }
        return replies
    }

    static func middlePosition(_ client: PostgresClient) async throws -> Int64 {
        for try await position in try await client.query("SELECT max(global_position) / 2 FROM events").decode(Int64.self) { return position }
        return 0
    }
}
