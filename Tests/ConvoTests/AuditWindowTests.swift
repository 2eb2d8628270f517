import ConvoTestSupport
import EventStore
import Foundation
import PostgresNIO
import SharedTypes
import Testing

@testable import Audit

/// A search by time, in a store where positions and commit times are out of step at the window's edges.
@Suite struct AuditWindowTests {
    static let tenant = TenantID("window")
    static let start = Date(timeIntervalSince1970: 1_767_225_600)  // 2026-01-01T00:00:00Z
    static let day: TimeInterval = 86_400

    /// 20,000 events, a thousand a day for 20 days in position order (positions 101…20,100), and three out of
    /// step: position 20,500 recorded on day 10 (a transaction that took its position late and committed last),
    /// position 5 recorded on day 10 too (one that started later than its neighbours in time and took its
    /// position first), and position 20,600 recorded on day 2. A search of day 10 finds exactly the events
    /// recorded in it, both stragglers included, in both orders and across pages; searches open at one end
    /// too. The window's bounds are read from the time index, not by a scan in position
    /// order (which reads the store from its first event up to the window).
    @Test func aTimeWindowHoldsExactlyItsEventsAndIsBoundedByTheTimeIndexAlone() async throws {
        try await TestDatabase.withFreshDatabase { url in
            try await TestDatabase.withStore(url: url) { store in
                let origin = Self.start.timeIntervalSince1970
                try await store.client.query(
                    """
                    INSERT INTO events (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
                    SELECT p, gen_random_uuid(), \(Self.tenant.rawValue), 'notes-' || (p % 50), p, 'NoteTaken', '{}', '{}', to_timestamp(t), sha256(convert_to(p::text, 'UTF8'))
                    FROM (SELECT n + 100 AS p, \(origin)::float8 + (n - 1) * 86.4 AS t FROM generate_series(1, 20000) n
                          UNION ALL VALUES (20500::bigint, \(origin + 9.5 * Self.day)::float8), (5, \(origin + 9.25 * Self.day)),
                                           (20600, \(origin + 1.5 * Self.day))) AS placed (p, t)
                    """, logger: TestDatabase.logger)
                try await store.client.query("VACUUM (ANALYZE) events", logger: TestDatabase.logger)
                // What the window holds, read without the trail: every event recorded in it, in position order.
                func recorded(from: Date?, to: Date?) async throws -> [Int64] {
                    let rows = try await store.client.query(
                        """
                        SELECT global_position FROM events WHERE tenant_id = \(Self.tenant.rawValue)
                          AND recorded_at >= coalesce(\(from)::timestamptz, '-infinity') AND recorded_at < coalesce(\(to)::timestamptz, 'infinity')
                        ORDER BY global_position
                        """, logger: TestDatabase.logger)
                    var positions: [Int64] = []
                    for try await position in rows.decode(Int64.self) { positions.append(position) }
                    return positions
                }
                let trail = AuditTrail(store: store, logger: TestDatabase.logger)
                func searched(from: Date?, to: Date?, order: AuditFilter.Order, limit: Int) async throws -> [Int64] {
                    var filter = AuditFilter()
                    filter.from = from
                    filter.to = to
                    filter.order = order
                    filter.limit = limit
                    var positions: [Int64] = []
                    repeat {
                        let page = try await trail.events(tenant: Self.tenant, filter: filter)
                        positions += page.events.map(\.globalPosition)
                        filter.after = page.next
                    } while filter.after != nil
                    return positions
                }

                let (dayTen, dayEleven) = (Self.start.addingTimeInterval(9 * Self.day), Self.start.addingTimeInterval(10 * Self.day))
                let expected = try await recorded(from: dayTen, to: dayEleven)
                #expect(expected.first == 5 && expected.last == 20_500 && expected.count == 1_002, "\(expected.count) events")
                #expect(try await searched(from: dayTen, to: dayEleven, order: .ascending, limit: 300) == expected)
                #expect(try await searched(from: dayTen, to: dayEleven, order: .descending, limit: 1000) == expected.reversed())
                let (lateFrom, earlyTo) = (Self.start.addingTimeInterval(18.5 * Self.day), Self.start.addingTimeInterval(1.75 * Self.day))
                #expect(try await searched(from: lateFrom, to: nil, order: .ascending, limit: 1000) == (try await recorded(from: lateFrom, to: nil)))
                let early = try await recorded(from: nil, to: earlyTo)
                #expect(early.last == 20_600 && early.count == 1_751, "\(early.count) events")
                #expect(try await searched(from: nil, to: earlyTo, order: .descending, limit: 1000) == early.reversed())

                let bounds = AuditTrail.windowBounds(tenant: Self.tenant, from: dayTen, to: dayEleven)
                let plan = try await store.client.query(PostgresQuery(unsafeSQL: "EXPLAIN " + bounds.sql, binds: bounds.binds), logger: TestDatabase.logger)
                var lines: [String] = []
                for try await line in plan.decode(String.self) { lines.append(line) }
                let text = lines.joined(separator: "\n")
                // An index-only scan, or a bitmap scan when other sessions of the cluster kept VACUUM from marking the
                // pages all-visible: either way the time index, and not a scan in position order.
                #expect(text.contains("events_tenant_recorded_at_idx"), "\(text)")
                #expect(!text.contains("events_pkey") && !text.contains("events_tenant_position_idx"), "\(text)")
            }
        }
    }
}
