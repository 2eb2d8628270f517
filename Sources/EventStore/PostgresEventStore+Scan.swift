import Foundation
import Logging
import PostgresNIO
import SharedTypes

extension PostgresEventStore {
    /// Hands `body` every event after `position`, in position order, in batches of up to `batchSize`: page by
    /// page, by the rule of ``readAll(_:after:maxCount:)`` (never an event past one that may still commit with
    /// a lower position), up to the head it finds when it starts. Memory is bounded by two pages
    /// (``scanPageSize`` events each, or `batchSize` when larger), however many events there are.
    ///
    /// Pages, not one query streamed for the whole scan: a streamed query holds its snapshot (and vacuum) for
    /// the scan's length, and PostgresNIO 1.33 stops the process with a precondition failure when the server
    /// closes a connection whose rows wait for the consumer (`RowStreamStateMachine.channelReadComplete`);
    /// a rebuild folding while PostgreSQL restarts would crash. A page is read in full before `body` sees
    /// it, and a page that could not be read because PostgreSQL was unavailable is read again for up to
    /// ``Configuration/scanOutage``: a restart costs the scan a pause, not its progress.
    /// - Returns: how many events were handed out.
    /// - Throws: ``EventStoreError`` when a read fails or `batchSize` is not positive; whatever `body` throws.
    @discardableResult
    /// - Parameter opening: which sealed personal members are opened (a rebuild: only those its folds read).
    public func scanAll(
        after position: Int64, batchSize: Int = 1000, opening: PersonalDataOpening = .all, _ body: ([RecordedEvent]) async throws -> Void
    ) async throws -> Int {
        guard batchSize > 0 else { throw EventStoreError(code: .invalidArgument, message: "a batch holds at least one event") }
        let head = try await headPosition(.allTenants)
        // Whole batches per page: a page's last batch is full unless the page is the last one.
        let pageSize = max(batchSize, Self.scanPageSize / batchSize * batchSize)
        guard position < head else { return 0 }
        var page = try await pageOfAll(after: position, maxCount: pageSize, opening: opening)
        var count = 0
        while let end = page.last?.globalPosition {
            count += page.count
            // The next page is read while `body` takes this one's batches: PostgreSQL and the body then work
            // at once instead of in turn. Memory: two pages.
            let more = page.count == pageSize && end < head
            async let following = more ? pageOfAll(after: end, maxCount: pageSize, opening: opening) : []
            var start = page.startIndex
            while start < page.endIndex {
                let stop = min(start + batchSize, page.endIndex)
                try await body(Array(page[start..<stop]))
                start = stop
            }
            page = try await following
        }
        return count
    }

    /// How many events ``scanAll(after:batchSize:_:)`` reads per query: few enough to keep a scan's memory
    /// small (a few megabytes of rows), many enough that a query's round trip and planning are a small share.
    public static let scanPageSize = 10_000

    /// One page of the scan. A page is only read, so one that failed because PostgreSQL was unavailable (a
    /// pooled connection a restart had closed, a server still starting) is read again, after a pause that
    /// doubles up to 2 s, until ``Configuration/scanOutage`` has passed since the page was first asked for:
    /// a rebuild of millions of events goes on across a restart instead of starting over. An attempt still
    /// waiting at that moment is cancelled: while PostgreSQL is down, PostgresNIO's pool keeps a request
    /// waiting for a connection until its circuit breaker opens (60 s).
    private func pageOfAll(after position: Int64, maxCount: Int, opening: PersonalDataOpening) async throws -> [RecordedEvent] {
        let query: PostgresQuery = """
            SELECT \(unescaped: Self.columns) FROM events
            WHERE global_position > \(position) AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY global_position LIMIT \(maxCount)
            """
        let deadline = ContinuousClock.now + configuration.scanOutage
        var pause = Duration.milliseconds(50)
        var lastError: EventStoreError?
        while true {
            do {
                if let page = try await Self.until(deadline, { try await self.fetch(query, operation: "scan the events", opening: opening) }) { return page }
                break
            } catch let error as EventStoreError where error.code == .unavailable {
                lastError = error
                guard ContinuousClock.now + pause < deadline else { break }
                logger.warning("scan: PostgreSQL unavailable, reading the page again", metadata: ["convo.after": "\(position)", "error": "\(error)"])
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(2))
            }
        }
        throw EventStoreError(
            code: .unavailable, message: "scan the events: no page read from PostgreSQL within \(configuration.scanOutage)", cause: lastError)
    }

    /// `body`'s result, or nil once `deadline` passes first. `body` is then cancelled and not waited for: a
    /// query that gets no answer (a PostgreSQL frozen or behind a lock, a query PostgresNIO dropped) does not
    /// react to cancellation, and waiting for it would make the outage unbounded. It runs on in a task of its
    /// own until its query ends, holding its connection. Cancelling the caller gives up the same way.
    private static func until<T: Sendable>(_ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
        let outcome = FirstOutcome<T?>()
        let attempt = Task {
            do { outcome.offer(.success(try await body()), fromBody: true) } catch { outcome.offer(.failure(error), fromBody: true) }
        }
        let timer = Task {
            try? await Task.sleep(until: deadline)
            outcome.offer(.success(nil))
        }
        let result = await withTaskCancellationHandler {
            await outcome.value()
        } onCancel: {
            outcome.offer(.failure(CancellationError()))
        }
        timer.cancel()
        if !outcome.bodyFinished { attempt.cancel() }
        return try result.get()
    }

    /// Reads up to `maxCount` events after `position` on `connection`, for callers that must read inside
    /// their own transaction; the same rule as ``readAll(_:after:maxCount:)``.
    ///
    /// - Throws: ``EventStoreError`` when the read fails.
    /// - Parameter opening: which sealed personal members are opened.
    public func readAll(
        on connection: PostgresConnection, after position: Int64, maxCount: Int, opening: PersonalDataOpening = .all
    ) async throws -> [RecordedEvent] {
        var found: [RecordedEvent] = []
        do {
            let rows = try await connection.collect(
                """
                SELECT \(unescaped: Self.columns) FROM events
                WHERE global_position > \(position) AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY global_position LIMIT \(maxCount)
                """, logger: logger)
            for try await event in Self.events(in: rows) { found.append(event) }
        } catch {
            throw Self.mapError(error, operation: "read all")
        }
        // Every row is read: the keys come over the same connection, inside the caller's transaction.
        return try await vault.open(found, on: connection, opening: opening)
    }

    /// Counts the events after `position` that readers can see now: a total for progress reports.
    ///
    /// - Throws: ``EventStoreError`` when the count fails.
    public func countEvents(after position: Int64 = 0, limit: Int64? = nil) async throws -> Int64 {
        do {
            let rows =
                if let limit {
                    try await client.queryOpen(
                        """
                        SELECT count(*) FROM (SELECT 1 FROM events WHERE global_position > \(position)
                            AND transaction_id < pg_snapshot_xmin(pg_current_snapshot()) LIMIT \(limit)) AS counted
                        """, logger: logger)
                } else {
                    try await client.queryOpen(
                        "SELECT count(*) FROM events WHERE global_position > \(position) AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
                        logger: logger)
                }
            for try await count in rows.decode(Int64.self) { return count }
            return 0
        } catch {
            throw Self.mapError(error, operation: "count the events")
        }
    }

    /// How long ago, in seconds by PostgreSQL's clock, the first committed event after `position` was
    /// recorded, whether readers may take it yet or not: how long a reader at `position` has kept an event
    /// waiting; 0 when there is none.
    ///
    /// Readers take an event only once no older transaction can still commit (see
    /// ``readAll(_:after:maxCount:)``), and PostgreSQL judges that across the whole server: a transaction
    /// left open in any database of it (a session idle in transaction, a long report, a forgotten prepared
    /// transaction) holds every reader back, and a measure of the readable events alone would say nothing
    /// is waiting while nothing moves. ``heldBack(after:)`` says by what.
    ///
    /// - Throws: ``EventStoreError`` when the read fails.
    public func waitingSeconds(after position: Int64) async throws -> Double {
        do {
            let rows = try await client.queryOpen(
                """
                SELECT greatest(0, extract(epoch FROM clock_timestamp() - recorded_at))::float8 FROM events WHERE global_position > \(position)
                ORDER BY global_position LIMIT 1
                """, logger: logger)
            for try await seconds in rows.decode(Double.self) { return seconds }
            return 0
        } catch {
            throw Self.mapError(error, operation: "read the oldest waiting event")
        }
    }

    /// Committed events after a position that no reader may take yet, and the open transaction they wait for.
    public struct HeldBack: Sendable, Codable, Equatable {
        /// How many, counted up to ``eventsCountedUpTo``.
        public var events: Int64
        /// Where the count of ``events`` stopped: `events` equal to it means at least that many.
        public var eventsCountedUpTo: Int64
        /// How long the oldest of them has waited, in seconds.
        public var waitingSeconds: Double
        /// The transaction every reader waits for, as `pg_stat_activity` or `pg_prepared_xacts` show it
        /// (`pid 4242, database reports, application psql, idle in transaction, open 95 s`), or its id alone
        /// when this role may not see its session.
        public var by: String

        /// `N events committed but not yet readable for S s`: what every report of it starts with.
        public var summary: String { "\(events >= eventsCountedUpTo ? "at least " : "")\(events) events committed but not yet readable for \(Int(waitingSeconds)) s" }
    }

    /// What holds back the committed events after `position` that readers may not take yet: `nil` when none
    /// has waited `atLeast` (a transaction appending now holds the ones after it back for a moment). They are
    /// counted up to `limit`.
    ///
    /// - Throws: ``EventStoreError`` when the read fails.
    public func heldBack(after position: Int64, atLeast: Duration = .seconds(1), countingUpTo limit: Int64 = 1_000_000) async throws -> HeldBack? {
        do {
            let oldest = try await client.queryOpen(
                """
                SELECT greatest(0, extract(epoch FROM clock_timestamp() - recorded_at))::float8 FROM events
                WHERE global_position > \(position) AND transaction_id >= pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY global_position LIMIT 1
                """, logger: logger)
            var waited: Double?
            for try await seconds in oldest.decode(Double.self) { waited = seconds }
            guard let waited, waited >= atLeast.inSeconds else { return nil }
            let counted = try await client.queryOpen(
                """
                SELECT count(*) FROM (SELECT 1 FROM events WHERE global_position > \(position)
                    AND transaction_id >= pg_snapshot_xmin(pg_current_snapshot()) LIMIT \(limit)) AS held
                """, logger: logger)
            var events: Int64 = 0
            for try await count in counted.decode(Int64.self) { events = count }
            // The oldest running transaction's id as the 32-bit xid the catalogue views show.
            let holder = try await client.queryOpen(
                """
                WITH horizon AS (
                    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xid8,
                           (pg_snapshot_xmin(pg_current_snapshot())::text::bigint % 4294967296)::text AS xid
                )
                SELECT coalesce(
                    (SELECT 'pid ' || a.pid || ', database ' || coalesce(a.datname, '?') || ', application '
                            || coalesce(nullif(a.application_name, ''), '?') || ', ' || coalesce(a.state, '?')
                            || coalesce(', open ' || round(extract(epoch FROM clock_timestamp() - a.xact_start))::bigint || ' s', '')
                     FROM pg_stat_activity a WHERE a.backend_xid::text = horizon.xid LIMIT 1),
                    (SELECT 'prepared transaction ' || quote_literal(p.gid) || ', database ' || p.database || ', prepared '
                            || round(extract(epoch FROM clock_timestamp() - p.prepared))::bigint || ' s ago'
                     FROM pg_prepared_xacts p WHERE p.transaction::text = horizon.xid LIMIT 1),
                    'transaction ' || horizon.xid8::text || ' (its session is not visible to this role)')
                FROM horizon
                """, logger: logger)
            var by = "an open transaction"
            for try await text in holder.decode(String.self) { by = text }
            return HeldBack(events: events, eventsCountedUpTo: limit, waitingSeconds: waited, by: by)
        } catch {
            throw Self.mapError(error, operation: "read what holds the readers back")
        }
    }
}

extension PostgresEventStore {
    /// Hands `body` every event up to and including `position`, in position order, on `connection` (inside
    /// the caller's transaction and snapshot); only those of `streams` of `tenant` when given.
    ///
    /// For readers that already know every event up to `position` has committed, such as a projection's
    /// checkpoint read in the same snapshot. Page by page (``scanPageSize`` events), each gathered in full
    /// (``PostgresConnection/collect(_:logger:file:line:)``) before `body` sees it: never a streamed query
    /// whose rows wait while sealed members are opened, which PostgresNIO 1.33 turns into a crash when
    /// PostgreSQL closes the connection meanwhile.
    /// - Throws: ``EventStoreError`` when the read fails; whatever `body` throws.
    public func scan(
        on connection: PostgresConnection, through position: Int64, tenant: TenantID? = nil, streams: [StreamName]? = nil,
        _ body: (RecordedEvent) throws -> Void
    ) async throws {
        var last: Int64 = 0
        while true {
            let query: PostgresQuery =
                if let tenant, let streams {
                    """
                    SELECT \(unescaped: Self.columns) FROM events
                    WHERE tenant_id = \(tenant.rawValue) AND stream_name = ANY(\(streams.map(\.description)))
                      AND global_position > \(last) AND global_position <= \(position)
                    ORDER BY global_position LIMIT \(Self.scanPageSize)
                    """
                } else {
                    """
                    SELECT \(unescaped: Self.columns) FROM events WHERE global_position > \(last) AND global_position <= \(position)
                    ORDER BY global_position LIMIT \(Self.scanPageSize)
                    """
                }
            var page: [RecordedEvent] = []
            do {
                for try await event in Self.events(in: try await connection.collect(query, logger: logger)) { page.append(event) }
            } catch {
                throw Self.mapError(error, operation: "scan the events")
            }
            // The keys come from the pool, as any reader's: an erasure since the caller's snapshot shows.
            for opened in try await vault.open(page) { try body(opened) }
            guard page.count == Self.scanPageSize, let end = page.last?.globalPosition else { return }
            last = end
        }
    }
}

extension PostgresEventStore {
    /// A visitor's events of one type, in position order: those whose metadata or data names the visitor
    /// (`visitorUid`), read through the audit index on that very expression.
    ///
    /// - Throws: ``EventStoreError`` when the read fails.
    public func readVisitorEvents(_ visitor: VisitorUID, type: String, tenant: TenantID, maxCount: Int = 10_000) async throws -> [RecordedEvent] {
        try await fetch(
            """
            SELECT \(unescaped: Self.columns) FROM events
            WHERE tenant_id = \(tenant.rawValue) AND coalesce(metadata ->> 'visitorUid', data ->> 'visitorUid') = \(visitor.rawValue)
              AND event_type = \(type)
            ORDER BY global_position LIMIT \(maxCount)
            """, operation: "read a visitor's events")
    }

    /// Events read by a caller's own query, their personal members opened (or marked erased) as every read
    /// of the store opens them.
    ///
    /// - Throws: as ``readAll(_:after:maxCount:)``.
    public func openPersonalData(_ events: [RecordedEvent]) async throws -> [RecordedEvent] {
        try await vault.open(events)
    }

    /// Events as stored, sealed members left sealed: for measuring what opening costs (`convo-bench personal-data --diagnose`).
    public func readAllUnopened(after position: Int64, maxCount: Int) async throws -> [RecordedEvent] {
        var events: [RecordedEvent] = []
        let rows = try await client.queryOpen(
            "SELECT \(unescaped: Self.columns) FROM events WHERE global_position > \(position) ORDER BY global_position LIMIT \(maxCount)", logger: logger)
        for try await event in Self.events(in: rows) { events.append(event) }
        return events
    }

    /// The visitors of a tenant holding a live data key whose latest event (one naming them, through the
    /// audit index on that very expression) is older than `seconds`: what a retention period forgets.
    ///
    /// - Returns: each visitor's uid and latest event's time, oldest first.
    public func inactiveSubjects(tenant: String, quietFor seconds: Double, limit: Int) async throws -> [(String, Date)] {
        do {
            var found: [(String, Date)] = []
            let rows = try await client.queryOpen(
                """
                SELECT k.subject, last.at FROM (SELECT DISTINCT subject FROM personal_data_keys WHERE tenant_id = \(tenant) AND wrapped IS NOT NULL) k
                CROSS JOIN LATERAL (
                    SELECT e.recorded_at AS at FROM events e
                    WHERE e.tenant_id = \(tenant) AND coalesce(e.metadata ->> 'visitorUid', e.data ->> 'visitorUid') = k.subject
                    ORDER BY e.global_position DESC LIMIT 1
                ) last
                WHERE last.at < now() - make_interval(secs => \(seconds))
                ORDER BY last.at LIMIT \(limit)
                """, logger: logger)
            for try await row in rows.decode((String, Date).self) { found.append(row) }
            return found
        } catch {
            throw Self.mapError(error, operation: "find inactive visitors")
        }
    }

    /// Whether an event with this id is stored.
    public func containsEvent(_ id: UUID) async throws -> Bool {
        do {
            for try await _ in try await client.queryOpen("SELECT 1 FROM events WHERE event_id = \(id)", logger: logger) { return true }
            return false
        } catch {
            throw Self.mapError(error, operation: "look for an event")
        }
    }
}
