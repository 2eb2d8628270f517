import Foundation
import Logging
import NIOCore
import PostgresNIO
import SharedTypes

/// Something `verify` found wrong with the stored events.
public struct ChainIssue: Sendable, Codable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable {
        /// The event's hash does not match its content chained to the hash before it: the event was edited,
        /// inserted, or the event before it was replaced (hash and all).
        case hashMismatch = "hash_mismatch"
        /// Versions are missing before this event: rows were deleted.
        case versionGap = "version_gap"
        /// The event's position is not above the position of the event before it in its stream: rows were
        /// reordered.
        case positionOrder = "position_order"
        /// An anchored stream head is gone: the stream's tail, or the whole stream, was deleted.
        case anchorMissing = "anchor_missing"
        /// An anchored stream head is there with another hash: history up to it was rewritten.
        case anchorChanged = "anchor_changed"
    }

    public var kind: Kind
    public var tenant: String
    public var stream: String
    public var streamVersion: Int64
    /// The position of the event where it was found; `nil` when the event is gone.
    public var globalPosition: Int64?
    public var message: String

    public var description: String {
        let place = globalPosition.map { "position \($0)" } ?? "gone"
        return "\(kind.rawValue): \(tenant)/\(stream) v\(streamVersion) (\(place)): \(message)"
    }
}

/// A stream's last event: what an anchor records, to prove later that nothing up to it changed or went.
public struct StreamHead: Sendable, Codable, Equatable, Hashable {
    public var tenant: String
    public var stream: String
    public var version: Int64
    public var position: Int64
    /// The head event's hash, hex.
    public var hash: String

    public init(tenant: String, stream: String, version: Int64, position: Int64, hash: String) {
        self.tenant = tenant
        self.stream = stream
        self.version = version
        self.position = position
        self.hash = hash
    }
}

/// Every stream's head at one moment, kept outside the database (a file, another system) so that a
/// deleted tail or stream, or a history rewritten with fresh hashes, is found by a later verify.
public struct ChainAnchor: Sendable, Codable, Equatable {
    public static let currentFormat = "convo.anchor.v1"
    public var format: String
    public var createdAt: Date
    /// The tenant the anchor covers; `nil` for every tenant.
    public var tenant: String?
    public var heads: [StreamHead]

    public init(createdAt: Date, tenant: String?, heads: [StreamHead]) {
        self.format = Self.currentFormat
        self.createdAt = createdAt
        self.tenant = tenant
        self.heads = heads
    }
}

/// What a verify walked and found.
public struct ChainReport: Sendable, Codable, Equatable {
    public var streams: Int
    public var events: Int
    /// Anchored heads checked (0 without an anchor).
    public var anchoredHeads: Int
    /// Every finding, or the first ``ChainReport/maxIssues`` of them.
    public var issues: [ChainIssue]
    /// How many findings there were in all (more than `issues` holds when the cap was reached).
    public var issueCount: Int

    public var isIntact: Bool { issueCount == 0 }

    public init(streams: Int, events: Int, anchoredHeads: Int, issues: [ChainIssue], issueCount: Int) {
        self.streams = streams
        self.events = events
        self.anchoredHeads = anchoredHeads
        self.issues = issues
        self.issueCount = issueCount
    }

    /// The most findings a report keeps: a store rewritten wholesale must not fill memory with them.
    public static let maxIssues = 10_000

    mutating func record(_ issue: ChainIssue) {
        issueCount += 1
        if issues.count < Self.maxIssues { issues.append(issue) }
    }
}

/// How far a verify is, for progress reports.
public struct ChainProgress: Sendable {
    public var events: Int
    public var total: Int
    public var elapsed: Duration

    public var eventsPerSecond: Double {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return seconds > 0 ? Double(events) / seconds : 0
    }

    public var secondsLeft: Double? {
        let rate = eventsPerSecond
        return rate > 0 ? Double(max(total - events, 0)) / rate : nil
    }
}

extension PostgresEventStore {
    /// Walks the hash chains of every stream (of `tenant`, or only `stream`), recomputing each event's hash
    /// from its stored content, and reports every event whose content, order or presence does not match.
    ///
    /// It reads in keyset pages in (tenant, stream, version) order, each a short statement, so a long verify
    /// holds no snapshot open. Events appended meanwhile are verified when the walk reaches them.
    ///
    /// - Parameters:
    ///   - anchor: heads exported earlier; each must still be there with the same hash.
    ///   - pageSize: rows per query.
    ///   - progress: called after every page.
    /// - Throws: ``EventStoreError`` when a read fails.
    public func verifyChains(
        tenant: TenantID? = nil, stream: StreamName? = nil, anchor: ChainAnchor? = nil, pageSize: Int = 5000,
        progress: (ChainProgress) -> Void = { _ in }
    ) async throws -> ChainReport {
        let started = ContinuousClock.now
        let total = try await countForVerify(tenant: tenant, stream: stream)
        var anchored: [String: StreamHead] = [:]
        for head in anchor?.heads ?? [] {
            if let tenant, head.tenant != tenant.rawValue { continue }
            if let stream, head.stream != stream.description { continue }
            anchored["\(head.tenant)/\(head.stream)"] = head
        }
        let anchoredCount = anchored.count
        var report = ChainReport(streams: 0, events: 0, anchoredHeads: anchoredCount, issues: [], issueCount: 0)
        var cursor: (tenant: String, stream: String, version: Int64) = ("", "", 0)
        var currentKey: String?
        var previous: [UInt8] = []
        var expectedVersion: Int64 = 1
        var lastPosition: Int64 = 0
        while true {
            let page = try await verifyPage(tenant: tenant, stream: stream, after: cursor, limit: pageSize)
            for row in page {
                let key = "\(row.tenant)/\(row.stream)"
                if key != currentKey {
                    currentKey = key
                    report.streams += 1
                    previous = EventChain.genesis(tenant: row.tenant, stream: row.stream)
                    expectedVersion = 1
                    lastPosition = 0
                }
                func issue(_ kind: ChainIssue.Kind, _ message: String) {
                    report.record(
                        ChainIssue(kind: kind, tenant: row.tenant, stream: row.stream, streamVersion: row.version, globalPosition: row.position, message: message))
                }
                if row.version != expectedVersion {
                    issue(
                        .versionGap,
                        expectedVersion == row.version - 1
                            ? "version \(expectedVersion) is missing (deleted)" : "versions \(expectedVersion)–\(row.version - 1) are missing (deleted)")
                } else {
                    let computed = EventChain.hash(
                        previous: previous, position: row.position, version: row.version, eventId: row.eventId,
                        recordedAtMicroseconds: row.recordedAtMicroseconds, type: row.type, data: row.data, metadata: row.metadata)
                    if computed != row.hash {
                        issue(.hashMismatch, "the stored hash does not match the event's content and the hash before it (edited, inserted, or the event before it was replaced)")
                    }
                }
                if row.position <= lastPosition {
                    issue(.positionOrder, "position \(row.position) is not above \(lastPosition), the position of the event before it")
                }
                if let head = anchored[key], head.version == row.version {
                    if head.hash != row.hash.hexString {
                        issue(.anchorChanged, "the anchored head had hash \(head.hash), the stored event has \(row.hash.hexString)")
                    }
                    anchored[key] = nil
                }
                // Go on from what is stored, so that one bad event is one finding, not a cascade.
                previous = row.hash
                expectedVersion = row.version + 1
                lastPosition = row.position
                report.events += 1
                cursor = (row.tenant, row.stream, row.version)
            }
            progress(ChainProgress(events: report.events, total: max(total, report.events), elapsed: ContinuousClock.now - started))
            if page.count < pageSize { break }
        }
        for head in anchored.values.sorted(by: { ($0.tenant, $0.stream) < ($1.tenant, $1.stream) }) {
            report.record(
                ChainIssue(
                    kind: .anchorMissing, tenant: head.tenant, stream: head.stream, streamVersion: head.version, globalPosition: nil,
                    message: "the anchored head (position \(head.position)) is not stored: the stream's tail or the whole stream was deleted"))
        }
        return report
    }

    /// Every stream's last event now (of `tenant`, or of all tenants): what ``verifyChains`` takes as an anchor.
    ///
    /// - Throws: ``EventStoreError`` when the read fails.
    /// Every stream's head, of `tenant` or of all tenants, in order of tenant and stream name (page by page).
    public func streamHeads(tenant: TenantID? = nil) async throws -> [StreamHead] {
        var heads: [StreamHead] = []
        var after: (tenant: String, stream: String)?
        while true {
            let page = try await streamHeads(tenant: tenant, after: after, limit: 1000)
            heads += page
            guard page.count == 1000, let last = page.last else { return heads }
            after = (last.tenant, last.stream)
        }
    }

    /// One page of stream heads: at most `limit`, those after `after` (a tenant and stream name) in order of
    /// tenant and stream name. Reads only the streams of the page, through the stream index.
    public func streamHeads(tenant: TenantID?, after: (tenant: String, stream: String)?, limit: Int) async throws -> [StreamHead] {
        guard (1...10_000).contains(limit) else { throw EventStoreError(code: .invalidArgument, message: "a page holds 1 to 10,000 heads") }
        var heads: [StreamHead] = []
        do {
            let rows = try await client.queryOpen(
                """
                SELECT DISTINCT ON (tenant_id, stream_name) tenant_id, stream_name, stream_version, global_position, hash
                FROM events
                WHERE (\(tenant?.rawValue)::text IS NULL OR tenant_id = \(tenant?.rawValue))
                  AND (\(after?.tenant)::text IS NULL OR (tenant_id, stream_name) > (\(after?.tenant ?? ""), \(after?.stream ?? "")))
                ORDER BY tenant_id, stream_name, stream_version DESC
                LIMIT \(limit)
                """, logger: logger)
            for try await (tenant, stream, version, position, hash) in rows.decode((String, String, Int64, Int64, ByteBuffer).self) {
                heads.append(StreamHead(tenant: tenant, stream: stream, version: version, position: position, hash: Array(buffer: hash).hexString))
            }
        } catch {
            throw Self.mapError(error, operation: "read the stream heads")
        }
        return heads
    }

    private struct ChainRow {
        var position: Int64
        var eventId: UUID
        var tenant: String
        var stream: String
        var version: Int64
        var type: String
        var data: ByteBuffer
        var metadata: ByteBuffer
        var recordedAtMicroseconds: Int64
        var hash: [UInt8]
    }

    private func countForVerify(tenant: TenantID?, stream: StreamName?) async throws -> Int {
        do {
            let rows = try await client.queryOpen(
                """
                SELECT count(*) FROM events
                WHERE (\(tenant?.rawValue)::text IS NULL OR tenant_id = \(tenant?.rawValue))
                  AND (\(stream?.description)::text IS NULL OR stream_name = \(stream?.description))
                """, logger: logger)
            for try await count in rows.decode(Int64.self) { return Int(count) }
            return 0
        } catch {
            throw Self.mapError(error, operation: "count the events")
        }
    }

    private func verifyPage(
        tenant: TenantID?, stream: StreamName?, after cursor: (tenant: String, stream: String, version: Int64), limit: Int
    ) async throws -> [ChainRow] {
        var page: [ChainRow] = []
        page.reserveCapacity(limit)
        do {
            let rows = try await client.queryOpen(
                """
                SELECT global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata,
                       (extract(epoch FROM recorded_at) * 1000000)::int8, hash
                FROM events
                WHERE (tenant_id, stream_name, stream_version) > (\(cursor.tenant), \(cursor.stream), \(cursor.version))
                  AND (\(tenant?.rawValue)::text IS NULL OR tenant_id = \(tenant?.rawValue))
                  AND (\(stream?.description)::text IS NULL OR stream_name = \(stream?.description))
                ORDER BY tenant_id, stream_name, stream_version
                LIMIT \(limit)
                """, logger: logger)
            for try await row in rows.decode((Int64, UUID, String, String, Int64, String, JSONB, JSONB, Int64, ByteBuffer).self) {
                page.append(
                    ChainRow(
                        position: row.0, eventId: row.1, tenant: row.2, stream: row.3, version: row.4, type: row.5, data: row.6.text,
                        metadata: row.7.text, recordedAtMicroseconds: row.8, hash: Array(buffer: row.9)))
            }
        } catch {
            throw Self.mapError(error, operation: "read the events to verify")
        }
        return page
    }
}
