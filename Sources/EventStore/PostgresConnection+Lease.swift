import Logging
import NIOCore
import PostgresNIO

extension PostgresConnection {
    /// Runs `body` with this session held as a lease: PostgreSQL ends the session once it has been idle for
    /// `timeout` (`idle_session_timeout`), and while this process is alive a heartbeat (`SELECT 1` every
    /// quarter of `timeout`) keeps it from ever being idle that long.
    ///
    /// For a session that holds an advisory lock saying "this process does the work" (a projection's runner,
    /// a rebuild, the webhook senders, a retention pass). When the process holding it stops without its
    /// socket closing — frozen (SIGSTOP), a paused VM, a hung machine still answering TCP — nothing else
    /// would end the session, and its lock would keep every other process's standby waiting for as long as
    /// the freeze lasts. With the lease, PostgreSQL ends the session `timeout` after the last heartbeat, the
    /// lock goes free and a standby takes over. The frozen process, when it wakes, finds its session gone:
    /// its next query fails and it starts again as a standby. Work done on the session itself is fenced by
    /// that; work it does elsewhere must be fenced by its own checks (a projection's checkpoint, a webhook
    /// delivery's row).
    ///
    /// `idle_in_transaction_session_timeout` covers a session frozen inside a transaction; this covers one
    /// frozen between them. The setting is reset when `body` returns, before the connection goes back to the
    /// pool. With `timeout` nil, `body` runs on the session as it is.
    ///
    /// With a `role`, the session's `application_name` is `convo ROLE PID@HOST`
    /// (``ProcessInstance/sessionName(_:)``) while the lease lasts: `pg_stat_activity` shows which process
    /// holds which lease.
    ///
    /// - Throws: what `body` throws; setting the timeout's errors. PostgreSQL before 14, which has no such
    ///   setting, runs `body` without the lease, saying so in a warning.
    public func asLease<T: Sendable>(timeout: Duration?, role: String? = nil, logger: Logger, _ body: () async throws -> T) async throws -> T {
        guard let timeout else { return try await body() }
        let milliseconds = max(1000, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let name = role.map(ProcessInstance.sessionName)
        do {
            _ = try await collect(
                """
                SELECT set_config('idle_session_timeout', \("\(milliseconds)"), false),
                       set_config('application_name', coalesce(\(name), current_setting('application_name')), false)
                """, logger: logger)
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "42704" {
            // PostgreSQL before 14 has no idle_session_timeout: the session is held until its socket closes.
            logger.warning(
                "this PostgreSQL has no idle_session_timeout (version 14 or later has): a frozen instance keeps its locks until its connection closes",
                metadata: ["convo.error": "\(String(reflecting: error))"])
            return try await body()
        }
        // The heartbeat runs on the connection's event loop, not in a task: a process whose concurrency pool is
        // busy (CPU-bound folds, blocking calls) for longer than the lease is still alive, and a beat waiting
        // for a pool thread would let PostgreSQL end its session. A beat's query is queued behind the body's
        // on the one connection; the next is scheduled a quarter of the timeout after it completes.
        let beat = TimeAmount.milliseconds(milliseconds / 4)
        let heartbeat = eventLoop.scheduleRepeatedAsyncTask(initialDelay: beat, delay: beat) { task in
            guard !self.isClosed else {
                task.cancel()
                return self.eventLoop.makeSucceededVoidFuture()
            }
            return self.query("SELECT 1", logger: logger).map { _ in }.recover { error in
                // A closed session ends the heartbeat (a query written to it may never complete, which only
                // stops the beats); anything else (a failed transaction the beat landed in) is the body's to
                // meet, and the next beat tries again.
                logger.debug("session heartbeat failed", metadata: ["convo.error": "\(error)"])
            }
        }
        let outcome: Result<T, any Error>
        do {
            outcome = .success(try await body())
        } catch {
            outcome = .failure(error)
        }
        heartbeat.cancel()
        if !isClosed {
            // What RESET would give each (the connection's own), in one round trip.
            _ = try? await whileOpen {
                try await $0.collect(
                    "SELECT set_config(name, reset_val, false) FROM pg_settings WHERE name IN ('idle_session_timeout', 'application_name')",
                    logger: logger)
            }
        }
        return try outcome.get()
    }
}
