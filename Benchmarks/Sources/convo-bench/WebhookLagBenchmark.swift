import ArgumentParser
import EventStore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import PostgresNIO
import SharedTypes
import Synchronization
import Webhooks

/// Webhook delivery lag: from an event's commit (its append returned) to the receiver having its message,
/// at a steady rate, to a receiver on loopback in this process (NIO, answering at once); then the same with
/// a tenth of the messages refused once (retried on the default schedule, 5 s later).
struct WebhookLagBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "webhook-lag", abstract: "webhook delivery lag p50/p99 at a steady event rate.")

    @Option(help: "Events per second appended.") var rate: Int = 1000
    @Option(help: "Seconds per phase.") var seconds: Int = 20
    @Option(help: "Conversations the events go to.") var conversations: Int = 200
    @Flag(help: "Exit 1 when a target is missed.") var check = false

    static let p99Target = 1.0

    func run() async throws {
        let (rate, seconds, conversations) = (rate, seconds, conversations)
        let missed = try await BenchDatabase.withDatabase(maximumConnections: 24) { client, _ in
            let logger = BenchDatabase.logger
            let store = PostgresEventStore(client: client, keyring: BenchDatabase.keyring, logger: logger)
            let receiver = try await Receiver.start()
            defer { receiver.stop() }
            let webhooks = WebhookStore(client: client, store: store, logger: logger)
            let dispatcher = WebhookDispatcher(
                client: client, store: store, configuration: .init(scanInterval: .milliseconds(200), instance: "bench"), logger: logger)
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await store.run() }
                group.addTask { try await dispatcher.run() }
                defer { group.cancelAll() }
                var missed = false
                for (phase, refuseEvery) in [("healthy", 0), ("10% refused", 10)] {
                    receiver.reset(refuseEvery: refuseEvery)
                    let tenant = TenantID(rawValue: "bench-\(refuseEvery)")!
                    _ = try await webhooks.put(
                        tenant: tenant, id: "lag", url: "http://127.0.0.1:\(receiver.port)/hook", eventTypes: [.messageCreated], secret: WebhookSecret.generate())
                    let committed = try await Self.append(store, tenant: tenant, rate: rate, seconds: seconds, conversations: conversations)
                    // Drain: every message in (the refused ones come back after the first retry delay).
                    let deadline = ContinuousClock.now + .seconds(60)
                    while receiver.count(of: committed.keys) < committed.count && ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    let arrivals = receiver.arrivals
                    var lags: [Double] = []
                    for (id, at) in committed { if let got = arrivals[id] { lags.append(Swift.max(0, got - at)) } }
                    lags.sort()
                    func percentile(_ p: Double) -> Double { lags.isEmpty ? .nan : lags[Swift.min(lags.count - 1, Int(Double(lags.count) * p))] }
                    let (p50, p99) = (percentile(0.5), percentile(0.99))
                    let verdict = refuseEvery == 0 ? (p99 < Self.p99Target ? " (target p99 < 1 s: met)" : " (target p99 < 1 s: MISSED)") : ""
                    if refuseEvery == 0 && !(p99 < Self.p99Target) { missed = true }
                    if lags.count < committed.count { missed = true }
                    report(
                        "webhook lag, \(phase): \(committed.count) events at \(rate)/s for \(seconds) s, \(lags.count) delivered; "
                            + "p50 \((p50 * 1000).formatted(1)) ms, p99 \((p99 * 1000).formatted(1)) ms, max \(((lags.last ?? .nan) * 1000).formatted(1)) ms\(verdict)")
                }
                return missed
            }
        }
        if check && missed { throw ExitCode(1) }
    }

    /// Appends `rate` events a second for `seconds`, ten at a time every 10 ms (each its own append, to its
    /// conversation's stream); returns each message id with when its append returned.
    static func append(_ store: PostgresEventStore, tenant: TenantID, rate: Int, seconds: Int, conversations: Int) async throws -> [String: Double] {
        let committed = Commits()
        let perTick = Swift.max(1, rate / 100)
        let start = ContinuousClock.now
        // Discarding: finished appends are let go as they end, so the group does not grow with the run.
        try await withThrowingDiscardingTaskGroup { group in
            for tick in 0..<(seconds * 100) {
                try await Task.sleep(until: start + .milliseconds(10 * tick), clock: .continuous)
                for slot in 0..<perTick {
                    let n = tick * perTick + slot
                    group.addTask {
                        let conversation = ConversationID(rawValue: "c\(n % conversations)")!
                        let event = try NewEvent(
                            type: VisitorMessageReceived.eventType,
                            encoding: VisitorMessageReceived(messageId: "m\(n)", visitorUid: VisitorUID(rawValue: "v\(n % conversations)")!, text: "hello", sentAt: Date()),
                            subject: PersonalDataSubject(visitor: VisitorUID(rawValue: "v\(n % conversations)")!, mayCreateKey: true))
                        _ = try await store.append([event], to: conversation.messagesStream, tenant: tenant, expectedVersion: .any)
                        let at = Date().timeIntervalSince1970
                        committed.times.withLock { $0[WebhookMessage.messageID(event.eventId)] = at }
                    }
                }
            }
        }
        return committed.times.withLock { $0 }
    }

    final class Commits: Sendable {
        let times = Mutex<[String: Double]>([:])
    }
}

/// An HTTP/1.1 receiver on loopback: notes when each `webhook-id` first arrived (accepted), answers 200 at
/// once, or 503 to the first attempt of every `refuseEvery`th message.
final class Receiver: Sendable {
    let port: Int
    private let channel: any Channel
    private let state = Mutex(State())

    struct State {
        var arrivals: [String: Double] = [:]
        var attempts: [String: Int] = [:]
        var seen = 0
        var refuseEvery = 0
    }

    private init(port: Int, channel: any Channel) {
        self.port = port
        self.channel = channel
    }

    static func start() async throws -> Receiver {
        let box = Box()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Handler(receiver: { box.receiver.withLock { $0 } })) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let receiver = Receiver(port: channel.localAddress?.port ?? 0, channel: channel)
        box.receiver.withLock { $0 = receiver }
        return receiver
    }

    func stop() { channel.close(promise: nil) }

    final class Box: Sendable {
        let receiver = Mutex<Receiver?>(nil)
    }

    func reset(refuseEvery: Int) { state.withLock { $0 = State(refuseEvery: refuseEvery) } }

    var arrivals: [String: Double] { state.withLock { $0.arrivals } }

    func count(of ids: Dictionary<String, Double>.Keys) -> Int { state.withLock { state in ids.filter { state.arrivals[$0] != nil }.count } }

    /// Whether to accept this attempt of `id`; an accepted one's arrival is noted.
    func receive(_ id: String) -> Bool {
        let now = Date().timeIntervalSince1970
        return state.withLock { state in
            let attempt = state.attempts[id, default: 0] + 1
            state.attempts[id] = attempt
            if attempt == 1 { state.seen += 1 }
            if state.refuseEvery > 0 && attempt == 1 && state.seen % state.refuseEvery == 0 { return false }
            if state.arrivals[id] == nil { state.arrivals[id] = now }
            return true
        }
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        // One per connection, used on its event loop only.
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let receiver: @Sendable () -> Receiver?
        var id = ""

        init(receiver: @escaping @Sendable () -> Receiver?) { self.receiver = receiver }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): id = head.headers.first(name: "webhook-id") ?? ""
            case .body: break
            case .end:
                let accepted = receiver()?.receive(id) ?? false
                var headers = HTTPHeaders()
                headers.add(name: "content-length", value: "0")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: accepted ? .ok : .serviceUnavailable, headers: headers))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}
