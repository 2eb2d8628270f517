import ArgumentParser
import Audit
import EventStore
import Foundation
import Logging
import SharedTypes

extension Convo {
    /// `convo audit`: prove the events untouched, and ask who changed workflowState, when and why.
    struct AuditCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "audit",
            abstract: "Verify the events' hash chains and query the audit trail (history, explain, events, conflicts).",
            subcommands: [Verify.self, Anchor.self, History.self, Explain.self, Events.self, Conflicts.self])

        /// Table (default), `--json` or `--csv`.
        struct Output: ParsableArguments {
            @Flag(help: "Print JSON, for scripts.") var json = false
            @Flag(help: "Print CSV, for spreadsheets.") var csv = false

            func validate() throws {
                if json && csv { throw ValidationError("choose --json or --csv, not both") }
            }

            func print(_ value: some Encodable, table: () -> TextTable) {
                if json {
                    printJSON(value)
                } else if csv {
                    Swift.print(table().csv, terminator: "")
                } else {
                    Swift.print(table().text, terminator: "")
                }
            }
        }

        struct Verify: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Recompute every event's chained hash; report edited, deleted, inserted or reordered events; exit 1 when any.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "Only this tenant's streams (default: every tenant).") var tenant: TenantID?
            @Option(help: "Only this stream, e.g. workflow-c-42.") var stream: String?
            @Option(help: "An anchor written earlier by `convo audit anchor`: every head in it must still be stored, unchanged.") var anchor: String?
            @Flag(help: "Print the report as JSON.") var json = false

            func run() async throws {
                let streamName: StreamName?
                do {
                    streamName = try stream.map { try StreamName(parsing: $0) }
                } catch {
                    throw ValidationError("--stream: \(error)")
                }
                let anchorValue = try anchor.map(Self.readAnchor)
                let logger = try options.makeLogger()
                let progress = ProgressPrinter(interactive: ProgressPrinter.isInteractive)
                let report = try await withStore(options, logger: logger) { store in
                    try await store.verifyChains(tenant: tenant, stream: streamName, anchor: anchorValue) { step in
                        progress.update(
                            label: "verify", subject: "events", events: step.events, total: step.total, eventsPerSecond: step.eventsPerSecond,
                            secondsLeft: step.secondsLeft)
                    }
                }
                progress.finish()
                if json {
                    printJSON(report)
                } else {
                    for issue in report.issues { print(issue.description) }
                    if report.issueCount > report.issues.count {
                        print("… and \(report.issueCount - report.issues.count) more findings (the first \(report.issues.count) are listed)")
                    }
                    let anchored = report.anchoredHeads > 0 ? ", \(report.anchoredHeads) anchored heads" : ""
                    print(
                        report.isIntact
                            ? "OK: \(report.events) events in \(report.streams) streams\(anchored); every hash chain is intact"
                            : "FAILED: \(report.issueCount) finding\(report.issueCount == 1 ? "" : "s") in \(report.events) events of \(report.streams) streams\(anchored)")
                }
                if !report.isIntact { throw ExitCode(1) }
            }

            static func readAnchor(_ path: String) throws -> ChainAnchor {
                guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("--anchor: cannot read \(path)") }
                let decoder = JSONDecoder()
                decoder.dateDecodingStrategy = .iso8601
                guard let anchor = try? decoder.decode(ChainAnchor.self, from: data), anchor.format == ChainAnchor.currentFormat else {
                    throw ValidationError("--anchor: \(path) is not a convo anchor (\(ChainAnchor.currentFormat))")
                }
                return anchor
            }
        }

        struct Anchor: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Write every stream's head (version and hash) as JSON, to keep outside the database for a later `verify --anchor`.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "Only this tenant's streams (default: every tenant).") var tenant: TenantID?
            @Option(help: "Write to this file instead of standard output.") var output: String?

            func run() async throws {
                let logger = try options.makeLogger()
                let heads = try await withStore(options, logger: logger) { store in try await store.streamHeads(tenant: tenant) }
                let anchor = ChainAnchor(createdAt: Date(), tenant: tenant?.rawValue, heads: heads)
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                encoder.dateEncodingStrategy = .iso8601
                let data = try encoder.encode(anchor) + Data("\n".utf8)
                if let output {
                    do {
                        try data.write(to: URL(fileURLWithPath: output), options: .atomic)
                    } catch {
                        throw CommandFailure("cannot write \(output): \(error.localizedDescription)")
                    }
                    printError("anchored \(heads.count) stream heads in \(output)")
                } else {
                    FileHandle.standardOutput.write(data)
                }
            }
        }

        struct History: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Every workflowState change of a conversation: from and to node, the message that caused it, actor, lock token, time.")

            @OptionGroup var options: GlobalOptions
            @Argument(help: "The conversation id.") var conversation: ConversationID
            @Option(help: "The conversation's tenant.") var tenant: TenantID = .default
            @OptionGroup var output: Output

            func run() async throws {
                let logger = try options.makeLogger()
                let history = try await withStore(options, logger: logger) { store in
                    try await AuditTrail(store: store, logger: logger).workflowHistory(conversation, tenant: tenant)
                }
                output.print(history) { TextTable.history(history) }
            }
        }

        struct Explain: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Why a reply was sent: the messages it answered, the nodes walked, the tools called, the provider and model.")

            @OptionGroup var options: GlobalOptions
            @Argument(help: "The conversation id.") var conversation: ConversationID
            @Argument(help: "The AssistantMessageSent event's id.") var eventId: String
            @Option(help: "The conversation's tenant.") var tenant: TenantID = .default
            @OptionGroup var output: Output

            func run() async throws {
                guard let id = UUID(uuidString: eventId) else { throw ValidationError("'\(eventId)' is not an event id (a UUID)") }
                let logger = try options.makeLogger()
                let explanation = try await withStore(options, logger: logger) { store in
                    try await AuditTrail(store: store, logger: logger).explain(id, in: conversation, tenant: tenant)
                }
                output.print(explanation) { TextTable.explanation(explanation) }
            }
        }

        struct Events: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Search the tenant's trail by type, actor, conversation, visitor, tool and time, a page at a time (--after).")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The tenant.") var tenant: TenantID = .default
            @Option(name: .customLong("type"), help: "An event type (repeatable).") var types: [String] = []
            @Option(help: "An actor id: \(SystemActor.actorID) for the AI, visitor:{uid}, or an agent's id.") var actor: String?
            @Option(help: "A conversation id.") var conversation: ConversationID?
            @Option(help: "A visitor uid.") var visitor: String?
            @Option(help: "A tool name.") var tool: String?
            @Option(help: "Recorded at or after (ISO 8601).") var from: String?
            @Option(help: "Recorded before (ISO 8601).") var to: String?
            @Option(help: "The `next` of the previous page.") var after: Int64?
            @Option(help: "Events per page, 1 to \(AuditFilter.maxLimit).") var limit = 100
            @Option(help: "asc (oldest first) or desc.") var order = "asc"
            @OptionGroup var output: Output

            func run() async throws {
                let filter = try AuditQueryParameters.filter(
                    types: types, actor: actor, conversation: conversation?.rawValue, visitor: visitor, tool: tool, from: from, to: to, after: after,
                    limit: limit, order: order)
                let logger = try options.makeLogger()
                let page = try await withStore(options, logger: logger) { store in
                    try await AuditTrail(store: store, logger: logger).events(tenant: tenant, filter: filter)
                }
                output.print(page) { TextTable.events(page) }
            }
        }

        struct Conflicts: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Every recorded ProcessingConflictDetected: visitor, versions, the loser's and the winner's lock tokens and instances.")

            @OptionGroup var options: GlobalOptions
            @Option(help: "The tenant.") var tenant: TenantID = .default
            @Option(help: "Only this conversation's conflicts.") var conversation: ConversationID?
            @Option(help: "The `next` of the previous page.") var after: Int64?
            @Option(help: "Conflicts per page, 1 to \(AuditFilter.maxLimit).") var limit = 100
            @OptionGroup var output: Output

            func run() async throws {
                let filter = try AuditQueryParameters.filter(conversation: conversation?.rawValue, after: after, limit: limit)
                let logger = try options.makeLogger()
                let page = try await withStore(options, logger: logger) { store in
                    try await AuditTrail(store: store, logger: logger).conflicts(tenant: tenant, filter: filter)
                }
                output.print(page) { TextTable.conflicts(page) }
            }
        }
    }
}

/// The search parameters the CLI and the HTTP routes share, parsed in one place (the ranges are
/// ``AuditTrail``'s to check).
enum AuditQueryParameters {
    /// convo's event types are names (ConversationAssigned, VisitorMessageReceived): a letter, then letters,
    /// digits or `_`, at most 200 characters (the OpenAPI pattern of the `type` filter).
    static func isTypeName(_ type: String) -> Bool {
        func isLetter(_ byte: UInt8) -> Bool { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20) }
        let utf8 = type.utf8
        guard let first = utf8.first, isLetter(first), utf8.count <= 200 else { return false }
        return utf8.allSatisfy { isLetter($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "_") }
    }

    /// - Throws: `AuditError.invalidFilter` naming the parameter that does not parse.
    static func filter(
        types: [String] = [], actor: String? = nil, conversation: String?, visitor: String? = nil, tool: String? = nil, from: String? = nil,
        to: String? = nil, after: Int64?, limit: Int, order: String = "asc"
    ) throws -> AuditFilter {
        // PostgreSQL's text cannot hold U+0000: a filter with one could match nothing, and is refused.
        for (name, value) in [("type", types.joined()), ("actor", actor ?? ""), ("tool", tool ?? "")] where value.unicodeScalars.contains("\u{0}") {
            throw AuditError(.invalidFilter, "\(name) contains U+0000")
        }
        for type in types where !isTypeName(type) {
            throw AuditError(.invalidFilter, "an event type is a letter, then letters, digits or _ (at most 200): '\(type.prefix(64))' is not")
        }
        var filter = AuditFilter()
        filter.types = types
        filter.actor = actor
        if let conversation {
            guard let id = ConversationID(rawValue: conversation) else {
                throw AuditError(.invalidFilter, "conversation has 1 to 128 characters of A-Z a-z 0-9 _ . : -")
            }
            filter.conversation = id
        }
        if let visitor {
            guard let uid = VisitorUID(rawValue: visitor) else { throw AuditError(.invalidFilter, "visitor has 1 to 128 characters of A-Z a-z 0-9 _ . : -") }
            filter.visitor = uid
        }
        filter.tool = tool
        filter.from = try from.map { try date($0, name: "from") }
        filter.to = try to.map { try date($0, name: "to") }
        filter.after = after
        filter.limit = limit
        guard let order = AuditFilter.Order(rawValue: order) else { throw AuditError(.invalidFilter, "order is asc or desc") }
        filter.order = order
        return filter
    }

    static func date(_ raw: String, name: String) throws -> Date {
        // RFC 3339 as sentAt takes it (any fraction, any offset, lower-case t and z).
        if let date = Timestamp.date(from: raw) { return date }
        throw AuditError(.invalidFilter, "\(name) is an ISO 8601 date and time, e.g. 2026-11-22T10:15:00Z")
    }
}

/// Rows for a terminal (aligned columns) or a spreadsheet (CSV, RFC 4180).
struct TextTable {
    var header: [String]
    var rows: [[String]]
    /// Lines printed above the table (not in CSV).
    var preamble: [String] = []

    var text: String {
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ") + "\n"
        }
        var out = preamble.map { $0 + "\n" }.joined()
        if rows.isEmpty {
            return out + "(none)\n"
        }
        out += line(header)
        out += line(widths.map { String(repeating: "-", count: $0) })
        for row in rows { out += line(row) }
        return out
    }

    /// RFC 4180, with OWASP's rule against formula injection: a cell that begins with `=`, `+`, `-`, `@`, a
    /// tab or a carriage return (visitor text can) gets a leading `'`, so a spreadsheet shows it as text.
    var csv: String {
        func field(_ raw: String) -> String {
            let value = raw.unicodeScalars.first.map { "=+-@\t\r".unicodeScalars.contains($0) } == true ? "'" + raw : raw
            return value.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" })
                ? "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : value
        }
        return ([header] + rows).map { $0.map(field).joined(separator: ",") + "\r\n" }.joined()
    }

    static func time(_ date: Date) -> String { date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)) }

    static func history(_ history: WorkflowHistory) -> TextTable {
        TextTable(
            header: ["version", "position", "time", "type", "from", "to", "status", "message", "text", "actor", "lock token", "summary"],
            rows: history.changes.map { change in
                [
                    "\(change.streamVersion)", "\(change.globalPosition)", time(change.recordedAt), change.type, change.fromNode ?? "",
                    change.toNode ?? "", change.statusBefore == change.status ? change.status : "\(change.statusBefore) → \(change.status)",
                    change.cause?.messageId ?? "", change.cause?.text ?? "", change.actorId ?? "", change.lockToken ?? "", change.summary,
                ]
            },
            preamble: ["workflowState history of \(history.conversationId) (tenant \(history.tenant)): \(history.changes.count) changes"])
    }

    static func explanation(_ explanation: ReplyExplanation) -> TextTable {
        let reply = explanation.reply
        var rows: [[String]] = [
            ["reply", "event", reply.eventId.uuidString.lowercased()],
            ["reply", "text", reply.text],
            ["reply", "node", reply.nodeId],
            ["reply", "provider", reply.provider],
            ["reply", "model", reply.model ?? ""],
            ["reply", "latency ms", reply.latencyMs.map(String.init) ?? ""],
            ["reply", "time", time(reply.recordedAt)],
            ["reply", "actor", reply.actorId ?? ""],
            ["reply", "lock token", reply.lockToken ?? ""],
            ["reply", "instance", reply.instance ?? ""],
            ["workflow", "id", explanation.workflowId.map { "\($0) v\(explanation.workflowVersion ?? 0)" } ?? ""],
        ]
        for message in explanation.answered {
            rows.append(["answered", message.messageId, message.text])
        }
        if let cause = explanation.causedBy { rows.append(["caused by", cause.messageId, cause.text]) }
        for step in explanation.walk {
            rows.append(["walk", "v\(step.streamVersion) \(step.nodeId ?? "")", step.summary])
        }
        for call in explanation.tools {
            rows.append(["tool", call.tool, "\(call.outcome) \(call.arguments)\(call.error.map { " (\($0))" } ?? "")"])
        }
        return TextTable(header: ["part", "field", "value"], rows: rows, preamble: ["why \(explanation.conversationId) got this reply:"])
    }

    static func events(_ page: AuditPage) -> TextTable {
        TextTable(
            header: ["position", "time", "type", "stream", "version", "actor", "visitor", "hash"],
            rows: page.events.map { event in
                [
                    "\(event.globalPosition)", time(event.recordedAt), event.type, event.stream, "\(event.streamVersion)", event.actorId ?? "",
                    event.visitorUid ?? "", String(event.hash.prefix(16)),
                ]
            },
            preamble: page.next.map { ["more: --after \($0)"] } ?? [])
    }

    static func conflicts(_ page: ConflictPage) -> TextTable {
        TextTable(
            header: ["position", "time", "conversation", "visitor", "expected", "actual", "loser token", "loser instance", "winner token", "winner instance"],
            rows: page.conflicts.map { conflict in
                [
                    "\(conflict.globalPosition)", time(conflict.recordedAt), conflict.conversationId, conflict.visitorUid, "\(conflict.expectedVersion)",
                    "\(conflict.actualVersion)", conflict.lockToken, conflict.instance, conflict.winner?.lockToken ?? "",
                    conflict.winner?.instance ?? "",
                ]
            },
            preamble: page.next.map { ["more: --after \($0)"] } ?? [])
    }
}
