import Logging
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
    /// - Throws: what `body` throws; setting the timeout's errors. PostgreSQL before 14, which has no such
    ///   setting, runs `body` without the lease, saying so in a warning.
    public func asLease<T: Sendable>(timeout: Duration?, logger: Logger, _ body: () async throws -> T) async throws -> T {
        guard let timeout else { return try await body() }
        let milliseconds = max(1000, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        do {
            _ = try await collect("SELECT set_config('idle_session_timeout', \("\(milliseconds)"), false)", logger: logger)
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "42704" {
            // PostgreSQL before 14 has no idle_session_timeout: the session is held until its socket closes.
            logger.warning(
                "this PostgreSQL has no idle_session_timeout (version 14 or later has): a frozen instance keeps its locks until its connection closes",
                metadata: ["convo.error": "\(String(reflecting: error))"])
            return try await body()
        }
        let beat = Duration.milliseconds(milliseconds / 4)
        let outcome: Result<T, any Error>
        do {
            outcome = .success(try await withThrowingTaskGroup(of: Void.self, returning: T.self) { group in
                group.addTask {
                    while !Task.isCancelled {
                        try await Task.sleep(for: beat)
                        do {
                            _ = try await self.whileOpen { try await $0.collect("SELECT 1", logger: logger) }
                        } catch {
                            // A closed session ends the heartbeat; anything else (a failed transaction the beat
                            // landed in) is the body's to meet, and the next beat tries again.
                            if self.isClosed || Task.isCancelled { return }
                            logger.debug("session heartbeat failed", metadata: ["convo.error": "\(error)"])
                        }
                    }
                }
                defer { group.cancelAll() }
                return try await body()
            })
        } catch {
            outcome = .failure(error)
        }
        if !isClosed { _ = try? await whileOpen { try await $0.collect("RESET idle_session_timeout", logger: logger) } }
        return try outcome.get()
    }
}
