import AsyncHTTPClient
import ConvoTestSupport
import Foundation
import SharedTypes
import NIOCore
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The suites that start many server processes each (Redis Sentinels, `convo serve` fleets, hundreds of
/// sockets): one at a time, so that on a 2-core machine they do not starve each other and the rest.
@Suite(.serialized) struct ProcessHeavyTests {}

/// Clients that attack the server rather than use it, against a real `convo serve`: idle and slow
/// connections far past the limit, floods of unknown keys, too many event streams, a key revoked while
/// its streams are open. The server stays up and keeps serving the others.
extension ProcessHeavyTests {
@Suite struct AbuseTests {
    /// The shared test database, migrated, and a key of a tenant of its own.
    struct Setup {
        let env: [String: String]
        let tenant: String
        let key: String

        init() async throws {
            env = ["CONVO_DATABASE_URL": try TestDatabase.url.description, "CONVO_REDIS_URL": try TestDatabase.redisURL, "CI": "true", "CONVO_LOG_LEVEL": "notice"]
            let migrated = try await ConvoProcess.run(["migrate"], environment: env)
            guard migrated.status == 0 else { throw ServeProcess.Failure(description: "migrate: \(migrated.stderr)") }
            tenant = TestDatabase.uniqueTenant().rawValue
            key = try await Self.key(tenant: tenant, env: env)
        }

        static func key(tenant: String, env: [String: String]) async throws -> String {
            let made = try await ConvoProcess.run(["keys", "create", "--tenant", tenant, "--scopes", "ingest,read,admin", "--json"], environment: env)
            return try JSONDecoder().decode(FaultFleet.Created.self, from: Data(made.stdout.utf8)).key
        }
    }

    @Test func idleAndSlowConnectionsFarPastTheCapNeitherCrashNorStarveTheServer() async throws {
        let setup = try await Setup()
        // An idle timeout well past the time the 180 take to open on a loaded machine: with 2 s, the first ones
        // were sometimes closed for idling before the last opened, and none was ever past the cap.
        let server = try await ServeProcess(environment: setup.env, arguments: ["--max-connections", "60", "--idle-timeout", "8", "--no-responder"])
        let opening = ContinuousClock.now
        // 180 connections: idle ones, unfinished request heads, and keep-alives left idle after one request.
        let sockets = await RawConnection.open(180, port: server.port) { connection, index in
            switch index % 3 {
            case 0: break
            case 1: connection.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            default: connection.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            }
        }
        #expect(sockets.count >= 150)
        let openedIn = ContinuousClock.now - opening
        #expect(openedIn < .seconds(8), "opening took \(openedIn): the idle timeout closed some before the rest arrived")
        // Every one of them is closed by the server: past the cap at once (answered 503), the others after
        // the idle timeout (8 s). Bounded: 40 s.
        let closedAll = try await eventually(timeout: .seconds(40)) {
            sockets.allSatisfy { $0.poll() }
        }
        #expect(closedAll, "\(sockets.filter { !$0.isClosed }.count) of \(sockets.count) still open; the server said: \(server.output.suffix(3000))")
        // Past the cap they were answered 503 at once (how many depends on how fast the server accepts
        // while idle ones are closed: at least some of 180 against a cap of 60).
        let refused = sockets.filter { $0.received.hasPrefix("HTTP/1.1 503") && $0.received.contains("too_many_connections") }
        #expect(!refused.isEmpty, "none refused")
        #expect(refused.allSatisfy { $0.received.contains("Retry-After: 1") })
        // The ones that finished a request were answered before they were closed for idling.
        let answered = sockets.filter { $0.received.hasPrefix("HTTP/1.1 200") }
        #expect(!answered.isEmpty)
        #expect(server.isRunning, "\(server.failureSummary)")
        // And the server serves the others, with PostgreSQL and Redis reachable.
        // (The shared test database holds other tests' events, so only these two checks are this test's.)
        // (Its checks give PostgreSQL 3 s, which a suite of tests on two cores can take from it now and then: asked
        // again, bounded.)
        var ready = await Self.plainGet(server, "/readyz")
        let reachable = try await eventually(timeout: .seconds(30)) {
            ready = await Self.plainGet(server, "/readyz")
            return ready.body.contains(#""postgres":"ok""#) && ready.body.contains(#""redis":"ok""#)
        }
        #expect(reachable, "\(ready.body)")
        let metrics = await Self.plainGet(server, "/metrics")
        #expect(metrics.body.contains("convo_http_connections_refused"))
        for connection in sockets { connection.close() }
        try await server.stop()
    }

    @Test func theConnectionCapFitsTheDescriptorLimitWithPostgresAndRedisInReserve() async throws {
        let setup = try await Setup()
        // 200 descriptors in all: the pools (20 + 4), 64 spare and 32 for refusals stay out of the budget, 80 are left.
        let server = try await ServeProcess(
            environment: setup.env, arguments: ["--idle-timeout", "2", "--no-responder"], launcher: ["/usr/bin/prlimit", "--nofile=200:200", "--"])
        #expect(try await eventually(timeout: .seconds(10)) { server.output.contains("room for 80") }, "\(server.output.suffix(1000))")
        let sockets = await RawConnection.open(300, port: server.port)
        #expect(sockets.count >= 200)
        // Past the budget, answered and closed; the rest closed at the idle timeout. Nothing ran out of
        // descriptors: the server is up and reaches PostgreSQL and Redis.
        #expect(try await eventually(timeout: .seconds(20)) { sockets.allSatisfy { $0.poll() } })
        #expect(!sockets.filter { $0.received.hasPrefix("HTTP/1.1 503") }.isEmpty)
        #expect(server.isRunning, "\(server.failureSummary)")
        // (The shared test database holds other tests' events, so only these two checks are this test's.)
        // (Its checks give PostgreSQL 3 s, which a suite of tests on two cores can take from it now and then: asked
        // again, bounded.)
        var ready = await Self.plainGet(server, "/readyz")
        let reachable = try await eventually(timeout: .seconds(30)) {
            ready = await Self.plainGet(server, "/readyz")
            return ready.body.contains(#""postgres":"ok""#) && ready.body.contains(#""redis":"ok""#)
        }
        #expect(reachable, "\(ready.body)")
        #expect(!server.output.contains("Too many open files"), "\(server.output.suffix(2000))")
        for connection in sockets { connection.close() }
        try await server.stop()
    }

    /// Connections that piled up in the listen backlog while the process was stopped (a pause, a stalled
    /// host) arrive all at once when it resumes. The server takes its budget and a few more to refuse at a
    /// time, and leaves the rest in the backlog until those close: its descriptors never run out. (At the
    /// limit, besides failed accepts, libdispatch's check of its worker threads, which opens a /proc file
    /// each second while work waits, ends the process; a loaded run of this suite met that once.)
    @Test func aBurstAfterAPauseNeverTakesTheProcessToItsDescriptorLimit() async throws {
        let setup = try await Setup()
        let limit = 200
        let server = try await ServeProcess(
            environment: setup.env, arguments: ["--idle-timeout", "3", "--no-responder"], launcher: ["/usr/bin/prlimit", "--nofile=\(limit):\(limit)", "--"])
        #expect(try await eventually(timeout: .seconds(10)) { server.output.contains("room for 80") }, "\(server.output.suffix(1000))")
        let pid = server.pid
        let before = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0
        server.send(SIGSTOP)
        // The kernel completes them into the backlog (256) while the process is stopped.
        let sockets = await RawConnection.open(240, port: server.port)
        #expect(sockets.count == 240)
        let peak = Peak()
        let watcher = Task {
            while !Task.isCancelled {
                let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0
                peak.value.max(open, ordering: .relaxed)
                try? await Task.sleep(for: .milliseconds(2))
            }
        }
        server.send(SIGCONT)
        #expect(try await eventually(timeout: .seconds(30)) { sockets.allSatisfy { $0.poll() } }, "\(sockets.filter { !$0.isClosed }.count) still open")
        watcher.cancel()
        _ = await watcher.value
        let highest = peak.value.load(ordering: .relaxed)
        print("fault: burst after a pause: \(before) descriptors open before it, at most \(highest) during it, of \(limit)")
        // The budget (80) was taken (nearly all of it seen at once, sampled every 2 ms); besides it at most 32 were being refused, and the
        // PostgreSQL pool (20 at most) may have opened connections meanwhile, whatever the pace of the refusals: room was left. (The
        // pool's share was bounded at 8 once, which a run exceeded by one.)
        #expect(highest >= before + 70 && highest <= before + 80 + 32 + 20 && highest < limit, "\(before) open before, at most \(highest) during, of \(limit)")
        #expect(!sockets.filter { $0.received.hasPrefix("HTTP/1.1 503") }.isEmpty)
        #expect(server.isRunning, "\(server.failureSummary)")
        #expect(!server.output.contains("Too many open files"), "\(server.output.suffix(2000))")
        for connection in sockets { connection.close() }
        #expect(try await server.stop() == 0)
    }

    final class Peak: Sendable {
        let value = Atomic<Int>(0)
    }

    @Test func aFloodOfUnknownKeysIsLimitedWithoutLookupsAndValidKeysKeepWorking() async throws {
        let setup = try await Setup()
        let server = try await ServeProcess(environment: setup.env, arguments: ["--no-responder", "--key-cache-seconds", "60"])
        // A valid key, used once, is cached.
        #expect(await Self.get(server, "/v1/parked-conversations", key: setup.key).status == 200)
        let before = try await Self.lookups(server)
        // 400 well-formed unknown keys and 400 malformed tokens from this address, 16 at a time.
        let tally = Tally()
        let floodStarted = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<16 {
                group.addTask {
                    for index in 0..<50 {
                        let token = index.isMultiple(of: 2)
                            ? "cvk_\(String(format: "%016x", worker * 1000 + index))_\(String(repeating: "A", count: 43))" : "garbage-\(worker)-\(index)"
                        let reply = await Self.get(server, "/v1/parked-conversations", key: token)
                        tally.statuses.withLock { $0[reply.status, default: 0] += 1 }
                        if let wait = reply.retryAfter { tally.waits.withLock { _ = $0.insert(wait) } }
                    }
                }
            }
            try await group.waitForAll()
        }
        let counted = tally.statuses.withLock { $0 }
        // The burst (20) and its refill (2 a second, for as long as the flood took) are refused as unknown;
        // the rest are limited.
        let budget = 20 + Int(((ContinuousClock.now - floodStarted).inSeconds * 2).rounded(.up)) + 2
        #expect(counted[401, default: 0] <= budget && counted[429, default: 0] >= 800 - budget, "\(counted), budget \(budget)")
        #expect(!tally.waits.withLock { $0 }.isEmpty)
        // Malformed tokens were never looked up; unknown ones only within the budget, plus those already under
        // way when it ran out (at most one per worker: a lookup is checked before it starts, counted when it fails).
        let lookups = try await Self.lookups(server) - before
        #expect(lookups <= budget + 16, "\(lookups) lookups, budget \(budget) and 16 in flight")
        // The valid key still works from the same address.
        #expect(await Self.get(server, "/v1/parked-conversations", key: setup.key).status == 200)
        try await server.stop()
    }

    @Test func eventStreamsAreLimitedPerTenantAndARevokedKeysStreamsEnd() async throws {
        let setup = try await Setup()
        let server = try await ServeProcess(
            environment: setup.env, arguments: ["--no-responder", "--key-cache-seconds", "1", "--max-streams-per-tenant", "2"])
        let other = try await Setup.key(tenant: TestDatabase.uniqueTenant().rawValue, env: setup.env)
        let first = try await SSEStream(server, conversation: "c-1", key: setup.key)
        let second = try await SSEStream(server, conversation: "c-2", key: setup.key)
        #expect(first.status == 200 && second.status == 200)
        let third = try await SSEStream(server, conversation: "c-3", key: setup.key)
        #expect(third.status == 429 && third.retryAfter != nil, "\(third.status)")
        // Another tenant has places of its own.
        let elsewhere = try await SSEStream(server, conversation: "c-1", key: other)
        #expect(elsewhere.status == 200)
        // The key is revoked: its streams end within the key-cache interval (1 s; bounded at 15 s here),
        // the other tenant's stream goes on.
        let revokedAt = ContinuousClock.now
        let revoked = try await ConvoProcess.run(["keys", "revoke", setup.key], environment: setup.env)
        #expect(revoked.status == 0, "\(revoked.stderr)")
        #expect(try await eventually(timeout: .seconds(15)) { first.ended && second.ended })
        #expect(ContinuousClock.now - revokedAt < .seconds(15))
        #expect(!elsewhere.ended)
        // Its places are free again: the other tenant can still open a second stream, and requests with the
        // revoked key are refused.
        #expect(await Self.get(server, "/v1/parked-conversations", key: setup.key).status == 401)
        elsewhere.cancel()
        try await server.stop()
    }

    // MARK: Helpers

    final class Tally: Sendable {
        let statuses = Mutex<[Int: Int]>([:])
        let waits = Mutex<Set<String>>([])
    }

    final class Flag: Sendable {
        let value = Atomic<Bool>(false)
    }

    static func get(_ server: ServeProcess, _ path: String, key: String) async -> (status: Int, retryAfter: String?) {
        var request = HTTPClientRequest(url: "\(server.baseURL)\(path)")
        request.headers.add(name: "Authorization", value: "Bearer \(key)")
        do {
            let response = try await FaultFleet.http.execute(request, timeout: .seconds(30))
            _ = try await response.body.collect(upTo: 1 << 20)
            return (Int(response.status.code), response.headers.first(name: "Retry-After"))
        } catch {
            return (0, nil)
        }
    }

    static func plainGet(_ server: ServeProcess, _ path: String) async -> (status: Int, body: String) {
        do {
            let response = try await FaultFleet.http.execute(HTTPClientRequest(url: "\(server.baseURL)\(path)"), timeout: .seconds(30))
            return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 22)))
        } catch {
            return (0, "\(error)")
        }
    }

    static func lookups(_ server: ServeProcess) async throws -> Int {
        let metrics = await plainGet(server, "/metrics")
        let line = metrics.body.split(separator: "\n").first { $0.hasPrefix("convo_auth_lookups ") || $0.hasPrefix("convo_auth_lookups_total ") }
        return line.flatMap { Double($0.split(separator: " ").last ?? "").map(Int.init) } ?? 0
    }
}
}

typealias AbuseTests = ProcessHeavyTests.AbuseTests

/// An event stream held open by the test.
final class SSEStream: Sendable {
    let status: Int
    let retryAfter: String?
    private let done = AbuseTests.Flag()
    private let reader: Task<Void, Never>?

    var ended: Bool { done.value.load(ordering: .relaxed) }

    convenience init(_ server: ServeProcess, conversation: String, key: String) async throws {
        try await self.init(baseURL: server.baseURL, conversation: conversation, headers: [("Authorization", "Bearer \(key)")])
    }

    init(baseURL: String, conversation: String, headers: [(String, String)]) async throws {
        var request = HTTPClientRequest(url: "\(baseURL)/v1/conversations/\(conversation)/stream")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        let response = try await FaultFleet.http.execute(request, timeout: .seconds(120))
        status = Int(response.status.code)
        retryAfter = response.headers.first(name: "Retry-After")
        let done = self.done
        reader = Task {
            do { for try await _ in response.body {} } catch {}
            done.value.store(true, ordering: .relaxed)
        }
    }

    func cancel() { reader?.cancel() }
}

/// A raw TCP connection to the server, for clients that do not speak HTTP properly.
final class RawConnection: @unchecked Sendable {
    let fd: Int32
    private(set) var received = ""
    private(set) var isClosed = false

    /// Opens `count` connections on a dispatch thread (a connect to a full listen backlog blocks, and must
    /// not block the cooperative pool), each given 2 s to connect; those that could not are left out.
    static func open(_ count: Int, port: Int, first: (@Sendable (RawConnection, Int) -> Void)? = nil) async -> [RawConnection] {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                var opened: [RawConnection] = []
                for index in 0..<count {
                    guard let connection = try? RawConnection(port: port) else { continue }
                    first?(connection, index)
                    opened.append(connection)
                }
                continuation.resume(returning: opened)
            }
        }
    }

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var limit = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(fd)
            throw ServeProcess.Failure(description: "connect: errno \(errno)")
        }
    }

    func send(_ text: String) {
        _ = text.withCString { Glibc.send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    }

    /// Reads what has arrived without waiting; `true` once the server has closed the connection.
    func poll() -> Bool {
        guard !isClosed else { return true }
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count > 0 {
                received += String(decoding: buffer[0..<count], as: UTF8.self)
                continue
            }
            if count == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) { isClosed = true }
            return isClosed
        }
    }

    func close() { Glibc.close(fd) }
}
