import ArgumentParser
import AsyncHTTPClient
import EventStore
import Foundation
import PostgresNIO

/// Bursts of visitor messages sent by wrk to a real `convo serve` (release build), first one that only
/// ingests (no responder, no projections), then one that also answers (responder with the rule provider,
/// projections), each on a database of its own.
///
/// Both clocks start when a burst does: ingest ends when wrk has every message acknowledged (200/202, its
/// id in the answer), answering when PostgreSQL shows every conversation of the burst answered (the
/// responder's `MessagesProcessed` up to its last message; checked every 500 ms). Issue 18's targets: the
/// burst answered within 2× the time its ingest took, and answering at ≥ 0.4× the rate of ingest alone.
struct AnsweringBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "answering", abstract: "a burst of messages over many visitors: ingest time against the time until all are answered.")

    @Option(help: "Messages in the burst.") var messages: Int = 10_000
    @Option(help: "Visitors (one conversation each) the burst is spread over.") var visitors: Int = 1000
    @Option(help: "Concurrent connections of the load generator.") var concurrency: Int = 64
    @Option(help: "Bursts; each goes to new conversations.") var rounds: Int = 2
    @Option(help: "The most seconds a burst may take to be answered.") var timeout: Int = 600
    @Option(help: "More arguments of the answering server's convo serve (to tell its parts apart: --no-projections).") var serveArguments: [String] = []
    @Option(help: "The answering tenant's quiet period (answerAfterQuietSeconds): 0 answers each message at once.") var quietSeconds: Double = 0
    @Flag(help: "Exit 1 when a target is missed.") var check = false

    static let timeTarget = 2.0
    static let rateTarget = 0.4

    func validate() throws {
        guard visitors >= 1, messages >= visitors, messages % (2 * visitors) == 0 else {
            throw ValidationError("--messages is a multiple of 2 × --visitors (every visitor sends as many)")
        }
        guard quietSeconds >= 0, quietSeconds <= 30 else { throw ValidationError("--quiet-seconds is between 0 and 30") }
        guard concurrency >= 2, rounds >= 1, timeout >= 1 else { throw ValidationError("--concurrency ≥ 2, --rounds ≥ 1, --timeout ≥ 1") }
    }

    func run() async throws {
        let binary = ProcessInfo.processInfo.environment["CONVO_BINARY"]
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../.build/release/convo").standardized.path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw ValidationError("no convo binary at \(binary): build it with swift build -c release --product convo (./Benchmarks/run answering does)")
        }
        // Ingest alone first (a server without responder or projections, a database of its own), then the same
        // bursts to a full server: the answering rate is compared with what ingest alone takes.
        let alone = try await bursts(binary, serveArguments: ["--no-responder", "--no-projections"], answered: false)
        let full = try await bursts(binary, serveArguments: serveArguments, answered: true, quietSeconds: quietSeconds)
        var missed: [String] = []
        let ingestAlone = alone.map(\.ingest).reduce(0, +)
        let ingestFull = full.map(\.ingest).reduce(0, +)
        let answering = full.compactMap(\.answered).reduce(0, +)
        if full.contains(where: { $0.answered == nil }) || full.isEmpty {
            missed.append("answering")
        } else {
            let timeRatio = answering / ingestFull
            let rateRatio = ingestAlone / answering
            report(
                "burst answered within \(timeRatio.formatted(2))× the time its ingest took (target ≤ \(Self.timeTarget)) \(timeRatio <= Self.timeTarget ? "ok" : "MISSED"); "
                    + "answering at \((Double(messages * rounds) / answering).formatted(0)) msg/s, \(rateRatio.formatted(2))× the rate of ingest alone, \((Double(messages * rounds) / ingestAlone).formatted(0)) msg/s (target ≥ \(Self.rateTarget)) \(rateRatio >= Self.rateTarget ? "ok" : "MISSED")"
            )
            // What the events alone cost: PostgreSQL's share of the machine per stored event in ingest alone
            // (one-event appends in group commits), times the events an answered message stores, leaves
            // this much of the machine's time per message before convo does anything.
            let stored = Double(full.map(\.events).reduce(0, +)) / Double(messages * rounds)
            let perEvent = alone.map(\.cpu.rest).reduce(0, +) / Double(max(1, alone.map(\.events).reduce(0, +)))
            let cores = Double(ProcessInfo.processInfo.activeProcessorCount)
            let ceiling = cores / (stored * perEvent)
            report(
                "events stored per answered message: \(stored.formatted(1)); PostgreSQL and the rest per stored event in ingest alone: \((perEvent * 1e6).formatted(0)) µs; "
                    + "at that cost the events alone allow at most \(ceiling.formatted(0)) msg/s on \(Int(cores)) cores, \((ceiling / (Double(messages * rounds) / ingestAlone)).formatted(2))× the rate of ingest alone")
            if timeRatio > Self.timeTarget { missed.append("burst time") }
            if rateRatio < Self.rateTarget { missed.append("answering rate") }
        }
        if check && !missed.isEmpty { throw ExitCode(1) }
    }

    struct Round {
        /// Seconds until wrk had every message acknowledged.
        var ingest: Double
        /// Seconds until every conversation was answered (`nil`: not within the timeout, or not asked).
        var answered: Double?
        /// Events stored by the end of the round (messages, conversation starts, the responder's).
        var events: Int
        /// What the round cost, from its start until it was answered (or ingested).
        var cpu: IngestBaselines.CPU
    }

    /// `rounds` bursts to a `convo serve` with `serveArguments`, on a database made for them.
    private func bursts(_ binary: String, serveArguments: [String], answered wanted: Bool, quietSeconds: Double = 0) async throws -> [Round] {
        let (messages, visitors, concurrency, rounds, timeout) = (messages, visitors, concurrency, rounds, timeout)
        return try await BenchDatabase.withDatabase(maximumConnections: 2) { client, url in
            let env = IngestBenchmark.environment(url)
            let secret = try IngestBenchmark.makeKey(binary, scopes: "ingest", env)
            if quietSeconds > 0 {
                _ = try IngestBenchmark.run(binary, ["settings", "--tenant", "bench", "--answer-after-quiet", "\(quietSeconds)"], env)
            }
            let (server, port) = try IngestBenchmark.serve(binary, serveArguments, env)
            // Waited for, so its CPU time is counted (as an exited child's) before the next measure starts, not in it.
            defer {
                server.terminate()
                server.waitUntilExit()
            }
            let base = "http://127.0.0.1:\(port)"
            try await IngestBenchmark.waitUntilUp(HTTPClient.shared, base)
            report(
                "on \(url) (created for this run, dropped after): convo serve \(wanted ? "(rule provider) " : "")\(serveArguments.joined(separator: " "))\(quietSeconds > 0 ? ", the tenant's quiet period \(quietSeconds) s" : ""), bursts of \(messages) messages over \(visitors) visitors from wrk, \(concurrency) connections"
            )
            var results: [Round] = []
            var tailBefore = try await Self.tailCounters(base)
            for round in 0..<rounds {
                let tag = "b\(round)"
                let clock = ContinuousClock()
                let after = try await Self.head(client)
                let marks = FileManager.default.temporaryDirectory.appendingPathComponent("convo-burst-\(UUID().uuidString)")
                try FileManager.default.createDirectory(at: marks, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(at: marks) }
                let before = IngestBaselines.CPU.now(server: server.processIdentifier)
                let start = clock.now
                let wrk = try Self.startBurst(base, secret, tag: tag, messages: messages, visitors: visitors, concurrency: concurrency, timeout: timeout, marks: marks.path)
                defer { if wrk.isRunning { kill(wrk.processIdentifier, SIGKILL) } }
                var acknowledgedAt: ContinuousClock.Instant?
                var answeredAt: ContinuousClock.Instant?
                var progress: AnsweringProgress?
                var checks: [Duration] = []
                while clock.now - start < .seconds(timeout) {
                    if acknowledgedAt == nil {
                        // Each wrk thread leaves a mark once all its messages were acknowledged.
                        let done = (1...2).allSatisfy { FileManager.default.fileExists(atPath: marks.appendingPathComponent("done-\($0)").path) }
                        if done {
                            acknowledgedAt = clock.now
                            // SIGKILL: wrk inherits this process's blocked signals, SIGTERM among them.
                            kill(wrk.processIdentifier, SIGKILL)
                            wrk.waitUntilExit()
                            if !wanted { break }
                        }
                        try await Task.sleep(for: .milliseconds(10))
                        continue
                    }
                    // Every 20 ms, reading only the processing records stored since the last look (a few hundred
                    // rows through the tenant's (tenant, type, position) index); how long the looks took is printed.
                    let checked = clock.now
                    if progress == nil { progress = try await AnsweringProgress(client, after: after) }
                    let open = try await progress!.unanswered(client)
                    checks.append(clock.now - checked)
                    if open == 0 {
                        answeredAt = clock.now
                        break
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
                let cpu = IngestBaselines.CPU.now(server: server.processIdentifier) - before
                // The looks' answer checked once against every event of the burst.
                if answeredAt != nil, try await Self.unanswered(client, after: after) != 0 {
                    throw ValidationError("the burst looked answered, but conversations are left unanswered")
                }
                guard let acknowledgedAt else {
                    report("round \(round + 1): NOT all \(messages) messages acknowledged within \(timeout) s")
                    throw ValidationError("the burst was not ingested")
                }
                let stored = try await Self.stored(client, after: after)
                guard stored == messages else { throw ValidationError("the burst stored \(stored) of \(messages) messages") }
                let ingest = (acknowledgedAt - start).seconds
                var line = "round \(round + 1): ingest \(ingest.formatted(2)) s (\((Double(messages) / ingest).formatted(0)) msg/s)"
                if wanted {
                    if let answeredAt {
                        let answering = (answeredAt - start).seconds
                        line += ", all answered after \(answering.formatted(2)) s (\((Double(messages) / answering).formatted(0)) msg/s)"
                    } else {
                        line += ", NOT all answered within \(timeout) s"
                    }
                }
                if !checks.isEmpty {
                    line += " (\(checks.count) looks of \(((checks.reduce(.zero, +) / checks.count).seconds * 1000).formatted(1)) ms on average)"
                }
                line += "; " + cpu.perItem(messages)
                let tail = try await Self.tailCounters(base)
                if tail.reads > 0 || tail.shared > 0 {
                    line += "; latest events read \(tail.reads - tailBefore.reads) times for the server's followers, \(tail.shared - tailBefore.shared) pages shared"
                }
                tailBefore = tail
                report(line)
                let events = try await Self.events(client, after: after)
                results.append(Round(ingest: ingest, answered: answeredAt.map { ($0 - start).seconds }, events: events, cpu: cpu))
            }
            return results
        }
    }

    /// The server's counters of its shared tail of events (`/metrics`): reads made for its followers of all
    /// tenants' events, and pages they took from it instead of reading.
    static func tailCounters(_ base: String) async throws -> (reads: Int, shared: Int) {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: "\(base)/metrics"), timeout: .seconds(10))
        let text = String(buffer: try await response.body.collect(upTo: 16 << 20))
        func value(_ name: String) -> Int {
            for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
                return Int(Double(line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces)) ?? 0)
            }
            return 0
        }
        return (value("convo_eventstore_tail_reads"), value("convo_eventstore_tail_shared"))
    }

    /// The store's head position.
    static func head(_ client: PostgresClient) async throws -> Int64 {
        var head: Int64 = 0
        for try await value in try await client.query("SELECT coalesce(max(global_position), 0) FROM events").decode(Int64.self) { head = value }
        return head
    }

    /// Events stored after `after`.
    static func events(_ client: PostgresClient, after: Int64) async throws -> Int {
        var count = 0
        for try await value in try await client.query("SELECT count(*) FROM events WHERE global_position > \(after)").decode(Int.self) { count = value }
        return count
    }

    /// Visitor messages stored after `after` (the burst's, and nothing else writes them meanwhile).
    static func stored(_ client: PostgresClient, after: Int64) async throws -> Int {
        let rows = try await client.query(
            "SELECT count(*) FROM events WHERE global_position > \(after) AND event_type = 'VisitorMessageReceived'")
        var count = 0
        for try await value in rows.decode(Int.self) { count = value }
        return count
    }

    /// Whether a burst is answered, followed with little reading: the burst's conversations and their last
    /// message are read once (the burst is all stored), then each look reads only the `MessagesProcessed`
    /// records stored since the last, up to what no open transaction can still add below (as convo's own
    /// readers do: positions come from transaction ids, so a record can commit after one with a higher position).
    struct AnsweringProgress {
        private var last: [String: Int64] = [:]
        private var done: [String: Int64] = [:]
        private var cursor: Int64

        init(_ client: PostgresClient, after: Int64) async throws {
            cursor = after
            let rows = try await client.query(
                """
                SELECT substr(stream_name, 10), max(stream_version) FROM events
                WHERE tenant_id = 'bench' AND event_type = 'VisitorMessageReceived' AND global_position > \(after) GROUP BY 1
                """)
            for try await (conversation, version) in rows.decode((String, Int64).self) { last[conversation] = version }
        }

        /// How many of the burst's conversations have a message not yet processed.
        mutating func unanswered(_ client: PostgresClient) async throws -> Int {
            let rows = try await client.query(
                """
                SELECT global_position, substr(stream_name, 10), (data ->> 'upToVersion')::bigint FROM events
                WHERE tenant_id = 'bench' AND event_type = 'MessagesProcessed' AND global_position > \(cursor)
                  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY global_position
                """)
            for try await (position, conversation, upTo) in rows.decode((Int64, String, Int64).self) {
                cursor = position
                done[conversation] = max(done[conversation] ?? 0, upTo)
            }
            return last.count { (done[$0.key] ?? 0) < $0.value }
        }
    }

    /// Conversations of the burst (the visitor messages after `after`) whose last message the responder
    /// has not processed yet (no `MessagesProcessed` up to it in the conversation's workflow stream).
    static func unanswered(_ client: PostgresClient, after: Int64) async throws -> Int {
        let rows = try await client.query(
            """
            WITH m AS (
                SELECT substr(stream_name, 10) AS conversation, max(stream_version) AS last FROM events
                WHERE global_position > \(after) AND event_type = 'VisitorMessageReceived' GROUP BY 1
            ), w AS (
                SELECT substr(stream_name, 10) AS conversation, max((data ->> 'upToVersion')::bigint) AS done FROM events
                WHERE global_position > \(after) AND event_type = 'MessagesProcessed' GROUP BY 1
            )
            SELECT count(*) FROM m LEFT JOIN w USING (conversation) WHERE w.done IS NULL OR w.done < m.last
            """)
        var open = 0
        for try await count in rows.decode(Int.self) { open = count }
        return open
    }

    /// The burst script: thread t sends its half of the messages (message k of the burst to conversation
    /// k mod visitors). A message counts once the server acknowledged it (its id in a 200 or 202 answer).
    /// After the last new one, each connection waits 500 ms between requests, and sends again one not yet
    /// acknowledged (a retry with the same id), or asks `/healthz`, until the benchmark stops wrk.
    static let burstScript = #"""
        local threads = 0
        function setup(thread)
          threads = threads + 1
          thread:set("number", threads)
        end
        function init(args)
          key, tag, quota, visitors, marks = args[1], args[2], tonumber(args[3]), tonumber(args[4]), args[5]
          sent, acked, waiting = 0, 0, {}
          texts = {"where is my order?", "thanks, and the price?", "does shipping cost extra?"}
        end
        local function message(k)
          local c = k % visitors
          local body = '{"visitorUid": "v-' .. c .. '", "messageId": "' .. tag .. '-' .. k .. '", "text": "' .. texts[math.floor(k / visitors) % 3 + 1] .. '"}'
          return wrk.format("POST", "/v1/conversations/" .. tag .. "-" .. c .. "/messages",
            {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body)
        end
        function request()
          if sent < quota then
            local k = sent * 2 + number - 1
            sent = sent + 1
            waiting[k] = true
            return message(k)
          end
          local k = next(waiting)
          if k then return message(k) end
          return wrk.format("GET", "/healthz")
        end
        function delay()
          if sent >= quota then return 500 end
          return 0
        end
        function response(status, headers, body)
          if status == 200 or status == 202 then
            local k = tonumber(string.match(body, '"messageId":"[^"]*%-(%d+)"'))
            if k and waiting[k] then
              waiting[k] = nil
              acked = acked + 1
              if acked == quota then io.open(marks .. "/done-" .. number, "w"):close() end
            end
          end
        end
        """#

    /// Starts wrk sending a burst; each thread makes the file `done-N` in `marks` once every message it sent
    /// was acknowledged, and the caller stops wrk then (wrk itself runs for its whole duration).
    static func startBurst(
        _ base: String, _ key: String, tag: String, messages: Int, visitors: Int, concurrency: Int, timeout: Int, marks: String
    ) throws -> Process {
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("convo-burst-\(tag)-\(UUID().uuidString).lua")
        try Data(burstScript.utf8).write(to: script)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "wrk", "-t2", "-c\(concurrency)", "-d\(timeout)s", "--timeout", "30s", "-s", script.path, base, "--", key, tag, "\(messages / 2)", "\(visitors)", marks,
        ]
        process.standardOutput = FileHandle.nullDevice
        process.terminationHandler = { _ in try? FileManager.default.removeItem(at: script) }
        try process.run()
        return process
    }
}
