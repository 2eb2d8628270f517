import ArgumentParser
import Foundation
import Hummingbird
import Logging

/// A Hummingbird server with nothing of convo's: the framework's own cost per request on this machine, the
/// floor under `convo serve`'s (the ingest benchmark starts it and loads it with wrk as it loads convo).
///
/// `GET /hello` answers a fixed text. `POST /messages` decodes the same JSON body convo's ingest takes into
/// a struct with Foundation's decoder and answers a small JSON object with its encoder: a JSON route with no
/// middleware, key, limit or store.
struct FrameworkServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "framework-server", abstract: "A bare Hummingbird server (the ingest benchmark's floor).", shouldDisplay: false)

    @Option(help: "The port on 127.0.0.1.") var port: Int

    struct Message: Decodable {
        var visitorUid: String
        var text: String
        var messageId: String?
    }

    struct Accepted: ResponseEncodable {
        var messageId: String
        var accepted: Bool
    }

    func run() async throws {
        let router = Router()
        router.get("/hello") { _, _ in "ok" }
        router.post("/messages") { request, context -> Accepted in
            let message = try await request.decode(as: Message.self, context: context)
            return Accepted(messageId: message.messageId ?? "none", accepted: !message.text.isEmpty)
        }
        var logger = Logger(label: "framework-server")
        logger.logLevel = .warning
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: port), serverName: "framework"), logger: logger)
        try await app.runService()
    }
}
