import ArgumentParser
import EventStore
import Foundation
import NIOCore
import PostgresNIO
import SharedTypes
import Synchronization

/// Our append against a raw INSERT of the same rows, and our readAll against a raw SELECT of the same rows,
/// over one connection pool in one process.
struct EventStoreBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "eventstore", abstract: "append and readAll against raw SQL.")

    @Option(help: "Seconds each side runs per append case and round.") var seconds: Double = 3
    @Option(help: "Rounds per append case; the side that goes first alternates (raw, ours, then ours, raw…)") var rounds: Int = 2
    @Option(help: "Events stored for the readAll comparison.") var readEvents: Int = 1_000_000
    @Option(help: "Events per readAll page.") var pageSize: Int = 5000
    @Flag(help: "Skip the append cases.") var skipAppend = false
    @Flag(help: "Skip the readAll case.") var skipRead = false
    @Flag(help: "Exit 1 when a ratio misses its target.") var check = false

    static let appendTarget = 0.8
    static let readTarget = 0.5

    func run() async throws {
        let missed = try await BenchDatabase.withDatabase(maximumConnections: 70) { client, url in
            report("event store benchmark on \(url) (created for this run, dropped after)")
            var missed: [String] = []
            if !skipAppend {
                for writers in [1, 16, 64] {
                    for batch in [1, 10] {
                        let (ours, raw) = try await appendCase(client: client, writers: writers, batch: batch)
                        let ratio = ours / raw
                        let verdict = ratio >= Self.appendTarget ? "ok" : "MISSED"
                        if ratio < Self.appendTarget { missed.append("append \(writers)x\(batch)") }
                        report(
                            "append  writers=\(writers.padded(2)) batch=\(batch.padded(2))  ours \(ours.formatted(0).padded(7)) ev/s  raw \(raw.formatted(0).padded(7)) ev/s  ratio \(ratio.formatted(2))  (target ≥ \(Self.appendTarget)) \(verdict)")
                    }
                }
            }
            if !skipRead {
                let (ours, raw) = try await readCase(client: client)
                let ratio = ours / raw
                if ratio < Self.readTarget { missed.append("readAll") }
                report(
                    "readAll \(readEvents) events  ours \(ours.formatted(0)) ev/s  raw \(raw.formatted(0)) ev/s  ratio \(ratio.formatted(2))  (target ≥ \(Self.readTarget)) \(ratio >= Self.readTarget ? "ok" : "MISSED")")
            }
            return missed
        }
        if check && !missed.isEmpty { throw ExitCode(1) }
    }

    // MARK: Append

    /// A visitor message as the responder will append it.
    static let payload = ByteBuffer(string: #"{"messageId":"m-0001","sentAt":"2026-11-22T10:00:00Z","text":"Hi, I ordered a blue jacket last week and it has not arrived yet. Can you help?","visitorUid":"visitor-42"}"#)
    /// The raw inserts' hash: a constant, as a client that skipped the chain would write.
    static let rawHash = ByteBuffer(bytes: [UInt8](repeating: 0xab, count: 32))
    static let metadata = EventMetadata(correlationId: UUID(), causationId: UUID(), actorId: "visitor:visitor-42")
    /// Whose personal data the message is: every append of one must say (the store has no master key here and
    /// may keep it in plaintext, the raw side's form, so both sides store the same bytes).
    static let subject = PersonalDataSubject(visitor: VisitorUID(rawValue: "visitor-42")!, mayCreateKey: true)

    private func appendCase(client: PostgresClient, writers: Int, batch: Int) async throws -> (ours: Double, raw: Double) {
        let store = PostgresEventStore(client: client, keyring: nil, vaultConfiguration: .init(allowsPlaintext: true), logger: BenchDatabase.logger)
        let metadataJSON = try ByteBuffer(bytes: JSONEncoder().encode(Self.metadata))
        var oursEvents = 0
        var rawEvents = 0
        var oursTime = Duration.zero
        var rawTime = Duration.zero
        for round in 0..<rounds {
            let tag = "\(writers)x\(batch)r\(round)"
            // The table grows as the run goes on: the side that goes first alternates, so neither always
            // meets the larger table.
            for side in round % 2 == 0 ? ["raw", "ours"] : ["ours", "raw"] {
                if side == "raw" {
                    let raw = try await timed(writers: writers) { writer, deadline in
                        try await rawInserts(client: client, stream: "raw-\(tag)w\(writer)", batch: batch, metadata: metadataJSON, until: deadline)
                    }
                    rawEvents += raw.events
                    rawTime += raw.elapsed
                } else {
                    let ours = try await timed(writers: writers) { writer, deadline in
                        try await appends(store: store, stream: try StreamName(category: "ours", id: "\(tag)w\(writer)"), batch: batch, until: deadline)
                    }
                    oursEvents += ours.events
                    oursTime += ours.elapsed
                }
            }
        }
        return (Double(oursEvents) / oursTime.seconds, Double(rawEvents) / rawTime.seconds)
    }

    /// Runs `writers` concurrent loops until the deadline; returns the events they wrote and the time taken.
    private func timed(
        writers: Int, _ loop: @escaping @Sendable (Int, ContinuousClock.Instant) async throws -> Int
    ) async throws -> (events: Int, elapsed: Duration) {
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + .milliseconds(Int64(seconds * 1000))
        let events = try await withThrowingTaskGroup(of: Int.self) { group in
            for writer in 0..<writers { group.addTask { try await loop(writer, deadline) } }
            return try await group.reduce(0, +)
        }
        return (events, clock.now - start)
    }

    private func appends(store: PostgresEventStore, stream: StreamName, batch: Int, until deadline: ContinuousClock.Instant) async throws -> Int {
        var version: Int64 = 0
        while ContinuousClock.now < deadline {
            let events = (0..<batch).map { _ in NewEvent(type: "VisitorMessageReceived", data: Self.payload, metadata: Self.metadata, subject: Self.subject) }
            let result = try await store.append(events, to: stream, tenant: .default, expectedVersion: .exact(version))
            version = result.streamVersion
        }
        return Int(version)
    }

    private func rawInserts(client: PostgresClient, stream: String, batch: Int, metadata: ByteBuffer, until deadline: ContinuousClock.Instant) async throws -> Int {
        var version: Int64 = 0
        let values = (0..<batch).map { row in
            "($\(row * 8 + 1), $\(row * 8 + 2), $\(row * 8 + 3), $\(row * 8 + 4), $\(row * 8 + 5), $\(row * 8 + 6), $\(row * 8 + 7), $\(row * 8 + 8))"
        }.joined(separator: ", ")
        // The raw side writes the same columns, its hash a constant the client supplies: the difference is the
        // cost of convo's checks, chaining and positions.
        let sql = "INSERT INTO events (event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, hash) VALUES \(values)"
        while ContinuousClock.now < deadline {
            var binds = PostgresBindings(capacity: batch * 8)
            for _ in 0..<batch {
                version += 1
                binds.append(UUID())
                binds.append("default")
                binds.append(stream)
                binds.append(version)
                binds.append("VisitorMessageReceived")
                binds.append(RawJSONB(text: Self.payload))
                binds.append(RawJSONB(text: metadata))
                binds.append(Self.rawHash)
            }
            try await client.query(PostgresQuery(unsafeSQL: sql, binds: binds))
        }
        return Int(version)
    }

    // MARK: readAll

    private func readCase(client: PostgresClient) async throws -> (ours: Double, raw: Double) {
        report("storing \(readEvents) events over 10,000 conversations for readAll …")
        try await client.query(
            """
            INSERT INTO events (event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, hash)
            SELECT gen_random_uuid(), 'default', 'messages-c' || (i % 10000), i / 10000 + 1, 'VisitorMessageReceived',
                   jsonb_build_object('messageId', 'm-' || i, 'sentAt', '2026-11-22T10:00:00Z', 'visitorUid', 'visitor-' || (i % 10000),
                                      'text', 'Hi, I ordered a blue jacket last week and it has not arrived yet. Order ' || i),
                   jsonb_build_object('correlationId', gen_random_uuid(), 'actorId', 'visitor:visitor-' || (i % 10000)),
                   sha256(int8send(i))
            FROM generate_series(0, \(readEvents - 1)) AS i
            """)
        try await client.query("VACUUM ANALYZE events")
        let store = PostgresEventStore(client: client, keyring: nil, vaultConfiguration: .init(allowsPlaintext: true), logger: BenchDatabase.logger)
        _ = try await rawRead(client: client)  // warm the cache and set hint bits for both sides
        var oursTime = Duration.zero
        var rawTime = Duration.zero
        var total = 0.0
        let clock = ContinuousClock()
        for _ in 0..<rounds {
            var start = clock.now
            let rawCount = try await rawRead(client: client)
            rawTime += clock.now - start
            start = clock.now
            let oursCount = try await oursRead(store: store)
            oursTime += clock.now - start
            // The append cases, when they ran first, left their events in the table too.
            guard rawCount == oursCount, rawCount >= readEvents else {
                throw ValidationError("read \(oursCount) (ours) and \(rawCount) (raw) events, expected the same, at least \(readEvents)")
            }
            total += Double(rawCount)
        }
        return (total / oursTime.seconds, total / rawTime.seconds)
    }

    private func oursRead(store: PostgresEventStore) async throws -> Int {
        var position: Int64 = 0
        var count = 0
        var bytes = 0
        while true {
            let page = try await store.readAll(.allTenants, after: position, maxCount: pageSize)
            guard let last = page.last else { return count }
            count += page.count
            for event in page { bytes &+= event.data.readableBytes }
            position = last.globalPosition
        }
    }

    private func rawRead(client: PostgresClient) async throws -> Int {
        let rows = try await client.query(
            "SELECT global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at FROM events ORDER BY global_position")
        var count = 0
        var bytes = 0
        for try await (_, _, _, _, _, _, data, _, _) in rows.decode((Int64, UUID, String, String, Int64, String, ByteBuffer, ByteBuffer, Date).self) {
            count += 1
            bytes &+= data.readableBytes
        }
        return count
    }
}

/// jsonb in PostgreSQL's binary format, as the raw baseline binds it.
struct RawJSONB: PostgresNonThrowingEncodable {
    static var psqlType: PostgresDataType { .jsonb }
    static var psqlFormat: PostgresFormat { .binary }
    var text: ByteBuffer

    func encode<E: PostgresJSONEncoder>(into buffer: inout ByteBuffer, context: PostgresEncodingContext<E>) {
        buffer.writeInteger(UInt8(1))
        buffer.writeImmutableBuffer(text)
    }
}

extension CustomStringConvertible {
    func padded(_ width: Int) -> String {
        let text = description
        return String(repeating: " ", count: max(0, width - text.count)) + text
    }
}
