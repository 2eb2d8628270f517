import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// A stand-in for an OpenAI-compatible service on loopback: answers each request with the next scripted
/// reply and keeps what it was sent.
public final class StubAIServer: Sendable {
    public struct Reply: Sendable {
        public var status: HTTPResponse.Status
        public var body: String
        public var delay: Duration = .zero

        public init(status: HTTPResponse.Status, body: String, delay: Duration = .zero) {
            self.status = status
            self.body = body
            self.delay = delay
        }
    }

    private let script: Mutex<[Reply]>
    private let received = Mutex<[String]>([])
    /// The reply once the script is used up (a 500 when there is none).
    let fallback: Reply?

    public init(_ replies: [Reply], fallback: Reply? = nil) {
        script = Mutex(replies)
        self.fallback = fallback
    }

    public var requests: [String] { received.withLock { $0 } }

    public func run<T: Sendable>(_ body: @Sendable (String) async throws -> T) async throws -> T {
        let router = Router()
        router.post("v1/chat/completions") { request, context -> Response in
            let bytes = try await request.body.collect(upTo: 1 << 20)
            self.received.withLock { $0.append(String(buffer: bytes)) }
            let reply = self.script.withLock { $0.isEmpty ? (self.fallback ?? Reply(status: .internalServerError, body: "{}")) : $0.removeFirst() }
            if reply.delay > .zero { try await Task.sleep(for: reply.delay) }
            return Response(status: reply.status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: reply.body)))
        }
        let port = Mutex<Int?>(nil)
        let logger = Logger(label: "stub-ai")
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } }, logger: logger)
        // Stopped gracefully, never by cancelling it: a cancelled server can still accept a connection while
        // it is torn down (a client retrying), and NIO traps on the channel it then drops. A graceful stop
        // closes the listener first; a reply still delayed is cut after 2 s.
        var configuration = ServiceGroupConfiguration(services: [app], logger: logger)
        configuration.maximumGracefulShutdownDuration = .seconds(2)
        let services = ServiceGroup(configuration: configuration)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await services.run() }
            let outcome: Result<T, any Error>
            do {
                while port.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(10)) }
                outcome = .success(try await body("http://127.0.0.1:\(port.withLock { $0 }!)/v1"))
            } catch {
                outcome = .failure(error)
            }
            await services.triggerGracefulShutdown()
            try? await group.waitForAll()
            return try outcome.get()
        }
    }
}

