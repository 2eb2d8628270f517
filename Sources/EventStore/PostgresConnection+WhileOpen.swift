import NIOCore
import PostgresNIO
import Synchronization

extension PostgresConnection {
    /// Runs `body` with this connection and returns what it returns, but gives up at once when the
    /// connection closes, throwing ``EventStoreError/Code/unavailable``, without waiting for `body`.
    ///
    /// For every use of a connection (see ``PostgresClient/withOpenConnection(_:)``), and above all for work
    /// that holds one for a long time (a projection runner and its advisory lock, a `LISTEN`). PostgresNIO
    /// 1.33 drops a query written to a connection the server has already closed without completing it, so
    /// such a query's `await` never returns: after a PostgreSQL restart its caller would hang for ever, and a
    /// graceful shutdown would wait on it.
    ///
    /// When it gives up, `body` runs on in a task of its own, cancelled: it ends at its next cancellation
    /// check or failed query, or stays suspended on the dropped query, holding only memory. That task, and
    /// a scan's page read given up at its outage (``PostgresEventStore/scanAll(after:batchSize:opening:_:)``), are
    /// the store's unstructured tasks: nothing else can stop waiting for a promise that is never completed. Cancelling the caller cancels `body`, which finishes its clean-up on a live connection.
    ///
    /// - Throws: what `body` throws; ``EventStoreError`` (`unavailable`) when the connection closed first.
    public func whileOpen<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        guard !isClosed else { throw EventStoreError(code: .unavailable, message: "the PostgreSQL connection was closed") }
        let outcome = FirstOutcome<T>()
        // Started on this thread (no hop to begin): the body runs here up to its first suspension.
        let work = Task.immediate {
            do { outcome.offer(.success(try await body(self)), fromBody: true) } catch { outcome.offer(.failure(error), fromBody: true) }
        }
        let watch = ConnectionCloseWatch.shared.watch(self) {
            outcome.offer(.failure(EventStoreError(code: .unavailable, message: "the PostgreSQL connection was closed")))
        }
        let result = await withTaskCancellationHandler {
            await outcome.value()
        } onCancel: {
            work.cancel()
        }
        ConnectionCloseWatch.shared.unwatch(watch)
        if !outcome.bodyFinished { work.cancel() }
        return try result.get()
    }
}

/// Calls back the waiters of a connection when it closes, with one callback on its `closeFuture` however
/// many waiters come and go (a callback per query would pile up on a connection that lives for days).
final class ConnectionCloseWatch: Sendable {
    static let shared = ConnectionCloseWatch()

    struct Token: Sendable {
        var connection: ObjectIdentifier
        var id: UInt64
    }

    private struct State {
        var nextID: UInt64 = 0
        /// Waiters by connection; a connection is here from its first watch until it closes.
        var waiters: [ObjectIdentifier: [UInt64: @Sendable () -> Void]] = [:]
    }

    private let state = Mutex(State())

    /// Calls `onClose` once `connection` closes (at once when it already has), unless unwatched first.
    func watch(_ connection: PostgresConnection, onClose: @escaping @Sendable () -> Void) -> Token {
        let key = ObjectIdentifier(connection)
        let (token, isFirst) = state.withLock { state -> (Token, Bool) in
            state.nextID &+= 1
            let isFirst = state.waiters[key] == nil
            state.waiters[key, default: [:]][state.nextID] = onClose
            return (Token(connection: key, id: state.nextID), isFirst)
        }
        if isFirst {
            connection.closeFuture.whenComplete { _ in
                let waiters = self.state.withLock { $0.waiters.removeValue(forKey: key) } ?? [:]
                for waiter in waiters.values { waiter() }
            }
        }
        if connection.isClosed { onClose() }
        return token
    }

    func unwatch(_ token: Token) {
        state.withLock { state in
            _ = state.waiters[token.connection]?.removeValue(forKey: token.id)
        }
    }
}

/// The first of several outcomes offered concurrently (work, a time-out, a connection's close, a
/// cancellation); later offers are ignored. For racing work that may never end against what ends the wait.
public final class FirstOutcome<Value: Sendable>: Sendable {
    private enum State {
        case empty
        case waiting(CheckedContinuation<Result<Value, any Error>, Never>)
        case done(Result<Value, any Error>)
    }

    private let state = Mutex(State.empty)
    private let finished = Atomic<Bool>(false)

    /// Whether the outcome offered `fromBody` came first.
    public var bodyFinished: Bool { finished.load(ordering: .acquiring) }

    public init() {}

    public func offer(_ result: Result<Value, any Error>, fromBody: Bool = false) {
        let waiter = state.withLock { state -> CheckedContinuation<Result<Value, any Error>, Never>? in
            var waiter: CheckedContinuation<Result<Value, any Error>, Never>?
            switch state {
            case .empty: break
            case .waiting(let continuation): waiter = continuation
            case .done: return nil
            }
            state = .done(result)
            if fromBody { finished.store(true, ordering: .releasing) }
            return waiter
        }
        waiter?.resume(returning: result)
    }

    public func value() async -> Result<Value, any Error> {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> Result<Value, any Error>? in
                if case .done(let value) = state { return value }
                state = .waiting(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
