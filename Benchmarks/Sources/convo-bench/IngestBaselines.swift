import ArgumentParser
import EventStore
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The C baseline of the ingest benchmark and the CPU each side costs.
///
/// pgbench (PostgreSQL's C client) inserts the same row a visitor message is (tenant, stream, version, type,
/// the message's JSON, its metadata, a hash) into the same `events` table, one durable single-row
/// transaction each, prepared, at the same concurrency: what PostgreSQL takes from the strongest client on
/// this machine.
enum IngestBaselines {
    /// The pgbench script: one row per transaction, a stream per client, random versions (the unique
    /// index on a stream's versions is kept; pgbench keeps no counter per client). pgbench reads `:name` as
    /// a variable: the JSON has a colon only after its keys (followed by a space).
    static let script = #"""
        \set v random(1, 9000000000000000000)
        INSERT INTO events (event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, hash) VALUES (gen_random_uuid(), 'pgbench', 'messages-pgbench-' || :client_id, :v, 'VisitorMessageReceived', '{"messageId": "pgbench-message", "visitorUid": "v-1", "text": "Hello, I have a question about my order.", "sentAt": "2026-11-22T100000Z"}', '{"actorId": "visitor-v-1", "correlationId": "7a0c52a4-9f0e-4a39-a3d2-5d4c8f1a2b3c"}', '\xabababababababababababababababababababababababababababababababab');
        """#

    /// pgbench against `url` at `concurrency`, `transactions` per client: rows per second, and their count.
    /// (By count rather than `-T`: with 64 clients inserting, pgbench 15 here once went on past its `-T 8` for
    /// over ten minutes.)
    static func pgbench(_ url: DatabaseURL, concurrency: Int, transactions: Int) throws -> (rate: Double, rows: Int) {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("convo-pgbench-\(UUID().uuidString).sql")
        try Data(script.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        var environment: [String: String] = [:]
        if let password = url.password { environment["PGPASSWORD"] = password }
        let output = try IngestBenchmark.run(
            "/usr/bin/env",
            ["pgbench", "-h", url.host, "-p", "\(url.port)", "-U", url.username, "-n", "-M", "prepared", "-c", "\(concurrency)", "-j", "2", "-t", "\(transactions)",
             "-f", file.path, url.database],
            environment)
        // "number of transactions actually processed: 123456" and "tps = 12345.678901 (without initial connection time)"
        func number(after label: String) -> Double? {
            guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix(label) }) else { return nil }
            // ("176000/176000" with -t: processed/asked.)
            return Double(line.dropFirst(label.count).split(whereSeparator: { $0 == " " || $0 == "/" }).first ?? "")
        }
        guard let rate = number(after: "tps = "), let rows = number(after: "number of transactions actually processed: ") else {
            throw ValidationError("pgbench's output is not understood: \(output.suffix(500))")
        }
        return (rate, Int(rows))
    }

    /// CPU seconds, measured from /proc and getrusage.
    struct CPU {
        /// The machine's busy time (every core), from /proc/stat.
        var machine: Double
        /// The `convo serve` process's own time, from /proc/PID/stat.
        var server: Double
        /// This process's children that have exited (wrk, pgbench), from getrusage.
        var loadGenerators: Double
        /// This process's own time.
        var benchmark: Double

        static func now(server pid: Int32?) -> CPU {
            CPU(machine: machineBusy(), server: pid.map(processTime) ?? 0, loadGenerators: usage(RUSAGE_CHILDREN.rawValue), benchmark: usage(RUSAGE_SELF.rawValue))
        }

        static func - (after: CPU, before: CPU) -> CPU {
            CPU(
                machine: after.machine - before.machine, server: after.server - before.server, loadGenerators: after.loadGenerators - before.loadGenerators,
                benchmark: after.benchmark - before.benchmark)
        }

        static func + (a: CPU, b: CPU) -> CPU {
            CPU(machine: a.machine + b.machine, server: a.server + b.server, loadGenerators: a.loadGenerators + b.loadGenerators, benchmark: a.benchmark + b.benchmark)
        }

        static let zero = CPU(machine: 0, server: 0, loadGenerators: 0, benchmark: 0)

        /// What is left of the machine's time: PostgreSQL, mostly (and the kernel's work for everyone).
        var rest: Double { max(0, machine - server - loadGenerators - benchmark) }

        /// Microseconds per item of each part.
        func perItem(_ count: Int, server name: String = "convo serve") -> String {
            func µs(_ seconds: Double) -> String { (seconds / Double(max(1, count)) * 1e6).formatted(0) }
            return "CPU per item: \(name) \(µs(server)) µs, wrk/pgbench \(µs(loadGenerators)) µs, this process \(µs(benchmark)) µs, "
                + "PostgreSQL and the rest \(µs(rest)) µs (machine \(µs(machine)) µs)"
        }

        private static let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))

        private static func machineBusy() -> Double {
            // cpu  user nice system idle iowait irq softirq steal ...
            guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8), let line = text.split(separator: "\n").first else { return 0 }
            let fields = line.split(separator: " ").dropFirst().compactMap { Double($0) }
            guard fields.count >= 8 else { return 0 }
            let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
            return busy / ticks
        }

        static func processTime(_ pid: Int32) -> Double {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return 0 }
            // After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
            let fields = text[text.index(after: close)...].split(separator: " ")
            guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
            return (user + system) / ticks
        }

        static func usage(_ who: __rusage_who_t) -> Double {
            var usage = rusage()
            getrusage(who, &usage)
            func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
            return seconds(usage.ru_utime) + seconds(usage.ru_stime)
        }
    }
}
