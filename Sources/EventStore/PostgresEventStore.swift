import Foundation
import Logging
import Metrics
import NIOCore
import PostgresNIO
import ServiceLifecycle
import SharedTypes
import Synchronization

/// The event store on PostgreSQL, through PostgresNIO's `PostgresClient`.
///
/// An append with an exact expectation (a version, or no stream: what the responder and ingest of a new
/// conversation use) is one prepared INSERT statement (``ExactAppendStatement``); anything it cannot
/// settle (an expectation not met, a retry, an id stored elsewhere) and every append that computes its
/// version (`.any`, `.streamExists`) runs `convo_append` (see `Migrations/0010_event_hash_chain.sql`),
/// also prepared, in one round trip. Both chain each event's hash to the one before it in its stream. Positions grow with transaction ids (the id shifted left 16 bits plus the
/// event's place in the append), and reads of the whole store take only rows whose transaction id is below
/// the oldest transaction still running, so a reader that follows positions never skips a late commit.
///
/// As a `Service`, ``run()`` tells other processes about local appends (`NOTIFY`) and wakes local
/// subscriptions when other processes append (`LISTEN`); without it, subscriptions fall back to polling.
public final class PostgresEventStore: EventStore, Service {
    /// How the store behaves.
    public struct Configuration: Sendable {
        /// How often a subscription looks for new events when no notification arrives. Default: 1 second.
        public var pollInterval: Duration
        /// The PostgreSQL channel appends are announced on. Default: `convo_events`.
        public var notificationChannel: String
        /// How many events a subscription reads per query. Default: 500.
        public var subscriptionPageSize: Int
        /// The most events one append may carry. Default: 1,000.
        public var maxEventsPerAppend: Int
        /// How long a long scan (``PostgresEventStore/scanAll(after:batchSize:_:)``, under every rebuild)
        /// keeps trying to read its next page while PostgreSQL is unavailable, from the first failure, before
        /// it fails with the store's error. Default: 30 seconds.
        public var scanOutage: Duration
        /// The `LISTEN` session's lease (``PostgresConnection/asLease(timeout:role:logger:_:)``): a process
        /// frozen for this long loses its `LISTEN`, so PostgreSQL's notification queue, which cannot be
        /// trimmed past the slowest listener, is not held for as long as the freeze lasts (when the queue
        /// fills, every `NOTIFY` fails). When it wakes it listens again, and anything committed meanwhile is
        /// read then. `nil`: until the socket closes. Default: 20 seconds.
        public var sessionLease: Duration?
        /// How many of the latest events the subscriptions to all tenants' events (projection runners, the
        /// event streams' feed) share, read once for all of them (see ``EventTail``); 0: each reads its own.
        /// Default: 5,000.
        public var sharedTailCapacity: Int

        public init(
            pollInterval: Duration = .seconds(1), notificationChannel: String = "convo_events", subscriptionPageSize: Int = 500,
            maxEventsPerAppend: Int = 1000, scanOutage: Duration = .seconds(30), sessionLease: Duration? = .seconds(20),
            sharedTailCapacity: Int = 5000
        ) {
            self.sessionLease = sessionLease
            self.sharedTailCapacity = sharedTailCapacity
            self.pollInterval = pollInterval
            self.notificationChannel = notificationChannel
            self.subscriptionPageSize = subscriptionPageSize
            self.maxEventsPerAppend = maxEventsPerAppend
            self.scanOutage = scanOutage
        }
    }

    public let client: PostgresClient
    public let configuration: Configuration
    /// Seals and opens visitors' personal data (see ``PersonalDataVault``).
    public let vault: PersonalDataVault
    /// The latest events, shared by the subscriptions to all tenants' events (`nil` when not shared).
    let tail: EventTail?
    let logger: Logger
    let signal = WakeUpSignal()
    private let notifications: AsyncStream<Void>
    let notify: AsyncStream<Void>.Continuation
    let appendedEvents = Counter(label: "convo.eventstore.appended")
    /// Events written by the one-statement batch append (``BatchAppendStatement``), for tests to tell its
    /// path from `convo_append_many`'s.
    let batchStatementEvents = Atomic<Int>(0)
    private let listening = Atomic<Bool>(false)

    /// Whether this store's `LISTEN` is established now: other processes' appends wake its subscriptions
    /// at once (else they are found by polling).
    public var isListening: Bool { listening.load(ordering: .acquiring) }

    /// Subscriptions of this store waiting for new events now.
    public var waitingSubscriptions: Int { signal.waiting }
    let conflicts = Counter(label: "convo.eventstore.conflicts")
    let appendDuration = Timer(label: "convo.eventstore.append.duration")

    /// - Parameters:
    ///   - keyring: the master keys of visitors' data keys; without them, events with personal data can be
    ///     neither appended nor read (their other events can).
    public init(
        client: PostgresClient, configuration: Configuration = Configuration(), keyring: MasterKeyring?,
        vaultConfiguration: PersonalDataVault.Configuration = .init(), logger: Logger
    ) {
        self.client = client
        self.configuration = configuration
        self.vault = PersonalDataVault(
            keyring: keyring, configuration: vaultConfiguration, client: client, channel: configuration.notificationChannel, logger: logger)
        self.logger = logger
        (self.notifications, self.notify) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        self.tail =
            configuration.sharedTailCapacity > 0
            ? EventTail(capacity: configuration.sharedTailCapacity, pageSize: configuration.subscriptionPageSize) { [client, logger] after, count in
                try await Self.fetch(Self.allTenantsQuery(after: after, maxCount: count, types: nil), client: client, logger: logger, operation: "read all")
            } : nil
    }

    // MARK: Append

    @discardableResult
    public func append(_ events: [NewEvent], to stream: StreamName, tenant: TenantID, expectedVersion: ExpectedVersion) async throws -> AppendResult {
        try validate(events, expectedVersion: expectedVersion)
        let start = ContinuousClock.now
        let events = try await vault.seal(events, tenant: tenant)
        var ids: [UUID] = []
        var types: [String] = []
        var data: [JSONB] = []
        var metadata: [JSONB] = []
        ids.reserveCapacity(events.count)
        types.reserveCapacity(events.count)
        data.reserveCapacity(events.count)
        metadata.reserveCapacity(events.count)
        for event in events {
            ids.append(event.eventId)
            types.append(event.type)
            data.append(JSONB(event.data))
            metadata.append(JSONB(try JSONWriter.metadata(event.metadata)))
        }
        let arguments = AppendArguments(
            tenant: tenant.rawValue, stream: stream.description, expected: expectedVersion.sqlValue, ids: ids, types: types, data: data,
            metadata: metadata)
        let statement = AppendStatement(arguments: arguments)
        var recorded: [AppendResult.Recorded] = []
        var duplicate = false
        if expectedVersion.isExactVersion,
            let written = try await fastAppend(ExactAppendStatement(arguments: arguments), stream: stream, expectedVersion: expectedVersion)
        {
            appendDuration.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
            appendedEvents.increment(by: written.count)
            signal.signal()
            notify.yield()
            return AppendResult(stream: stream, events: written, isDuplicate: false)
        }
        var attempt = 0
        while true {
            attempt += 1
            recorded.removeAll(keepingCapacity: true)
            recorded.reserveCapacity(events.count)
            do {
                // Prepared once per connection: the server neither parses nor plans the call again.
                for (id, version, position, at, isDuplicate) in try await client.executeOpen(statement, logger: logger) {
                    recorded.append(.init(eventId: id, streamVersion: version, globalPosition: position, recordedAt: at))
                    duplicate = isDuplicate
                }
                break
            } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" && error.serverInfo?[.constraintName] == "events_stream_version_key" {
                // A racer took the version this append computed or expected; nothing was written.
                switch expectedVersion {
                case .any, .streamExists:
                    // The version was computed from the stream: compute it again.
                    if attempt < 5 { continue }
                    throw mapAppendError(error, stream: stream, expected: expectedVersion)
                case .exact, .noStream:
                    conflicts.increment()
                    let actual = (try? await streamVersion(stream, tenant: tenant)) ?? -1
                    throw EventStoreError.wrongExpectedVersion(stream: stream, expected: expectedVersion, actual: actual)
                }
            } catch let error as PSQLError {
                throw mapAppendError(error, stream: stream, expected: expectedVersion)
            }
        }
        appendDuration.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
        if !duplicate {
            appendedEvents.increment(by: recorded.count)
            signal.signal()
            notify.yield()
        }
        return AppendResult(stream: stream, events: recorded, isDuplicate: duplicate)
    }

    /// An append with an exact expectation (a version, or no stream) as one INSERT: no function, no lock.
    ///
    /// - Returns: the written events; `nil` when the expectation was not met, a racer wrote the version
    ///   first, or an id is stored already, for `convo_append` to answer (a wrong expected version with the
    ///   actual one, a retry of a stored append, an id stored elsewhere), having written nothing.
    /// - Throws: the mapped error of anything else.
    private func fastAppend(_ statement: ExactAppendStatement, stream: StreamName, expectedVersion: ExpectedVersion) async throws -> [AppendResult.Recorded]? {
        let arguments = statement.arguments
        let count = arguments.ids.count
        var written: [AppendResult.Recorded] = []
        written.reserveCapacity(count)
        do {
            if count == 1 {
                // The most common append, without the recursion.
                let single = ExactAppendStatement.Single(
                    tenant: arguments.tenant, stream: arguments.stream, expected: arguments.expected, id: arguments.ids[0], type: arguments.types[0],
                    data: arguments.data[0], metadata: arguments.metadata[0])
                for (id, version, position, at) in try await client.executeOpen(single, logger: logger) {
                    written.append(.init(eventId: id, streamVersion: version, globalPosition: position, recordedAt: at))
                }
            } else {
                for (id, version, position, at) in try await client.executeOpen(statement, logger: logger) {
                    written.append(.init(eventId: id, streamVersion: version, globalPosition: position, recordedAt: at))
                }
            }
        } catch let error as PSQLError
            where error.serverInfo?[.sqlState] == "23505"
            && ["events_stream_version_key", "events_event_id_key"].contains(error.serverInfo?[.constraintName])
        {
            // A racer wrote the version, or an id, first: it may be this very append's original (a retry
            // racing it), which convo_append answers as a duplicate; otherwise it reports the actual version.
            return nil
        } catch let error as PSQLError {
            throw mapAppendError(error, stream: stream, expected: expectedVersion)
        }
        // All or nothing: one statement; no row when the expectation was not met.
        return written.count == count ? written : nil
    }

    func validate(_ events: [NewEvent], expectedVersion: ExpectedVersion) throws {
        guard !events.isEmpty else { throw EventStoreError(code: .invalidArgument, message: "an append needs at least one event") }
        guard events.count <= configuration.maxEventsPerAppend else {
            throw EventStoreError(code: .invalidArgument, message: "an append takes at most \(configuration.maxEventsPerAppend) events")
        }
        if case .exact(let version) = expectedVersion, version < 0 {
            throw EventStoreError(code: .invalidArgument, message: "an expected version is 0 or more")
        }
        var seen = Set<UUID>()
        for event in events {
            guard (1...200).contains(event.type.utf8.count) else {
                throw EventStoreError(code: .invalidArgument, message: "an event type has 1 to 200 characters")
            }
            guard seen.insert(event.eventId).inserted else {
                throw EventStoreError(code: .invalidArgument, message: "event id \(event.eventId) appears twice in one append")
            }
        }
    }

    /// SQLSTATEs that an append's own input causes (convo's CV004, a bad value, a failed check): the caller's
    /// error, not the store's.
    static let invalidInputStates: Set<String> = ["CV004", "22023", "23514", "22P02"]

    /// What a data exception says about the input, without the value.
    static func inputProblem(_ state: String, operation: String) -> String {
        switch state {
        case "22P05", "22021": "\(operation): a text holds a character PostgreSQL cannot store (U+0000)"
        case "22003": "\(operation): a number is out of range"
        case "22001": "\(operation): a value is too long"
        case "22007", "22008": "\(operation): a date or time is out of range"
        default: "\(operation): PostgreSQL refused a value (SQLSTATE \(state))"
        }
    }

    private func mapAppendError(_ error: PSQLError, stream: StreamName, expected: ExpectedVersion) -> EventStoreError {
        let sqlState = error.serverInfo?[.sqlState]
        let detail = error.serverInfo?[.detail]
        switch sqlState {
        case "CV001":
            conflicts.increment()
            return .wrongExpectedVersion(stream: stream, expected: expected, actual: detail.flatMap { Int64($0) } ?? -1)
        case "CV002":
            return EventStoreError(
                code: .duplicateEventID, message: "event id \(detail ?? "?") is already stored at another place than \(stream)",
                stream: stream, cause: error)
        case "23505" where error.serverInfo?[.constraintName] == "events_event_id_key":
            return EventStoreError(code: .duplicateEventID, message: "an event id of this append is being stored elsewhere", stream: stream, cause: error)
        case "23505" where error.serverInfo?[.constraintName] == "events_stream_version_key":
            conflicts.increment()
            return EventStoreError(
                code: .wrongExpectedVersion, message: "stream \(stream) moved on while appending", stream: stream, expected: expected, cause: error)
        case let state? where Self.invalidInputStates.contains(state):
            return EventStoreError(code: .invalidArgument, message: error.serverInfo?[.message] ?? "invalid append", stream: stream, cause: error)
        default:
            return Self.mapError(error, operation: "append to \(stream)")
        }
    }

    /// Maps the error of a write that may have been sent: PostgreSQL's own answer (an error it raised) means
    /// nothing was written; no answer after the write was sent (the connection closed, the wait was
    /// cancelled) leaves the outcome unknown.
    static func mapWriteError(_ error: any Error, sent: Bool, operation: String) -> EventStoreError {
        let mapped = mapError(error, operation: operation)
        guard sent else { return mapped }
        if let error = error as? PSQLError, error.code == .server { return mapped }
        let cancelled = error is CancellationError || (error as? PSQLError)?.code == .queryCancelled
        if mapped.code == .unavailable || cancelled {
            return EventStoreError(code: .outcomeUnknown, message: "\(operation): no answer from PostgreSQL after the write was sent; it may have committed", cause: error)
        }
        return mapped
    }

    /// Maps a PostgresNIO error to the store's error, keeping SQL and values out of the message.
    public static func mapError(_ error: any Error, operation: String) -> EventStoreError {
        if let error = error as? EventStoreError { return error }
        if let error = error as? PostgresTransactionError {
            // The statement that failed inside (or around) a transaction says what happened.
            if let inner = error.closureError ?? error.beginError ?? error.commitError { return mapError(inner, operation: operation) }
        }
        if let error = error as? PSQLError {
            switch error.code {
            case .server:
                let state = error.serverInfo?[.sqlState] ?? "?"
                // Class 08 is a connection exception, 57P0x an administrator shutdown or crash recovery.
                if state.hasPrefix("08") || state.hasPrefix("57P") {
                    return EventStoreError(code: .unavailable, message: "\(operation): PostgreSQL is unavailable (\(state))", cause: error)
                }
                if state.hasPrefix("22") {
                    return EventStoreError(code: .invalidArgument, message: inputProblem(state, operation: operation), cause: error)
                }
                return EventStoreError(code: .storageFailure, message: "\(operation) failed: SQLSTATE \(state)", cause: error)
            case .queryCancelled:
                return EventStoreError(code: .storageFailure, message: "\(operation) was cancelled", cause: error)
            default:
                return EventStoreError(code: .unavailable, message: "\(operation): PostgreSQL is unavailable (\(error.code))", cause: error)
            }
        }
        if error is CancellationError { return EventStoreError(code: .storageFailure, message: "\(operation) was cancelled", cause: error) }
        if error is PostgresDecodingError {
            return EventStoreError(code: .storageFailure, message: "\(operation) failed: a stored value has an unexpected type", cause: error)
        }
        return EventStoreError(code: .unavailable, message: "\(operation): PostgreSQL is unavailable", cause: error)
    }

    // MARK: Read

    public func readStream(_ stream: StreamName, tenant: TenantID, fromVersion: Int64 = 1, maxCount: Int = 1000) async throws -> [RecordedEvent] {
        try Self.checkPageSize(maxCount)
        return try await fetch(
            """
            SELECT \(unescaped: Self.columns) FROM events
            WHERE tenant_id = \(tenant.rawValue) AND stream_name = \(stream.description) AND stream_version >= \(fromVersion)
            ORDER BY stream_version LIMIT \(maxCount)
            """, operation: "read \(stream)")
    }

    /// In one query (pages of 1,000 events per stream; a longer stream's rest is read after).
    public func readStreamsToEnd(_ reads: [(stream: StreamName, fromVersion: Int64)], tenant: TenantID) async throws -> [[RecordedEvent]] {
        guard Set(reads.map(\.stream)).count == reads.count else {
            throw EventStoreError(code: .invalidArgument, message: "each stream is read once")
        }
        let names = reads.map(\.stream.description)
        let page = 1000
        // A function (Migrations/0017_read_streams.sql) whose plan PostgreSQL keeps: the same SELECT sent as a
        // query was planned again on every call, which cost more than running it.
        let found = try await fetch(
            "SELECT \(unescaped: Self.columns) FROM convo_read_streams(\(tenant.rawValue), \(names), \(reads.map(\.fromVersion)), \(Int32(page)))",
            operation: "read \(names.joined(separator: ", "))")
        var result = Array(repeating: [RecordedEvent](), count: reads.count)
        var index = 0
        for event in found {
            while index < reads.count, event.stream != reads[index].stream { index += 1 }
            guard index < reads.count else { break }
            result[index].append(event)
        }
        for (position, read) in reads.enumerated() where result[position].count == page {
            result[position] += try await readStreamToEnd(read.stream, tenant: tenant, fromVersion: result[position][page - 1].streamVersion + 1)
        }
        return result
    }

    public func readCategory(_ category: String, tenant: TenantID, after position: Int64, maxCount: Int = 1000) async throws -> [RecordedEvent] {
        try Self.checkPageSize(maxCount)
        guard StreamName.isValidCategory(category) else { throw EventStoreError(code: .invalidArgument, message: "invalid category") }
        return try await fetch(
            """
            SELECT \(unescaped: Self.columns) FROM events
            WHERE tenant_id = \(tenant.rawValue) AND stream_category = \(category) AND global_position > \(position)
              AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY global_position LIMIT \(maxCount)
            """, operation: "read category \(category)")
    }

    public func readAll(_ scope: TenantScope, after position: Int64, maxCount: Int = 1000) async throws -> [RecordedEvent] {
        try await readAll(scope, after: position, maxCount: maxCount, opening: .all)
    }

    /// ``readAll(_:after:maxCount:)`` opening only the sealed personal members `opening` names, and only
    /// events of `types` when given (`maxCount` of those; the others are neither sent nor decoded).
    public func readAll(
        _ scope: TenantScope, after position: Int64, maxCount: Int = 1000, types: [String]? = nil, opening: PersonalDataOpening
    ) async throws -> [RecordedEvent] {
        try Self.checkPageSize(maxCount)
        switch scope {
        case .allTenants:
            return try await fetch(Self.allTenantsQuery(after: position, maxCount: maxCount, types: types), operation: "read all", opening: opening)
        case .tenant(let tenant):
            return try await fetch(
                """
                SELECT \(unescaped: Self.columns) FROM events
                WHERE tenant_id = \(tenant.rawValue) AND global_position > \(position)
                  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                  AND (\(types)::text[] IS NULL OR event_type = ANY(\(types)::text[]))
                ORDER BY global_position LIMIT \(maxCount)
                """, operation: "read all of \(tenant)", opening: opening)
        }
    }

    /// Every tenant's events after `position` (of `types` when given), withheld behind older open transactions:
    /// what ``readAll(_:after:maxCount:types:opening:)`` and the shared tail read.
    static func allTenantsQuery(after position: Int64, maxCount: Int, types: [String]?) -> PostgresQuery {
        """
        SELECT \(unescaped: columns) FROM events
        WHERE global_position > \(position) AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          AND (\(types)::text[] IS NULL OR event_type = ANY(\(types)::text[]))
        ORDER BY global_position LIMIT \(maxCount)
        """
    }

    /// The events of one tenant at the given global positions (those that exist), in position order: what a
    /// reader that kept only positions (a webhook sender's owed deliveries) needs back.
    public func readEvents(at positions: [Int64], tenant: TenantID) async throws -> [RecordedEvent] {
        guard !positions.isEmpty else { return [] }
        try Self.checkPageSize(positions.count)
        return try await fetch(
            """
            SELECT \(unescaped: Self.columns) FROM events
            WHERE tenant_id = \(tenant.rawValue) AND global_position = ANY(\(positions))
            ORDER BY global_position
            """, operation: "read events by position")
    }

    /// Reads up to `maxCount` events of several streams of one tenant (a conversation's `messages-` and
    /// `workflow-` streams) after a global position, in position order.
    ///
    /// - Parameter following: withhold, like ``readAll(_:after:maxCount:)``, what commits behind an older open
    ///   transaction, so a reader paging on with the last position never skips an event that commits late.
    ///   `false` for a one-off read that wants everything committed now (read-your-writes). Default: `true`.
    public func readStreams(
        _ streams: [StreamName], tenant: TenantID, after position: Int64, maxCount: Int = 1000, following: Bool = true
    ) async throws -> [RecordedEvent] {
        try Self.checkPageSize(maxCount)
        let names = streams.map(\.description)
        let operation = "read \(names.joined(separator: ", "))"
        guard following else {
            return try await fetch(
                """
                SELECT \(unescaped: Self.columns) FROM events
                WHERE tenant_id = \(tenant.rawValue) AND stream_name = ANY(\(names)) AND global_position > \(position)
                ORDER BY global_position LIMIT \(maxCount)
                """, operation: operation)
        }
        return try await fetch(
            """
            SELECT \(unescaped: Self.columns) FROM events
            WHERE tenant_id = \(tenant.rawValue) AND stream_name = ANY(\(names)) AND global_position > \(position)
              AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY global_position LIMIT \(maxCount)
            """, operation: operation)
    }

    /// The first event of each stream that has one, keyed by tenant and stream: one query for many streams.
    public func readFirstEvents(_ streams: [(tenant: TenantID, stream: StreamName)]) async throws -> [StreamKey: RecordedEvent] {
        guard !streams.isEmpty else { return [:] }
        let events = try await fetch(
            """
            SELECT \(unescaped: Self.columns) FROM events
            JOIN unnest(\(streams.map(\.tenant.rawValue)), \(streams.map(\.stream.description))) AS k (tenant, stream)
              ON tenant_id = k.tenant AND stream_name = k.stream AND stream_version = 1
            """, operation: "read the first events of \(streams.count) streams")
        return Dictionary(events.map { (StreamKey(tenant: $0.tenant, stream: $0.stream), $0) }, uniquingKeysWith: { first, _ in first })
    }

    public func streamVersion(_ stream: StreamName, tenant: TenantID) async throws -> Int64 {
        do {
            let rows = try await client.queryOpen(
                "SELECT coalesce(max(stream_version), 0) FROM events WHERE tenant_id = \(tenant.rawValue) AND stream_name = \(stream.description)",
                logger: logger)
            for try await version in rows.decode(Int64.self) { return version }
            return 0
        } catch {
            throw Self.mapError(error, operation: "read the version of \(stream)")
        }
    }

    public func headPosition(_ scope: TenantScope = .allTenants) async throws -> Int64 {
        let query: PostgresQuery
        switch scope {
        case .allTenants:
            query = """
                SELECT global_position FROM events WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY global_position DESC LIMIT 1
                """
        case .tenant(let tenant):
            query = """
                SELECT global_position FROM events
                WHERE tenant_id = \(tenant.rawValue) AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY global_position DESC LIMIT 1
                """
        }
        do {
            for try await position in try await client.queryOpen(query, logger: logger).decode(Int64.self) { return position }
            return 0
        } catch {
            throw Self.mapError(error, operation: "read the head position")
        }
    }

    public func subscribe(_ scope: TenantScope, after position: Int64) -> EventSubscription {
        subscribe(scope, after: position, opening: .all)
    }

    /// ``subscribe(_:after:)`` opening only the sealed personal members `opening` names (a projection
    /// runner: what its fold reads).
    public func subscribe(_ scope: TenantScope, after position: Int64, opening: PersonalDataOpening) -> EventSubscription {
        subscribe(scope, after: position, types: nil, opening: opening)
    }

    /// ``subscribe(_:after:opening:)`` to the events of `types` only (all when `nil`): a follower that acts
    /// on a few types (the responder: visitor messages and parking records) is not sent the others.
    public func subscribe(_ scope: TenantScope, after position: Int64, types: [String]?, opening: PersonalDataOpening) -> EventSubscription {
        let pageSize = configuration.subscriptionPageSize
        if scope == .allTenants, types == nil, let tail {
            // Read once for every such subscription of this process; opened by each for itself.
            return EventSubscription(after: position, signal: signal, pollInterval: configuration.pollInterval) { [vault] after in
                try await vault.open(try await tail.events(after: after, maxCount: pageSize), opening: opening)
            }
        }
        return EventSubscription(after: position, signal: signal, pollInterval: configuration.pollInterval) { [self] after in
            try await readAll(scope, after: after, maxCount: pageSize, types: types, opening: opening)
        }
    }

    /// Reads of the shared tail, pages served from it, and waits for another's read, since the store was made.
    var tailCounts: (reads: Int, served: Int, joined: Int)? { tail?.counts }

    // MARK: Rows

    static let columns = "global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at"

    private static func checkPageSize(_ maxCount: Int) throws {
        guard (1...10_000).contains(maxCount) else {
            throw EventStoreError(code: .invalidArgument, message: "a page holds 1 to 10,000 events")
        }
    }

    func fetch(_ query: PostgresQuery, operation: @autoclosure () -> String, opening: PersonalDataOpening = .all) async throws -> [RecordedEvent] {
        try await vault.open(try await Self.fetch(query, client: client, logger: logger, operation: operation()), opening: opening)
    }

    /// The events a query selects (with ``columns``), unopened.
    static func fetch(_ query: PostgresQuery, client: PostgresClient, logger: Logger, operation: @autoclosure () -> String) async throws -> [RecordedEvent] {
        var events: [RecordedEvent] = []
        do {
            for try await event in Self.events(in: try await client.queryOpen(query, logger: logger)) { events.append(event) }
        } catch {
            throw Self.mapError(error, operation: operation())
        }
        return events
    }

    /// The events of rows selected with ``columns``, decoded as they stream in.
    static func events(in rows: some AsyncSequence<PostgresRow, any Error>) -> some AsyncSequence<RecordedEvent, any Error> {
        rows.map(event(of:))
    }

    /// The event of a row selected with ``columns``.
    ///
    /// Cell by cell rather than as one tuple: `PostgresCell.decode` is specialized for each column's type,
    /// the tuple decode is generic over a parameter pack and costs about twice as much per row.
    static func event(of row: PostgresRow) throws -> RecordedEvent {
        var cells = row.makeIterator()
        func next<T: PostgresDecodable>(_: T.Type) throws -> T {
            guard let cell = cells.next() else { throw EventStoreError(code: .storageFailure, message: "an event row has too few columns") }
            return try cell.decode(T.self)
        }
        let position = try next(Int64.self)
        let id = try next(UUID.self)
        guard let tenant = TenantID(rawValue: try next(String.self)) else {
            throw EventStoreError(code: .storageFailure, message: "the event at position \(position) has an invalid tenant")
        }
        let stream = StreamName(unchecked: try next(String.self))
        let version = try next(Int64.self)
        let type = try next(String.self)
        let data = try next(JSONB.self)
        let metadata = try next(JSONB.self)
        return RecordedEvent(
            globalPosition: position, eventId: id, tenant: tenant, stream: stream, streamVersion: version, type: type, data: data.text,
            metadataJSON: metadata.text, recordedAt: try next(Date.self))
    }

    // MARK: Service

    /// Announces local appends to other processes and wakes local subscriptions on theirs, until graceful
    /// shutdown or cancellation.
    public func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.announceAppends() }
            group.addTask { await self.listenForAppends() }
        }
    }

    private func announceAppends() async {
        // bufferingNewest(1) coalesces a burst of appends into one NOTIFY.
        for await _ in notifications.cancelOnGracefulShutdown() {
            do {
                try await client.queryOpen("SELECT pg_notify(\(configuration.notificationChannel), '')", logger: logger)
            } catch {
                logger.debug("could not announce appends", metadata: ["convo.error": "\(error)"])
            }
        }
    }

    private func listenForAppends() async {
        let channel = configuration.notificationChannel
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await cancelWhenGracefulShutdown {
                    // A session that ends gives up the LISTEN at once (see whileOpen), and the next round listens again.
                    try await self.client.withOpenConnection { connection in
                        defer {
                            self.listening.store(false, ordering: .releasing)
                            self.vault.listeningChanged(false)
                        }
                        // Leased: a frozen process does not hold PostgreSQL's notification queue back.
                        try await connection.asLease(timeout: self.configuration.sessionLease, role: "listen", logger: self.logger) {
                            try await connection.listen(on: channel) { notifications in
                                self.listening.store(true, ordering: .releasing)
                                // Anything committed while no LISTEN was active is picked up now, and a key
                                // destroyed meanwhile is no longer held.
                                self.vault.listeningChanged(true)
                                self.signal.signal()
                                for try await notification in notifications {
                                    if notification.payload.isEmpty {
                                        self.signal.signal()
                                    } else {
                                        self.vault.handle(notification: notification.payload)
                                    }
                                }
                            }
                        }
                    }
                }
            } catch {
                if Task.isCancelled || Task.isShuttingDownGracefully { return }
                logger.info("event notifications interrupted, retrying", metadata: ["convo.error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}

/// `convo_append` as a prepared statement.
/// What an append binds, in the order `convo_append` and ``ExactAppendStatement`` take it.
struct AppendArguments: Sendable {
    var tenant: String
    var stream: String
    /// ``ExpectedVersion/sqlValue``.
    var expected: Int64
    var ids: [UUID]
    var types: [String]
    var data: [JSONB]
    var metadata: [JSONB]

    func bindings() -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 7)
        bindings.append(tenant)
        bindings.append(stream)
        bindings.append(expected)
        bindings.append(ids)
        bindings.append(types)
        bindings.append(data)
        bindings.append(metadata)
        return bindings
    }
}

/// The common append, an exact expectation, as one statement: the stream's head (version and hash) in one
/// index probe, the expectation checked, each event's hash chained to the one before it (a recursive CTE,
/// with `convo_event_hash` of `Migrations/0010_event_hash_chain.sql`), and the rows inserted, with the same
/// positions as `convo_append` (this transaction's id shifted left 16 bits plus the event's place; it runs
/// in a transaction of its own). A racer that wrote the version first makes it fail on
/// events_stream_version_key, an id already stored on events_event_id_key, and an expectation not met
/// returns no row; nothing is written in any of these cases, and the store asks `convo_append`.
struct ExactAppendStatement: PostgresPreparedStatement {
    static let name = "convo_append_exact_v1"
    /// The stream's head (version and hash, one index probe), and a row only when the expectation (`$3`) is
    /// met: the version before the append, the hash to chain to, the position base and the commit time.
    static let started = """
        head AS (
            SELECT e.stream_version AS version, e.hash FROM events e
            WHERE e.tenant_id = $1 AND e.stream_name = $2
            ORDER BY e.stream_version DESC LIMIT 1
        ), accepted AS (
            SELECT coalesce((SELECT version FROM head), 0) AS version,
                   coalesce((SELECT hash FROM head), convo_chain_genesis($1, $2)) AS hash
        ), started AS (
            SELECT a.version, a.hash, pg_current_xact_id()::text::bigint << 16 AS base, now() AS at
            FROM accepted a WHERE a.version = $3
        )
        """
    static let sql = """
        WITH RECURSIVE \(started), chain (n, hash, version, base, at) AS (
            SELECT 0, s.hash, s.version, s.base, s.at FROM started s
            UNION ALL
            SELECT c.n + 1,
                   convo_event_hash(c.hash, c.base + c.n + 1, c.version + c.n + 1, ($4::uuid[])[c.n + 1], c.at,
                                    ($5::text[])[c.n + 1], ($6::jsonb[])[c.n + 1], ($7::jsonb[])[c.n + 1]),
                   c.version, c.base, c.at
            FROM chain c WHERE c.n < cardinality($4::uuid[])
        )
        INSERT INTO events (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
        SELECT c.base + c.n, ($4::uuid[])[c.n], $1, $2, c.version + c.n, ($5::text[])[c.n], ($6::jsonb[])[c.n], ($7::jsonb[])[c.n], c.at, c.hash
        FROM chain c WHERE c.n > 0
        RETURNING event_id, stream_version, global_position, recorded_at
        """
    typealias Row = (UUID, Int64, Int64, Date)

    var arguments: AppendArguments

    func makeBindings() throws -> PostgresBindings { arguments.bindings() }

    func decodeRow(_ row: PostgresRow) throws -> Row {
        try row.decode(Row.self)
    }

    /// The same for one event, with no recursion and no arrays.
    struct Single: PostgresPreparedStatement {
        static let name = "convo_append_exact_one_v1"
        static let sql = """
            WITH \(ExactAppendStatement.started)
            INSERT INTO events (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
            SELECT s.base + 1, $4, $1, $2, s.version + 1, $5, $6, $7, s.at,
                   convo_event_hash(s.hash, s.base + 1, s.version + 1, $4, s.at, $5, $6, $7)
            FROM started s
            RETURNING event_id, stream_version, global_position, recorded_at
            """
        typealias Row = (UUID, Int64, Int64, Date)

        var tenant: String
        var stream: String
        var expected: Int64
        var id: UUID
        var type: String
        var data: JSONB
        var metadata: JSONB

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 7)
            bindings.append(tenant)
            bindings.append(stream)
            bindings.append(expected)
            bindings.append(id)
            bindings.append(type)
            bindings.append(data)
            bindings.append(metadata)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row {
            try row.decode(Row.self)
        }
    }
}

struct AppendStatement: PostgresPreparedStatement {
    static let name = "convo_append_v1"
    static let sql = """
        SELECT event_id, stream_version, global_position, recorded_at, duplicate
        FROM convo_append($1, $2, $3, $4, $5, $6, $7)
        """
    typealias Row = (UUID, Int64, Int64, Date, Bool)

    var arguments: AppendArguments

    func makeBindings() throws -> PostgresBindings { arguments.bindings() }

    func decodeRow(_ row: PostgresRow) throws -> Row {
        try row.decode(Row.self)
    }
}
