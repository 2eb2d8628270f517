import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import Metrics
import NIOCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// How many connections `convo serve` holds and for how long, so that no client, with or without a key,
/// can take the process's descriptors: past them `accept` fails, and with it PostgreSQL and Redis.
struct ConnectionLimits: Sendable {
    /// The most client connections open at once; past it a new connection is answered 503 and closed.
    var maxConnections: Int
    /// How long a connection may go without a complete request head (from its opening, or from its
    /// previous response): an idle keep-alive, an idle socket and an unfinished head are all closed then.
    /// A request being answered (an event stream too) is never cut by it.
    var idleTimeout: Duration

    init(maxConnections: Int = 4096, idleTimeout: Duration = .seconds(30)) {
        self.maxConnections = max(1, maxConnections)
        self.idleTimeout = idleTimeout
    }

    /// Descriptors kept out of the connection budget: the database and Redis pools, ``refusing``, and this
    /// many more for files, the listening socket, DNS, and the AI provider's and webhooks' connections.
    static let spareDescriptors = 64

    /// Connections past ``maxConnections`` accepted at once to be answered 503; past them the server stops
    /// accepting until some close, and later ones wait in the listen backlog (the kernel's, not this
    /// process's descriptors). Without this bound a burst (a backlog filled while the process was paused, a
    /// flood while the concurrency pool is busy and refusals wait for it) is accepted faster than it is
    /// refused and takes the process to its descriptor limit, where not only `accept` fails: libdispatch
    /// ends a process whose check of its worker threads (a /proc file opened each second while work waits)
    /// finds no descriptor.
    static let refusing = 32

    /// The most client connections accepted at once: the budget and those being refused.
    var acceptLimit: Int { maxConnections + Self.refusing }

    /// Raises the soft descriptor limit to the hard one, and returns the connection limit that leaves
    /// `reserved` descriptors (the database and Redis pools) plus ``spareDescriptors`` and ``refusing`` free.
    func fitted(reserving reserved: Int, logger: Logger) -> ConnectionLimits {
        let available = Self.raiseDescriptorLimit(logger: logger)
        let budget = available - reserved - Self.spareDescriptors - Self.refusing
        var fitted = self
        if budget < maxConnections {
            fitted.maxConnections = max(1, budget)
            logger.notice(
                "fewer connections than asked: the descriptor limit leaves room for \(fitted.maxConnections)",
                metadata: ["convo.descriptors": "\(available)", "convo.reserved": "\(reserved + Self.spareDescriptors + Self.refusing)"])
        }
        return fitted
    }

    /// Sets the soft `RLIMIT_NOFILE` to the hard one; returns the soft limit now in force.
    static func raiseDescriptorLimit(logger: Logger) -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 {
                limit = raised
            } else {
                logger.warning("could not raise the descriptor limit", metadata: ["convo.errno": "\(errno)"])
            }
        }
        return limit.rlim_cur > rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
    }
}

/// Counts the server's client connections.
final class ConnectionCounter: Sendable {
    private let open = Atomic<Int>(0)
    let refused = Counter(label: "convo.http.connections_refused")
    let gauge = Gauge(label: "convo.http.connections")

    var current: Int { open.load(ordering: .relaxed) }

    /// Counts a new connection; `false` when it is past `limit` (it is counted until it closes all the same).
    func opened(limit: Int) -> Bool {
        let now = open.wrappingAdd(1, ordering: .relaxed).newValue
        gauge.record(now)
        return now <= limit
    }

    func closed() {
        gauge.record(open.wrappingSubtract(1, ordering: .relaxed).newValue)
    }
}

/// HTTP/1.1 connections within ``ConnectionLimits``: Hummingbird's own channel with its idle timeout, and
/// a connection past the limit answered 503 (`Retry-After`) and closed at once, rather than left waiting
/// in the listen backlog.
struct GuardedHTTP1Channel: ServerChildChannel {
    struct Value: ServerChildChannelValue {
        let inner: HTTP1Channel.Value
        let admitted: Bool
        var channel: any Channel { inner.channel }
    }

    let inner: HTTP1Channel
    let limits: ConnectionLimits
    let counter: ConnectionCounter

    static let refusalBody = #"{"error":{"code":"too_many_connections","message":"the server holds as many connections as it may; retry shortly"}}"#

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let admitted = counter.opened(limit: limits.maxConnections)
        let counter = self.counter
        channel.closeFuture.whenComplete { _ in counter.closed() }
        return inner.setup(channel: channel, logger: logger).map { Value(inner: $0, admitted: admitted) }
    }

    func handle(value: Value, logger: Logger) async {
        guard value.admitted else {
            counter.refused.increment()
            // Answered without reading the request, then closed (the client may send it meanwhile).
            try? await value.inner.executeThenClose { _, outbound in
                var headers = HTTPFields()
                headers[.contentType] = "application/json"
                headers[.retryAfter] = "1"
                headers[.connection] = "close"
                headers[.contentLength] = "\(Self.refusalBody.utf8.count)"
                try await outbound.write(.head(HTTPResponse(status: .serviceUnavailable, headerFields: headers)))
                try await outbound.write(.body(ByteBuffer(string: Self.refusalBody)))
                try await outbound.write(.end(nil))
            }
            return
        }
        await inner.handle(value: value.inner, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// HTTP/1.1 within `limits` (see ``GuardedHTTP1Channel``).
    static func guarded(_ limits: ConnectionLimits, counter: ConnectionCounter) -> HTTPServerBuilder {
        .init { responder in
            GuardedHTTP1Channel(
                inner: HTTP1Channel(responder: responder, configuration: .init(idleTimeout: .nanoseconds(limits.idleTimeout.nanosecondsClamped))),
                limits: limits, counter: counter)
        }
    }
}

extension Duration {
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : scaled + attoseconds / 1_000_000_000
    }
}
