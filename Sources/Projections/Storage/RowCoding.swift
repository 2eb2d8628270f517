import EventStore
import Foundation
import NIOCore
import NIOFoundationCompat
import SharedTypes

/// The JSON coders for projection rows: rows go to PostgreSQL through `jsonb_to_recordset` and come back
/// through `to_jsonb`, so dates travel as ISO 8601 text with microseconds (PostgreSQL's precision) and a
/// row read back equals the row written.
enum RowCoding {
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(format(date))
        }
        return encoder
    }()

    /// Rows as ``encoder`` writes them, streamed (``StreamingJSONEncoder``).
    static let streaming = StreamingJSONEncoder(dateString: { format($0) }, fallback: { ByteBuffer(data: try encoder.encode($0)) })

    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = parse(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not an ISO 8601 timestamp: \(text)")
            }
            return date
        }
        return decoder
    }()

    /// A date rounded to the microsecond, the precision a `timestamptz` keeps.
    static func truncated(_ date: Date) -> Date {
        Date(timeIntervalSince1970: Double(microseconds(date)) / 1_000_000)
    }

    private static func microseconds(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
    }

    /// `2026-11-22T10:15:30.123456Z`, in UTC (``Timestamp``).
    static func format(_ date: Date) -> String { Timestamp.string(from: date) }

    /// What we write and what `to_jsonb` gives back: `±HH` offsets without minutes too.
    static func parse(_ text: String) -> Date? { Timestamp.date(from: text, strict: false) }
}
