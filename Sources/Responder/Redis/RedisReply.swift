/// A reply from Redis, copied out of hiredis' reply object.
public enum RedisReply: Sendable, Hashable {
    case string([UInt8])
    case status(String)
    case integer(Int64)
    case array([RedisReply])
    case null
    case error(String)

    /// The reply as text, for bulk strings and status replies.
    public var text: String? {
        switch self {
        case .string(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .status(let status): return status
        default: return nil
        }
    }

    /// The reply as an integer.
    public var integer: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }
}
