import EventStore
import Foundation
import Hummingbird
import Logging
import Projections
import Responder
import SharedTypes

/// An error answered as `{"error": {"code", "message"}}` with its status (and, for a workflow, the problems
/// found per node in `error.details`).
struct APIError: HTTPResponseError {
    var status: HTTPResponse.Status
    var body: ErrorBody
    var headers: HTTPFields = [:]

    init(_ status: HTTPResponse.Status, _ code: String, _ message: String, details: [ErrorDetail]? = nil, headers: HTTPFields = [:]) {
        self.status = status
        self.body = ErrorBody(code: code, message: message, details: details)
        self.headers = headers
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var headers = headers
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(ErrorResponse(error: body)))))
    }

    static let retryAfterSeconds = 5

    /// Too many failed authentications from the caller's address (`what`: "key" or "session"): 429.
    static func tooManyFailedAuthentications(retryAfter wait: Int, _ what: String) -> APIError {
        APIError(
            .tooManyRequests, "too_many_failed_authentications",
            "too many requests with an unknown or malformed \(what) from this address; retry in \(wait) s", headers: [.retryAfter: "\(wait)"])
    }

    /// The write was sent and no answer came (the connection broke, or the deadline passed while its batch
    /// was being written): it may be stored. 504, never 503, which promises that nothing was stored.
    static let outcomeUnknown = APIError(
        .gatewayTimeout, "outcome_unknown",
        "the message may or may not be stored (no answer from PostgreSQL after it was sent); retry with the same messageId",
        headers: [.retryAfter: "1"])

    /// The ingest queue is full: refused at once, nothing stored.
    static let overloaded = APIError(
        .serviceUnavailable, "overloaded", "too many messages are waiting to be stored; nothing was stored, retry shortly",
        headers: [.retryAfter: "1"])

    /// PostgreSQL (or Redis) cannot be reached: try again shortly, the request wrote nothing.
    static func unavailable(_ what: String) -> APIError {
        APIError(
            .serviceUnavailable, "unavailable", "\(what) is unavailable; retry later (with the same messageId when posting)",
            headers: [.retryAfter: "\(retryAfterSeconds)"])
    }
}

/// The body of every error convo returns: `{"error": {"code": "…", "message": "…"}}`.
struct ErrorBody: Codable, Sendable {
    var code: String
    var message: String
    var details: [ErrorDetail]?
}

struct ErrorResponse: Codable, Sendable {
    var error: ErrorBody
}

/// One problem of a request, e.g. one node of a workflow.
struct ErrorDetail: Codable, Sendable, Equatable {
    var nodeId: String?
    var message: String
}

/// Turns every error a route or Hummingbird throws into convo's JSON error: Hummingbird's own (404 for an
/// unknown route, 413 for a body over the limit) keep their status; an unreachable PostgreSQL is 503 with
/// `Retry-After`; anything unexpected is a 500 whose message names the request id, logged with the cause.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            throw error
        } catch let error as HTTPError {
            throw APIError(error.status, Self.code(for: error.status), error.body ?? error.status.reasonPhrase)
        } catch let error as EventStoreError where error.code == .invalidArgument {
            // PostgreSQL refused a value of this request (a U+0000 in a text, a number out of range).
            throw APIError(.badRequest, "invalid_input", error.message)
        } catch let error as EventStoreError where error.code == .outcomeUnknown {
            throw APIError.outcomeUnknown
        } catch let error as EventStoreError where error.code == .subjectErased {
            throw APIError(.conflict, "visitor_forgotten", error.message)
        } catch let error as EventStoreError where error.code == .keyUnavailable {
            context.logger.error("personal data key unavailable", metadata: ["convo.error": "\(error.message)"])
            throw APIError(.serviceUnavailable, "key_unavailable", "personal data cannot be read or stored: \(error.message)")
        } catch let error as ResponderError where error.code == .visitorNotFound {
            throw APIError(.notFound, "visitor_not_found", error.message)
        } catch let error as ResponderError where error.code == .overloaded {
            throw APIError.overloaded
        } catch let error as ResponderError where error.code == .notStored {
            throw APIError.unavailable("PostgreSQL")
        } catch let error as EventStoreError where error.code == .unavailable {
            throw APIError.unavailable("PostgreSQL")
        } catch let error as ProjectionError where Self.isUnavailable(error.cause) {
            throw APIError.unavailable("PostgreSQL")
        } catch let error as ResponderError where error.code == .redisUnavailable {
            throw APIError.unavailable("Redis")
        } catch {
            if Self.isUnavailable(error) { throw APIError.unavailable("PostgreSQL") }
            context.logger.error("request failed", metadata: ["convo.error": "\(error)"])
            throw APIError(.internalServerError, "internal", "internal error; request \(context.id) is logged")
        }
    }

    static func isUnavailable(_ error: (any Error)?) -> Bool {
        guard let error else { return false }
        return PostgresEventStore.mapError(error, operation: "request").code == .unavailable
    }

    static func code(for status: HTTPResponse.Status) -> String {
        switch status {
        case .notFound: "not_found"
        case .contentTooLarge: "body_too_large"
        case .methodNotAllowed: "method_not_allowed"
        case .badRequest: "bad_request"
        case .unsupportedMediaType: "unsupported_media_type"
        default: "http_\(status.code)"
        }
    }
}

extension Request {
    /// The body as `T`, with the API's errors: 415 unless it is JSON, 413 over 64 KiB, 400 naming the field
    /// that is missing or has the wrong type, or saying the JSON is malformed.
    func decodeJSON<T: Decodable>(_ type: T.Type, context: ConvoRequestContext) async throws -> T {
        let mediaType = headers[.contentType].flatMap(MediaType.init(from:))
        guard let mediaType, mediaType.isType(.applicationJson) else {
            throw APIError(.unsupportedMediaType, "unsupported_media_type", "send the body as Content-Type: application/json")
        }
        let buffer: ByteBuffer
        do {
            buffer = try await body.collect(upTo: APILimits.maxBodyBytes)
        } catch {
            throw APIError(.contentTooLarge, "body_too_large", "the body is over \(APILimits.maxBodyBytes / 1024) KiB")
        }
        if let readable = T.self as? any BodyReadable.Type, let value = buffer.withUnsafeReadableBytes({ bytes in
            var reader = PayloadReader(bytes)
            return try? readable.init(reading: &reader)
        }) as? T {
            return value
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        do {
            return try decoder.decode(T.self, from: buffer)
        } catch let error as DecodingError {
            throw APIError(.badRequest, "invalid_body", Self.describe(error))
        } catch let error as APIError {
            throw error
        } catch {
            throw APIError(.badRequest, "invalid_body", "the body is not valid JSON")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context, _ key: (any CodingKey)? = nil) -> String {
            (context.codingPath + (key.map { [$0] } ?? [])).map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context): return "missing field '\(path(context, key))'"
        case .valueNotFound(_, let context): return "field '\(path(context))' is null"
        case .typeMismatch(let type, let context):
            return context.codingPath.isEmpty ? "the body is not a JSON object" : "field '\(path(context))' is not a \(Self.typeName(type))"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "the body is not valid JSON" : "field '\(path(context))' is invalid: \(context.debugDescription)"
        @unknown default: return "the body is not valid"
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "string"
        case is Date.Type: "ISO 8601 date"
        case is Int.Type, is Int64.Type: "integer"
        case is Bool.Type: "boolean"
        default: "\(type)".lowercased()
        }
    }
}

/// A request body read by hand (``PayloadReader``) when the reader handles it: the plain bodies clients send,
/// read without `JSONDecoder`'s map of the document and boxed containers. Anything the reader leaves (an
/// escaped or repeated key, a missing member, a value of another kind) goes to `JSONDecoder`, so what a body
/// reads as, and the error a bad one gets, are the decoder's. For the bodies the server reads most often
/// (`IngestRequest`: every visitor message).
protocol BodyReadable: Decodable {
    init(reading body: inout PayloadReader) throws(PayloadReader.Unhandled)
}
