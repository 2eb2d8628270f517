import ArgumentParser
import AsyncHTTPClient
import EventStore
import Foundation
import NIOCore
import PostgresNIO

/// HTTP ingest through a real `convo serve` (release build) against a raw single-event INSERT of the same
/// rows, both at the same concurrency, alternating in one run.
///
/// The HTTP load comes from wrk (Debian's package; `./Benchmarks/run ingest` installs it when missing), a C
/// load generator that costs the 2-core machine far less than a Swift HTTP client would: the server, not the
/// client, is what is measured. `--client swift` uses AsyncHTTPClient instead.
struct IngestBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ingest", abstract: "HTTP ingest against raw single-event INSERTs.")

    @Option(help: "Concurrent connections (HTTP) and writers (raw).") var concurrency: Int = 64
    @Option(help: "Seconds per round and side.") var seconds: Int = 10
    @Option(help: "Rounds; the sides alternate raw, ours, raw, ours… (on a 2-core machine one round of 10 s varies by ±10%).") var rounds: Int = 6
    @Option(help: "Conversations the messages go to (one visitor each).") var conversations: Int = 5000
    @Flag(help: "Exit 1 when a target is missed.") var check = false
    @Option(help: "The HTTP load generator: wrk, or swift (AsyncHTTPClient, in this process).") var client: String = "wrk"

    static let rateTarget = 1.0
    static let p99Target = Duration.milliseconds(50)
    /// Against pgbench, the C client (issue 18).
    static let cTarget = 0.5

    func run() async throws {
        let binary = ProcessInfo.processInfo.environment["CONVO_BINARY"]
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../.build/release/convo").standardized.path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw ValidationError("no convo binary at \(binary): build it with swift build -c release --product convo (./Benchmarks/run ingest does)")
        }
        guard client == "swift" || client == "wrk" else { throw ValidationError("--client is wrk or swift") }
        if client == "wrk", (try? Self.run("/usr/bin/env", ["which", "wrk"], [:])) == nil {
            throw ValidationError("wrk is not installed: apt-get install wrk (./Benchmarks/run ingest does), or pass --client swift")
        }
        let (concurrency, seconds, rounds, conversations, useWrk) = (concurrency, seconds, rounds, conversations, client == "wrk")
        let missed = try await BenchDatabase.withDatabase(maximumConnections: concurrency) { client, url in
            let env = Self.environment(url)
            let secret = try Self.makeKey(binary, scopes: "ingest", env)
            let (server, port) = try Self.serve(binary, ["--no-responder", "--no-projections"], env)
            // Waited for, so its CPU time is counted (as an exited child's) before the next measure starts, not in it.
            defer {
                server.terminate()
                server.waitUntilExit()
            }
            let http = HTTPClient(
                eventLoopGroupProvider: .singleton,
                configuration: .init(connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: concurrency)))
            let base = "http://127.0.0.1:\(port)"
            do {
                let missed = try await Self.measure(
                    http, base, secret, client: client, url: url, concurrency: concurrency, seconds: seconds, rounds: rounds, conversations: conversations,
                    wrk: useWrk, serverPID: server.processIdentifier)
                try await http.shutdown()
                return missed
            } catch {
                try? await http.shutdown()
                throw error
            }
        }
        if check && !missed.isEmpty { throw ExitCode(1) }
    }

    static func measure(
        _ http: HTTPClient, _ base: String, _ secret: String, client: PostgresClient, url: DatabaseURL, concurrency: Int, seconds: Int, rounds: Int,
        conversations: Int, wrk: Bool, serverPID: Int32
    ) async throws -> [String] {
        func load(for duration: Duration, tag: String) async throws -> Sample {
            if wrk { return try Self.wrk(base, secret, concurrency: concurrency, conversations: conversations, for: duration, tag: tag) }
            return try await Self.ours(http, base, secret, concurrency: concurrency, conversations: conversations, for: duration, tag: tag)
        }
        try await Self.waitUntilUp(http, base)
        report(
            "ingest on \(url) (created for this run, dropped after): convo serve --no-responder --no-projections, \(concurrency) connections, \(conversations) conversations, \(seconds) s per side and round, HTTP load from \(wrk ? "wrk" : "AsyncHTTPClient")"
        )
        // Warm both sides: connections, prepared plans, the owners of the conversations.
        let warm = try await load(for: .seconds(3), tag: "warm")
        _ = try await Self.raw(client, concurrency: concurrency, for: .seconds(2), tag: "warm")
        var ours = Sample()
        var raw = Sample()
        var pgbenchRows = 0
        var pgbenchSeconds = 0.0
        // About `seconds` per round at the 20,000–25,000 rows/s pgbench took here before.
        let pgbenchTransactions = max(100, seconds * 22_000 / max(1, concurrency))
        var cpu = (ours: IngestBaselines.CPU.zero, raw: IngestBaselines.CPU.zero, pgbench: IngestBaselines.CPU.zero)
        func measured<T>(_ part: inout IngestBaselines.CPU, _ body: () async throws -> T) async throws -> T {
            let before = IngestBaselines.CPU.now(server: serverPID)
            let result = try await body()
            part = part + (IngestBaselines.CPU.now(server: serverPID) - before)
            return result
        }
        // Each side starts on a settled database (vacuumed, analyzed, a checkpoint taken; autovacuum off): a
        // checkpoint or an autovacuum the previous side's writes caused otherwise falls into the next side's
        // seconds and tail latency (the p99 of ours was 42–143 ms in runs without this, 21–23 ms for wrk alone
        // on a fresh database).
        try await BenchDatabase.withoutAutovacuum([client])
        for round in 0..<rounds {
            try await BenchDatabase.settle([client])
            raw.merge(try await measured(&cpu.raw) { try await Self.raw(client, concurrency: concurrency, for: .seconds(seconds), tag: "r\(round)") })
            try await BenchDatabase.settle([client])
            let pgbench = try await measured(&cpu.pgbench) { try IngestBaselines.pgbench(url, concurrency: concurrency, transactions: pgbenchTransactions) }
            pgbenchRows += pgbench.rows
            pgbenchSeconds += Double(pgbench.rows) / pgbench.rate
            try await BenchDatabase.settle([client])
            ours.merge(try await measured(&cpu.ours) { try await load(for: .seconds(seconds), tag: "r\(round)") })
        }
        let pgbenchRate = Double(pgbenchRows) / max(pgbenchSeconds, 0.001)
        let ratio = ours.rate / raw.rate
        let p99 = ours.percentile(0.99)
        report(
            "raw INSERT  \(raw.rate.formatted(0).padded(7)) rows/s   p50 \(raw.percentile(0.5).ms) ms  p99 \(raw.percentile(0.99).ms) ms  (\(raw.count) rows)")
        report(
            "HTTP ingest \(ours.rate.formatted(0).padded(7)) msg/s    p50 \(ours.percentile(0.5).ms) ms  p99 \(p99.ms) ms  (\(ours.count) messages, \(ours.failures) failed)"
                + (ours.worstRoundP99.map { "  worst round's p99 \($0.ms) ms" } ?? ""))
        report(
            "ratio \(ratio.formatted(2)) (target ≥ \(Self.rateTarget)) \(ratio >= Self.rateTarget ? "ok" : "MISSED");  p99 \(p99.ms) ms (target < \(Self.p99Target.ms) ms) \(p99 < Self.p99Target ? "ok" : "MISSED")"
        )
        let cRatio = ours.rate / pgbenchRate
        report(
            "pgbench (C, prepared single-row INSERTs of the same row, \(concurrency) clients) \(pgbenchRate.formatted(0)) rows/s; HTTP ingest against it \(cRatio.formatted(2)) (issue 18's target ≥ \(Self.cTarget)) \(cRatio >= Self.cTarget ? "ok" : "MISSED")")
        report("  HTTP ingest: " + cpu.ours.perItem(ours.count))
        report("  raw INSERT (Swift, in this process): " + cpu.raw.perItem(raw.count))
        report("  pgbench: " + cpu.pgbench.perItem(pgbenchRows))
        if wrk {
            // Where convo's CPU per message goes: the same load and connections on requests that do less. A bare
            // Hummingbird server (this benchmark's `framework-server`) is the framework's floor: a fixed text, and
            // a JSON body decoded and a JSON object answered. convo's `GET /healthz` adds the middleware every
            // request passes (metrics, request log, errors, deadline); a message refused as invalid
            // (400) adds the key check, the tenant's limits, the body's decoding and an error body, and stores
            // nothing. What ingest costs above that is the store's part.
            struct Floor {
                var name: String
                var base: String
                var pid: Int32
                var method = "GET"
                var path: String
                var headers: [String: String] = [:]
                var body = ""
                /// The status every answer has: checked once before the load, so a floor never measures an
                /// answer it did not mean (a refused key's 401 instead of the invalid message's 400).
                var status = 200
            }
            let framework = try Self.frameworkServer(avoiding: base)
            defer { framework.process.terminate() }
            try await Self.waitUntilUp(http, framework.base, path: "/hello")
            let body = #"{"visitorUid": "v-0", "messageId": "m-1", "text": "Hello, I have a question about my order."}"#
            let floors = [
                Floor(name: "Hummingbird alone, GET of a fixed text", base: framework.base, pid: framework.process.processIdentifier, path: "/hello"),
                Floor(
                    name: "Hummingbird alone, POST of the message's JSON, decoded, a JSON answer", base: framework.base,
                    pid: framework.process.processIdentifier, method: "POST", path: "/messages", headers: ["Content-Type": "application/json"], body: body),
                Floor(name: "convo GET /healthz (and its middleware)", base: base, pid: serverPID, path: "/healthz"),
                Floor(
                    name: "convo POST of an invalid message (400 after the key, limits and decoding; nothing stored)", base: base, pid: serverPID,
                    method: "POST", path: "/v1/conversations/bench-0/messages",
                    headers: ["Authorization": "Bearer \(secret)", "Content-Type": "application/json"], body: #"{"visitorUid": "v-0", "text": ""}"#,
                    status: 400),
            ]
            report("where a message's CPU goes (wrk, \(concurrency) connections, \(seconds) s each; µs of the serving process per request):")
            for floor in floors {
                var probe = HTTPClientRequest(url: floor.base + floor.path)
                probe.method = .init(rawValue: floor.method)
                for (name, value) in floor.headers { probe.headers.add(name: name, value: value) }
                if !floor.body.isEmpty { probe.body = .bytes(ByteBuffer(string: floor.body)) }
                let answer = try await http.execute(probe, timeout: .seconds(10))
                guard answer.status.code == floor.status else {
                    throw ValidationError("\(floor.method) \(floor.path) answered \(answer.status.code), not \(floor.status): not the request to measure")
                }
                let before = IngestBaselines.CPU.now(server: floor.pid)
                let answered = try Self.wrkFixed(
                    floor.base, method: floor.method, path: floor.path, headers: floor.headers, body: floor.body, concurrency: concurrency, for: .seconds(seconds))
                let part = IngestBaselines.CPU.now(server: floor.pid) - before
                report(
                    "  \(floor.name): \((Double(answered) / Double(seconds)).formatted(0)) requests/s, "
                        + part.perItem(answered, server: floor.pid == serverPID ? "convo serve" : "the bare server"))
            }
            report("  convo HTTP ingest (above): " + cpu.ours.perItem(ours.count))
        }
        // Every acknowledged message is stored once. wrk stops with requests in flight, which the server may
        // still store: at most one per connection and run.
        var missed: [String] = []
        let acknowledged = ours.count + warm.count
        let inFlight = wrk ? concurrency * (rounds + 1) : 0
        let rows = try await client.query("SELECT count(*) FROM events WHERE tenant_id = 'bench' AND event_type = 'VisitorMessageReceived'")
        for try await stored in rows.decode(Int64.self) {
            let ok = stored >= acknowledged && stored <= acknowledged + inFlight
            report(
                "stored \(stored) visitor messages for \(acknowledged) acknowledged requests (warm-up included\(wrk ? ", and up to \(inFlight) in flight when wrk stopped" : "")) \(ok ? "ok" : "MISSED")")
            if !ok { missed.append("stored") }
        }
        if ratio < Self.rateTarget { missed.append("rate") }
        if p99 >= Self.p99Target { missed.append("p99") }
        return missed
    }

    struct Sample {
        var latencies: [Duration] = []
        var elapsed = Duration.zero
        var failures = 0
        /// Requests answered, as a load generator reported them (wrk keeps no latencies for us): its quantiles
        /// of each round as weights (the share of that round's requests between a quantile and the one before
        /// it, counted at the higher one, so never better than the truth), and each round's own p99.
        var reported: (count: Int, weights: [(requests: Double, latency: Duration)], p99: [Duration]) = (0, [], [])
        var count: Int { latencies.count + reported.count }
        var rate: Double { Double(count) / elapsed.seconds }

        mutating func merge(_ other: Sample) {
            latencies += other.latencies
            elapsed += other.elapsed
            failures += other.failures
            reported.count += other.reported.count
            reported.weights += other.reported.weights
            reported.p99 += other.reported.p99
        }

        /// The percentile of every request's latency, all rounds together.
        func percentile(_ p: Double) -> Duration {
            if !reported.weights.isEmpty {
                let sorted = reported.weights.sorted { $0.latency < $1.latency }
                let rank = sorted.reduce(0) { $0 + $1.requests } * p
                var seen = 0.0
                for weight in sorted {
                    seen += weight.requests
                    if seen >= rank { return weight.latency }
                }
                return sorted[sorted.count - 1].latency
            }
            guard !latencies.isEmpty else { return .zero }
            let sorted = latencies.sorted()
            return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
        }

        /// The worst round's p99 as the load generator computed it, beside the merged one.
        var worstRoundP99: Duration? { reported.p99.max() }
    }

    /// The wrk script: every request a random conversation and a message id of its own; a summary line at the end.
    static let wrkScript = #"""
        local counter = 0
        local threads = 0
        local key, tag, conversations
        function setup(thread)
          threads = threads + 1
          thread:set("number", threads)
        end
        function init(args)
          key, tag, conversations = args[1], args[2], tonumber(args[3])
          math.randomseed(number * 7919 + os.time())
        end
        function request()
          counter = counter + 1
          local c = math.random(0, conversations - 1)
          local body = '{"visitorUid": "v-' .. c .. '", "messageId": "' .. tag .. '-' .. number .. '-' .. counter .. '", "text": "Hello, I have a question about my order."}'
          return wrk.format("POST", "/v1/conversations/bench-" .. c .. "/messages",
            {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body)
        end
        function done(summary, latency, requests)
          local e = summary.errors
          io.write(string.format("wrk-summary %d %d %d %d\n", summary.requests, summary.duration, latency:percentile(99),
            e.connect + e.read + e.write + e.status + e.timeout))
          -- Quantiles, finer towards the tail, so the rounds' distributions can be merged.
          local grid = {}
          for i = 1, 90 do grid[#grid + 1] = i end
          for i = 901, 990 do grid[#grid + 1] = i / 10 end
          for i = 9901, 10000 do grid[#grid + 1] = i / 100 end
          for _, p in ipairs(grid) do io.write(string.format("wrk-quantile %.2f %d\n", p, latency:percentile(p))) end
        end
        """#

    /// Runs wrk against the server for `duration`: requests answered 2xx, their rate and percentiles.
    static func wrk(_ base: String, _ key: String, concurrency: Int, conversations: Int, for duration: Duration, tag: String) throws -> Sample {
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("convo-ingest-\(UUID().uuidString).lua")
        try Data(wrkScript.utf8).write(to: script)
        defer { try? FileManager.default.removeItem(at: script) }
        let output = try run(
            "/usr/bin/env",
            ["wrk", "-t2", "-c\(concurrency)", "-d\(duration.components.seconds)s", "--timeout", "30s", "-s", script.path, base, "--", key, tag, "\(conversations)"],
            [:])
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("wrk-summary ") }) else {
            throw ValidationError("wrk printed no summary: \(output)")
        }
        let fields = line.split(separator: " ").dropFirst().compactMap { Int($0) }
        guard fields.count == 4 else { throw ValidationError("wrk's summary is not understood: \(line)") }
        let answered = fields[0] - fields[3]
        var weights: [(requests: Double, latency: Duration)] = []
        var below = 0.0
        for line in output.split(separator: "\n") where line.hasPrefix("wrk-quantile ") {
            let pair = line.split(separator: " ").dropFirst()
            guard pair.count == 2, let p = Double(pair.first!), let us = Int(pair.last!) else {
                throw ValidationError("wrk's quantile is not understood: \(line)")
            }
            weights.append((Double(answered) * (p - below) / 100, .microseconds(us)))
            below = p
        }
        guard below == 100 else { throw ValidationError("wrk printed no latency quantiles: \(output)") }
        var sample = Sample()
        sample.failures = fields[3]
        sample.reported = (answered, weights, [.microseconds(fields[2])])
        sample.elapsed = .microseconds(fields[1])
        return sample
    }

    /// Runs wrk with one fixed request for `duration`: the requests answered, whatever their status.
    static func wrkFixed(
        _ base: String, method: String, path: String, headers: [String: String], body: String, concurrency: Int, for duration: Duration
    ) throws -> Int {
        func lua(_ text: String) -> String {
            "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        let headerTable = headers.map { "[\(lua($0.key))] = \(lua($0.value))" }.joined(separator: ", ")
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("convo-floor-\(UUID().uuidString).lua")
        try Data(
            """
            local request_text = wrk.format(\(lua(method)), \(lua(path)), {\(headerTable)}, \(body.isEmpty ? "nil" : lua(body)))
            function request() return request_text end
            function done(summary, latency, requests)
              local e = summary.errors
              io.write(string.format("wrk-fixed %d %d\\n", summary.requests, e.connect + e.read + e.write + e.timeout))
            end
            """.utf8
        ).write(to: script)
        defer { try? FileManager.default.removeItem(at: script) }
        let output = try run(
            "/usr/bin/env", ["wrk", "-t2", "-c\(concurrency)", "-d\(duration.components.seconds)s", "--timeout", "30s", "-s", script.path, base], [:])
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("wrk-fixed ") }) else {
            throw ValidationError("wrk printed no summary: \(output)")
        }
        let fields = line.split(separator: " ").dropFirst().compactMap { Int($0) }
        guard fields.count == 2 else { throw ValidationError("wrk's summary is not understood: \(line)") }
        return fields[0] - fields[1]
    }

    static func ours(_ http: HTTPClient, _ base: String, _ key: String, concurrency: Int, conversations: Int, for duration: Duration, tag: String) async throws -> Sample {
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + duration
        var sample = try await withThrowingTaskGroup(of: Sample.self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var sample = Sample()
                    var sent = 0
                    while clock.now < deadline {
                        let conversation = Int.random(in: 0..<conversations)
                        var request = HTTPClientRequest(url: "\(base)/v1/conversations/bench-\(conversation)/messages")
                        request.method = .POST
                        request.headers.add(name: "Authorization", value: "Bearer \(key)")
                        request.headers.add(name: "Content-Type", value: "application/json")
                        request.body = .bytes(
                            ByteBuffer(string: #"{"visitorUid": "v-\#(conversation)", "messageId": "\#(tag)-\#(worker)-\#(sent)", "text": "Hello, I have a question about my order."}"#))
                        sent += 1
                        let began = clock.now
                        let response = try await http.execute(request, timeout: .seconds(30))
                        _ = try await response.body.collect(upTo: 1 << 16)
                        if response.status == .accepted { sample.latencies.append(clock.now - began) } else { sample.failures += 1 }
                    }
                    return sample
                }
            }
            var total = Sample()
            for try await part in group { total.merge(part) }
            return total
        }
        sample.elapsed = clock.now - start
        return sample
    }

    static func raw(_ client: PostgresClient, concurrency: Int, for duration: Duration, tag: String) async throws -> Sample {
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + duration
        let metadata = ByteBuffer(string: #"{"actorId": "visitor:v-1", "correlationId": "7a0c52a4-9f0e-4a39-a3d2-5d4c8f1a2b3c"}"#)
        var sample = try await withThrowingTaskGroup(of: Sample.self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var sample = Sample()
                    var version: Int64 = 0
                    while clock.now < deadline {
                        version += 1
                        let payload = ByteBuffer(
                            string: #"{"messageId": "\#(tag)-\#(worker)-\#(version)", "visitorUid": "v-\#(worker)", "text": "Hello, I have a question about my order.", "sentAt": "2026-11-22T10:00:00Z"}"#)
                        let began = clock.now
                        try await client.query(
                            """
                            INSERT INTO events (event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, hash)
                            VALUES (\(UUID()), 'raw', \("messages-raw-\(tag)-\(worker)"), \(version), 'VisitorMessageReceived', \(RawJSONB(text: payload)), \(RawJSONB(text: metadata)), \(EventStoreBenchmark.rawHash))
                            """)
                        sample.latencies.append(clock.now - began)
                    }
                    return sample
                }
            }
            var total = Sample()
            for try await part in group { total.merge(part) }
            return total
        }
        sample.elapsed = clock.now - start
        return sample
    }

    /// What a `convo` process of the benchmark runs with: the run's database and master key.
    static func environment(_ url: DatabaseURL) -> [String: String] {
        ["CONVO_DATABASE_URL": url.description, "CONVO_LOG_LEVEL": "error", "CI": "true", "CONVO_MASTER_KEY": BenchDatabase.masterKey]
    }

    /// A key of the tenant `bench` with `scopes` (comma-separated), made by `convo keys create`.
    static func makeKey(_ binary: String, scopes: String, _ environment: [String: String]) throws -> String {
        let created = try run(binary, ["keys", "create", "--tenant", "bench", "--scopes", scopes, "--json"], environment)
        guard let key = try JSONSerialization.jsonObject(with: Data(created.utf8)) as? [String: Any], let secret = key["key"] as? String else {
            throw ValidationError("convo keys create printed no key: \(created)")
        }
        return secret
    }

    /// Starts `convo serve` on a random port; the caller terminates it.
    static func serve(_ binary: String, _ arguments: [String], _ environment: [String: String]) throws -> (Process, port: Int) {
        // Below the kernel's ephemeral ports (32768 and up here), which outgoing connections may take meanwhile.
        let port = Int.random(in: 20000..<32000)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: binary)
        server.arguments = ["serve", "--port", "\(port)"] + arguments
        server.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        try server.run()
        return (server, port)
    }

    static func waitUntilUp(_ http: HTTPClient, _ base: String, path: String = "/healthz") async throws {
        for _ in 0..<300 {
            if let response = try? await http.execute(HTTPClientRequest(url: "\(base)\(path)"), timeout: .seconds(1)), response.status == .ok { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ValidationError("\(base) did not come up")
    }

    /// This benchmark's own executable as `framework-server`, on a port of its own.
    static func frameworkServer(avoiding taken: String) throws -> (process: Process, base: String) {
        var port = Int.random(in: 20000..<32000)
        while taken.hasSuffix(":\(port)") { port = Int.random(in: 20000..<32000) }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        server.arguments = ["framework-server", "--port", "\(port)"]
        server.standardOutput = FileHandle.nullDevice
        try server.run()
        return (server, "http://127.0.0.1:\(port)")
    }

    static func run(_ binary: String, _ arguments: [String], _ environment: [String: String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw ValidationError("convo \(arguments.joined(separator: " ")) failed") }
        return String(decoding: data, as: UTF8.self)
    }
}

extension Duration {
    var ms: String { (seconds * 1000).formatted(1) }
}
