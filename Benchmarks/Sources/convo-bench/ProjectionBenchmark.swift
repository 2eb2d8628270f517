import ArgumentParser
import EventStore
import Foundation
import PostgresNIO
import Projections
import SharedTypes
import Synchronization

/// Rebuilding `workflow_state` and `conversations` against reading the same rows raw with `COPY … TO
/// STDOUT` (psql, into /dev/null), in one run on one database; and the peak memory of the rebuild at two
/// store sizes, each in a process of its own (peak RSS only ever grows within a process).
struct ProjectionBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "projections", abstract: "projection rebuild vs raw COPY; memory at two sizes.")

    @Option(help: "Events at each size, comma-separated; each size runs in a child process.") var sizes: String = "100000,1000000"
    @Option(help: "Conversations the events are spread over.") var conversations: Int = 10_000
    @Option(help: "Run one size in this process (used by the parent).") var events: Int?
    @Flag(help: "Exit 1 when a target is missed.") var check = false
    @Option(help: "Rounds of raw read and rebuild at each size; the median ratio counts.") var rounds: Int = 3
    @Flag(help: "Also time reading alone, and reading and decoding, before the rebuild.") var diagnose = false

    static let rateTarget = 0.4
    static let rateTargetEvents: Int64 = 1_000_000
    /// Peak memory at the largest size may exceed the smallest's by at most this factor.
    static let memoryTarget = 1.5

    func run() async throws {
        if let events {
            try await runOne(events: events)
            return
        }
        let counts = sizes.split(separator: ",").compactMap { Int($0) }
        var peaks: [(Int, Double)] = []
        var missed = false
        for count in counts {
            let child = Process()
            child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
            child.arguments = ["projections", "--events", String(count), "--conversations", String(conversations), "--rounds", String(rounds)] + (diagnose ? ["--diagnose"] : [])
            let pipe = Pipe()
            child.standardOutput = pipe
            try child.run()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            child.waitUntilExit()
            FileHandle.standardOutput.write(Data(output.utf8))
            if output.contains("MISSED") { missed = true }
            if let line = output.split(separator: "\n").first(where: { $0.hasPrefix("peak-rss-mb ") }), let value = Double(line.split(separator: " ")[1]) {
                peaks.append((count, value))
            }
        }
        if let small = peaks.first, let large = peaks.last, peaks.count > 1 {
            let growth = large.1 / small.1
            let ok = growth <= Self.memoryTarget
            if !ok { missed = true }
            report(
                "memory  peak RSS \(small.1.formatted(1)) MB at \(small.0) events, \(large.1.formatted(1)) MB at \(large.0) events: ×\(growth.formatted(2)) (target ≤ \(Self.memoryTarget)) \(ok ? "ok" : "MISSED")")
        }
        if check && missed { throw ExitCode(1) }
    }

    private func runOne(events: Int) async throws {
        try await BenchDatabase.withDatabase(maximumConnections: 8) { client, url in
            let perConversation = max(9, events / conversations)
            let turns = (perConversation - 2) / 7
            let started = ContinuousClock.now
            try await client.query(Self.generate(conversations: conversations, turns: turns), logger: BenchDatabase.logger)
            // Settled before measuring: hint bits set and the visibility map written now, so no autovacuum of
            // the new rows runs during a round and no round pays for the first read of them.
            try await client.query("VACUUM (FREEZE, ANALYZE) events", logger: BenchDatabase.logger)
            let store = PostgresEventStore(client: client, keyring: BenchDatabase.keyring, logger: BenchDatabase.logger)
            let total = try await store.countEvents()
            report("projections: \(total) events over \(conversations) conversations (\(turns) turns each) generated in \((ContinuousClock.now - started).seconds.formatted(1)) s")

            if diagnose { try await Self.diagnose(store, total: total) }
            let rssBefore = Self.memory("VmRSS")
            // Rounds of raw read and rebuild, alternating, on the same rows: the median ratio is the figure
            // (one round on a 2-core machine varies by ±10%).
            var ratios: [Double] = []
            for round in 1...rounds {
                let rawSeconds = try Self.rawRead(url)
                let rawRate = Double(total) / rawSeconds
                let cpuBefore = Self.cpuSeconds()
                let rebuildStart = ContinuousClock.now
                // When the last event was folded: what follows is writing the rows and the swap.
                let folded = Mutex<ContinuousClock.Instant?>(nil)
                _ = try await ProjectionRebuilder(store: store, logger: BenchDatabase.logger).rebuild(
                    [WorkflowStateProjection(), ConversationsProjection()], reason: "benchmark"
                ) { progress in
                    if progress.events >= total { folded.withLock { $0 = $0 ?? ContinuousClock.now } }
                }
                let foldSeconds = ((folded.withLock { $0 } ?? ContinuousClock.now) - rebuildStart).seconds
                let rebuildSeconds = (ContinuousClock.now - rebuildStart).seconds
                let cpu = Self.cpuSeconds() - cpuBefore
                let rate = Double(total) / rebuildSeconds
                ratios.append(rate / rawRate)
                report(
                    "  round \(round): rebuild \(rate.formatted(0)) events/s (\(rebuildSeconds.formatted(1)) s: folding \(foldSeconds.formatted(1)) s, writing the rows and swapping \((rebuildSeconds - foldSeconds).formatted(1)) s; CPU of this process \(cpu.formatted(1)) s)  raw COPY \(rawRate.formatted(0)) events/s (\(rawSeconds.formatted(1)) s)  ratio \((rate / rawRate).formatted(2))"
                )
            }
            let ratio = ratios.sorted()[ratios.count / 2]
            // The target is set for a store of a million events; a smaller run (there for the memory
            // figure) pays the writing of the same 20,000 rows over fewer events, and is only reported.
            let verdict = total < Self.rateTargetEvents ? "(the target is for \(Self.rateTargetEvents) events)" : "(target ≥ \(Self.rateTarget)) \(ratio >= Self.rateTarget ? "ok" : "MISSED")"
            report(
                "rebuild workflow_state+conversations  median ratio to raw COPY \(ratio.formatted(2)) over \(rounds) rounds (range \(ratios.min()!.formatted(2))–\(ratios.max()!.formatted(2)))  \(verdict)"
            )
            report("rss before rebuild \(rssBefore.formatted(1)) MB")
            report("peak-rss-mb \(Self.memory("VmHWM").formatted(1))")
        }
    }

    /// Seconds to read every event raw, in position order: `COPY … TO STDOUT` through psql into /dev/null.
    private static func rawRead(_ url: DatabaseURL) throws -> Double {
        let start = ContinuousClock.now
        let psql = Process()
        psql.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        psql.arguments = [
            "psql", "-X", "-q", "-h", url.host, "-p", String(url.port), "-U", url.username, "-d", url.database, "-c",
            "COPY (SELECT global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at FROM events ORDER BY global_position) TO STDOUT",
        ]
        psql.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try psql.run()
        psql.waitUntilExit()
        guard psql.terminationStatus == 0 else { throw ExitCode(1) }
        return (ContinuousClock.now - start).seconds
    }

    /// What reading alone costs through PostgresNIO, folding nothing (the floor under a rebuild), and
    /// reading and decoding the payloads on one task.
    private static func diagnose(_ store: PostgresEventStore, total: Int64) async throws {
        let scanStart = ContinuousClock.now
        let scanCPU = Self.cpuSeconds()
        try await store.scanAll(after: 0, batchSize: 2000) { _ in }
        report("  scan alone \((Double(total) / (ContinuousClock.now - scanStart).seconds).formatted(0)) events/s, CPU \((Self.cpuSeconds() - scanCPU).formatted(1)) s")
        let decodeStart = ContinuousClock.now
        try await store.scanAll(after: 0, batchSize: 2000) { batch in _ = ProjectedEvent.decode(batch) }
        report("  scan and decode \((Double(total) / (ContinuousClock.now - decodeStart).seconds).formatted(0)) events/s")
    }

    /// User and system CPU time of this process so far.
    static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }

    /// Megabytes of a `/proc/self/status` field.
    static func memory(_ field: String) -> Double {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") })
        else { return 0 }
        return (Double(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) / 1024
    }

    /// SQL that writes what the responder writes for `turns` turns of each conversation: per turn one
    /// visitor message and six workflow events (two more per conversation at its start), a turn a minute.
    ///
    /// - Parameter startSpacing: seconds between the starts of two conversations, positions in time
    ///   order (so a few dozen conversations run at once, as on a live site); `nil` starts them all at
    ///   once, interleaved turn by turn (every conversation in flight during the whole run).
    static func generate(conversations: Int, turns: Int, startSpacing: Int? = nil) -> PostgresQuery {
        let spacing = startSpacing ?? 0
        let order = startSpacing == nil ? "t, c, k" : "c * \(spacing) + t * 60, c, k"
        return """
        INSERT INTO events (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
        SELECT row_number() OVER (ORDER BY \(unescaped: order)), gen_random_uuid(), 'bench',
               CASE WHEN k <= 1 THEN 'messages-c' ELSE 'workflow-c' END || c,
               CASE k WHEN 0 THEN 1 WHEN 1 THEN t + 1 WHEN 2 THEN 1 ELSE 1 + 6 * (t - 1) + (k - 2) END,
               (ARRAY['ConversationStarted','VisitorMessageReceived','WorkflowStarted','WorkflowVariableSet','WorkflowTransitioned',
                      'AssistantMessageSent','ToolCalled','WorkflowWaitingForInput','MessagesProcessed'])[k + 1],
               CASE k
                 WHEN 0 THEN jsonb_build_object('visitorUid', 'v' || c, 'startedAt', '2026-11-22T10:00:00Z')
                 WHEN 1 THEN jsonb_build_object('messageId', 'm' || t, 'visitorUid', 'v' || c, 'text', 'question number ' || t, 'sentAt', '2026-11-22T10:00:00Z')
                 WHEN 2 THEN jsonb_build_object('workflowId', 'support', 'workflowVersion', 1, 'startNodeId', 'wait')
                 WHEN 3 THEN jsonb_build_object('name', 'last', 'value', 'question number ' || t, 'nodeId', 'wait')
                 WHEN 4 THEN jsonb_build_object('from', 'wait', 'to', 'say', 'causedByMessageId', 'm' || t)
                 WHEN 5 THEN jsonb_build_object('text', 'You asked question number ' || t, 'nodeId', 'say', 'inReplyTo', jsonb_build_array('m' || t), 'provider', 'workflow')
                 WHEN 6 THEN jsonb_build_object('tool', 'add_tag', 'arguments', jsonb_build_object('tag', 't' || (t % 5)), 'outcome', 'succeeded',
                                                'actorId', '00000000-0000-4000-8000-000000000001', 'nodeId', 'say')
                 WHEN 7 THEN jsonb_build_object('nodeId', 'wait')
                 ELSE jsonb_build_object('upToVersion', t + 1)
               END,
               jsonb_build_object('actorId', CASE WHEN k <= 1 THEN 'visitor:v' || c ELSE '00000000-0000-4000-8000-000000000001' END,
                                  'visitorUid', 'v' || c, 'lockToken', 'token-' || c || '-' || t),
               -- A turn a minute; the hash a placeholder (not verified here).
               timestamptz '2026-11-22 10:00:00+00' + t * interval '1 minute' + c * \(spacing) * interval '1 second'
                 + (c % 1000) * interval '1 millisecond' + k * interval '1 microsecond',
               sha256(convert_to(c || '/' || t || '/' || k, 'UTF8'))
        FROM generate_series(1, \(turns)) t, generate_series(1, \(conversations)) c, generate_series(0, 8) k
        WHERE t = 1 OR k NOT IN (0, 2)
        """
    }
}
