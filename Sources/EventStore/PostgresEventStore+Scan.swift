import Foundation
import Logging
import PostgresNIO
import SharedTypes

extension PostgresEventStore {
    /// Streams every event after `position`, in position order, to `body` in batches of up to `batchSize`,
    /// with one query whose rows arrive as they are consumed: memory stays bounded by the batch, however many
    /// events there are. Like ``readAll(_:after:maxCount:)`` it never hands out an event past one that may
    /// still commit with a lower position.
    ///
    /// - Returns: how many events were handed out.
    /// - Throws: ``EventStoreError`` when the read fails; whatever `body` throws.
    @discardableResult
    public func scanAll(after position: Int64, batchSize: Int = 1000, _ body: ([RecordedEvent]) async throws -> Void) async throws -> Int {
        let query: PostgresQuery = """
            SELECT \(unescaped: Self.columns) FROM events
            WHERE global_position > \(position) AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY global_position
            """
        var batch: [RecordedEvent] = []
        batch.reserveCapacity(batchSize)
        var count = 0
        do {
            for try await event in Self.events(in: try await client.queryOpen(query, logger: logger)) {
                batch.append(event)
                if batch.count == batchSize {
                    count += batch.count
                    // Handed over, not copied: opening changes the events in place.
                    let full = batch
                    batch = []
                    batch.reserveCapacity(batchSize)
                    try await body(try await vault.open(full))
                }
            }
        } catch let error as EventStoreError {
            throw error
        } catch let error as PSQLError {
            throw Self.mapError(error, operation: "scan the events")
        }
        if !batch.isEmpty {
            count += batch.count
            try await body(try await vault.open(batch))
        }
        return count
    }

    /// Reads up to `maxCount` events after `position` on `connection`, for callers that must read inside
    /// their own transaction; the same rule as ``readAll(_:after:maxCount:)``.
    ///
    /// - Throws: ``EventStoreError`` when the read fails.
    public func readAll(on connection: PostgresConnection, after position: Int64, maxCount: Int) async throws -> [RecordedEvent] {
        var found: [RecordedEvent] = []
        do {
            let rows = try await connection.query(
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
        return try await vault.open(found, on: connection)
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

    /// How long ago, in seconds by PostgreSQL's clock, the first event readers can see after `position` was
    /// recorded: how long a reader at `position` has kept an event waiting; 0 when there is none.
    ///
    /// - Throws: ``EventStoreError`` when the read fails.
    public func waitingSeconds(after position: Int64) async throws -> Double {
        do {
            let rows = try await client.queryOpen(
                """
                SELECT greatest(0, extract(epoch FROM clock_timestamp() - recorded_at))::float8 FROM events WHERE global_position > \(position) AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY global_position LIMIT 1
                """, logger: logger)
            for try await seconds in rows.decode(Double.self) { return seconds }
            return 0
        } catch {
            throw Self.mapError(error, operation: "read the oldest waiting event")
        }
    }
}

extension PostgresEventStore {
    /// Hands `body` every event up to and including `position`, in position order, on `connection` (inside
    /// the caller's transaction and snapshot); only those of `streams` of `tenant` when given.
    ///
    /// For readers that already know every event up to `position` has committed, such as a projection's
    /// checkpoint read in the same snapshot.
    /// - Throws: ``EventStoreError`` when the read fails; whatever `body` throws.
    public func scan(
        on connection: PostgresConnection, through position: Int64, tenant: TenantID? = nil, streams: [StreamName]? = nil,
        _ body: (RecordedEvent) throws -> Void
    ) async throws {
        let rows: PostgresRowSequence
        do {
            if let tenant, let streams {
                rows = try await connection.query(
                    """
                    SELECT \(unescaped: Self.columns) FROM events
                    WHERE tenant_id = \(tenant.rawValue) AND stream_name = ANY(\(streams.map(\.description))) AND global_position <= \(position)
                    ORDER BY global_position
                    """, logger: logger)
            } else {
                rows = try await connection.query(
                    "SELECT \(unescaped: Self.columns) FROM events WHERE global_position <= \(position) ORDER BY global_position", logger: logger)
            }
        } catch {
            throw Self.mapError(error, operation: "scan the events")
        }
        do {
            // In batches: opening sealed members asks for their keys once per batch.
            var batch: [RecordedEvent] = []
            batch.reserveCapacity(500)
            for try await event in Self.events(in: rows) {
                batch.append(event)
                if batch.count == 500 {
                    // The keys come from the pool: this connection is still streaming the scan's rows.
                    for opened in try await vault.open(batch) { try body(opened) }
                    batch.removeAll(keepingCapacity: true)
                }
            }
            for opened in try await vault.open(batch) { try body(opened) }
        } catch let error as PSQLError {
            throw Self.mapError(error, operation: "scan the events")
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
