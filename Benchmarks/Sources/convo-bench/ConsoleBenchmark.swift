import ArgumentParser
import AsyncHTTPClient
import EventStore
import Foundation
import NIOCore
import NIOHTTP1
import PostgresNIO
import Projections
import SharedTypes

/// The console's speed against a real `convo serve` (release build): the inbox's first page
/// (`GET /v1/conversations`) with 100,000 conversations in the tenant, p50/p95/p99 over many runs, beside the
/// same page read by convo's code in this process and by raw SQL, and an HTTP round trip to `/healthz`, all
/// in the same run; then a conversation of 1,000 events opened in the console in headless Chromium, from the
/// navigation until every event is in its timeline and every message in its transcript.
struct ConsoleBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "the console: inbox p95 at 100,000 conversations, a 1,000-event conversation page rendered in headless Chromium.")

    @Option(help: "Conversations in the tenant.") var conversations: Int = 100_000
    @Option(help: "Runs per inbox query.") var runs: Int = 300
    @Option(help: "Events of the conversation the browser opens (at least).") var pageEvents: Int = 1000
    @Option(help: "Times the browser opens it.") var renders: Int = 5
    @Option(help: "The Python with Selenium (default: CONVO_TEST_PYTHON, else ../.convo/venv/bin/python).") var python: String?
    @Flag(help: "Exit 1 when a target is missed.") var check = false

    static let inboxTargetMilliseconds = 100.0
    static let renderTargetMilliseconds = 1000.0

    func run() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../..").standardized
        let binary = ProcessInfo.processInfo.environment["CONVO_BINARY"] ?? root.appendingPathComponent(".build/release/convo").path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw ValidationError("no convo binary at \(binary): build it with swift build -c release --product convo (./Benchmarks/run console does)")
        }
        let python = python ?? ProcessInfo.processInfo.environment["CONVO_TEST_PYTHON"] ?? root.appendingPathComponent(".convo/venv/bin/python").path
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw ValidationError("no Python with Selenium at \(python): ./scripts/test installs one under .convo/venv")
        }
        let script = root.appendingPathComponent("Benchmarks/console/render.py").path
        let (conversations, runs, pageEvents, renders) = (conversations, runs, pageEvents, renders)
        let missed = try await BenchDatabase.withDatabase(maximumConnections: 4) { client, url in
            let started = ContinuousClock.now
            try await client.query(ProjectionBenchmark.generate(conversations: conversations, turns: 1), logger: BenchDatabase.logger)
            try await client.query("VACUUM ANALYZE events", logger: BenchDatabase.logger)
            let store = PostgresEventStore(client: client, keyring: BenchDatabase.keyring, logger: BenchDatabase.logger)
            let total = try await store.countEvents()
            _ = try await ProjectionRebuilder(store: store, logger: BenchDatabase.logger).rebuild(ProjectionRegistry.standard, reason: "benchmark")
            try await client.query("ANALYZE", logger: BenchDatabase.logger)
            report("console: \(total) events over \(conversations) conversations, generated and folded in \((ContinuousClock.now - started).seconds.formatted(1)) s")

            let env = IngestBenchmark.environment(url)
            let key = try IngestBenchmark.makeKey(binary, scopes: "ingest,read,admin", env)
            let (server, port) = try IngestBenchmark.serve(binary, [], env)
            // Waited for, so its CPU time is counted (as an exited child's) before the next measure starts, not in it.
            defer {
                server.terminate()
                server.waitUntilExit()
            }
            let http = HTTPClient(eventLoopGroupProvider: .singleton)
            let base = "http://127.0.0.1:\(port)"
            do {
                try await IngestBenchmark.waitUntilUp(http, base)
                let missed = try await Self.measure(http, base: base, key: key, client: client, store: store, runs: runs, conversations: conversations)
                let rendered = try await Self.render(
                    http, base: base, key: key, client: client, python: python, script: script, events: pageEvents, renders: renders)
                try await http.shutdown()
                return missed || rendered
            } catch {
                try? await http.shutdown()
                throw error
            }
        }
        if check && missed { throw ExitCode(1) }
    }

    static func get(_ http: HTTPClient, _ url: String, key: String?) async throws -> (HTTPResponseStatus, ByteBuffer) {
        var request = HTTPClientRequest(url: url)
        if let key { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
        let response = try await http.execute(request, timeout: .seconds(30))
        return (response.status, try await response.body.collect(upTo: 16 << 20))
    }

    /// The inbox's queries over HTTP, with the baselines; whether a target was missed.
    static func measure(
        _ http: HTTPClient, base: String, key: String, client: PostgresClient, store: PostgresEventStore, runs: Int, conversations: Int
    ) async throws -> Bool {
        var missed = false
        func measure(_ name: String, target: Bool, _ body: @escaping @Sendable () async throws -> Int) async throws {
            _ = try await body()  // warm
            let (latencies, rows) = try await AuditBenchmark.latencies(runs: runs, concurrency: 1, body)
            let sorted = latencies.sorted()
            func percentile(_ p: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] * 1000 }
            let p95 = percentile(0.95)
            let ok = p95 < inboxTargetMilliseconds
            if target && !ok { missed = true }
            report(
                "\(name.padding(toLength: 52, withPad: " ", startingAt: 0)) p50 \(percentile(0.5).formatted(2)) ms  p95 \(p95.formatted(2)) ms  p99 \(percentile(0.99).formatted(2)) ms  rows \(rows / runs)"
                    + (target ? "  (target p95 < \(Int(inboxTargetMilliseconds)) ms) \(ok ? "ok" : "MISSED")" : "  (baseline)"))
        }
        @Sendable func inbox(_ query: String) async throws -> Int {
            let (status, body) = try await get(http, "\(base)/v1/conversations?\(query)", key: key)
            guard status == .ok else { throw ValidationError("GET /v1/conversations?\(query): \(status) \(String(buffer: body))") }
            return String(buffer: body).components(separatedBy: "\"conversationId\"").count - 1
        }
        let middle = try await ConversationsProjection().inbox(
            .init(limit: conversations / 2), tenant: TenantID("bench"), client: client, logger: BenchDatabase.logger
        ).next ?? 0

        try await measure("raw SQL: the first page (50) of the table", target: false) {
            var count = 0
            for try await _ in try await client.query(
                "SELECT to_jsonb(t) FROM conversations t WHERE tenant_id = 'bench' ORDER BY last_position DESC LIMIT 50", logger: BenchDatabase.logger)
            { count += 1 }
            return count
        }
        try await measure("HTTP round trip: GET /healthz", target: false) {
            _ = try await get(http, "\(base)/healthz", key: nil)
            return 0
        }
        try await measure("convo's inbox in this process: first page (50)", target: false) {
            try await ConversationsProjection().inbox(.init(limit: 50), tenant: TenantID("bench"), client: client, logger: BenchDatabase.logger).rows.count
        }
        try await measure("GET /v1/conversations?limit=50 (the first page)", target: true) { try await inbox("limit=50") }
        try await measure("GET …?status=open&limit=50", target: true) { try await inbox("status=open&limit=50") }
        try await measure("GET …?visitor=v<random>&limit=50 (search)", target: true) {
            try await inbox("visitor=v\(Int.random(in: 1...conversations))&limit=50")
        }
        try await measure("GET …?after=<the middle>&limit=50 (a deep page)", target: true) { try await inbox("after=\(middle)&limit=50") }
        try await measure("GET …?owner=people&limit=50 (none match)", target: true) { try await inbox("owner=people&limit=50") }
        return missed
    }

    /// Makes a conversation of at least `events` events through the server (visitor messages the responder
    /// answers), then opens it in the console `renders` times; whether the target was missed.
    static func render(
        _ http: HTTPClient, base: String, key: String, client: PostgresClient, python: String, script: String, events: Int, renders: Int
    ) async throws -> Bool {
        func count() async throws -> (events: Int, messages: Int, processed: Int) {
            var result = (0, 0, 0)
            for try await row in try await client.query(
                """
                SELECT count(*)::int, count(*) FILTER (WHERE event_type IN ('VisitorMessageReceived', 'AssistantMessageSent', 'AgentMessageSent'))::int,
                       count(*) FILTER (WHERE event_type = 'MessagesProcessed')::int
                FROM events WHERE tenant_id = 'bench' AND stream_name IN ('messages-big', 'workflow-big')
                """, logger: BenchDatabase.logger
            ).decode((Int, Int, Int).self) { result = row }
            return result
        }
        let started = ContinuousClock.now
        var sent = 0
        while try await count().events < events {
            sent += 1
            var request = HTTPClientRequest(url: "\(base)/v1/conversations/big/messages")
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer \(key)")
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: #"{"visitorUid": "v-big", "messageId": "m\#(sent)", "text": "is my order \#(sent) on its way?"}"#))
            let response = try await http.execute(request, timeout: .seconds(30))
            guard response.status == .accepted else { throw ValidationError("posting to the big conversation: \(response.status)") }
            // One message at a time, each answered before the next: a conversation as a visitor has it.
            let deadline = ContinuousClock.now + .seconds(30)
            while try await count().processed < sent {
                guard ContinuousClock.now < deadline else { throw ValidationError("message \(sent) was not answered within 30 s") }
                try await Task.sleep(for: .milliseconds(5))
            }
        }
        let (total, messages, _) = try await count()
        report("console: conversation 'big' has \(total) events and \(messages) messages (\(sent) visitor messages, answered in \((ContinuousClock.now - started).seconds.formatted(1)) s)")
        let output = try IngestBenchmark.run(
            python, [script],
            ["CONVO_RENDER_URL": base, "CONVO_RENDER_KEY": key, "CONVO_RENDER_CONVERSATION": "big", "CONVO_RENDER_EVENTS": "\(total)",
             "CONVO_RENDER_MESSAGES": "\(messages)", "CONVO_RENDER_RUNS": "\(renders)"])
        let times = output.split(separator: "\n").compactMap { line -> Double? in
            line.hasPrefix("render ms ") ? Double(line.dropFirst("render ms ".count)) : nil
        }.sorted()
        guard !times.isEmpty else { throw ValidationError("the render script measured nothing: \(output)") }
        let median = times[times.count / 2]
        let ok = median < renderTargetMilliseconds
        report(
            "console page of \(total) events in headless Chromium, navigation to every event and message shown: median \(median.formatted(0)) ms, "
                + "min \(times.first!.formatted(0)) ms, max \(times.last!.formatted(0)) ms over \(times.count) (target < \(Int(renderTargetMilliseconds)) ms) \(ok ? "ok" : "MISSED")")
        return !ok
    }
}
