import ArgumentParser
import EventStore
import Foundation
import Logging
import Projections
import SharedTypes
import Synchronization

extension Convo {
    /// `convo projections`: rebuild, verify and inspect the stored projections.
    struct Projections: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rebuild, verify and inspect the projections (workflow_state, conversations, visitors).",
            subcommands: [Rebuild.self, Verify.self, Status.self])

        /// Which projections a command acts on: names, or `--all`.
        struct Selection: ParsableArguments {
            @Argument(help: "Projection names: \(ProjectionRegistry.standard.map(\.name).joined(separator: ", ")).")
            var names: [String] = []

            @Flag(help: "Every projection.") var all = false

            func validate() throws {
                guard all != !names.isEmpty else { throw ValidationError("name one or more projections, or pass --all") }
            }

            func projections() throws -> [any Projection] {
                do {
                    return try ProjectionRegistry.select(all ? [] : names)
                } catch let error as ProjectionError {
                    throw ValidationError(error.message)
                }
            }
        }

        struct Rebuild: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Rebuild from the first event into new tables, then swap them in; the live tables keep serving until then.")

            @OptionGroup var options: GlobalOptions
            @OptionGroup var selection: Selection
            @Flag(help: "Print the summary as JSON (progress still goes to standard error).") var json = false

            func run() async throws {
                let projections = try selection.projections()
                let logger = try options.makeLogger()
                let progress = ProgressPrinter(interactive: ProgressPrinter.isInteractive)
                let summaries = try await withStore(options, logger: logger) { store in
                    try await ProjectionRebuilder(store: store, logger: logger).rebuild(projections, reason: "cli") { progress.update($0) }
                }
                progress.finish()
                if json {
                    printJSON(summaries)
                } else {
                    for summary in summaries {
                        print(
                            "\(summary.projection) v\(summary.version): rebuilt from \(summary.events) events into \(summary.rows) rows in "
                                + "\(String(format: "%.1f", summary.seconds)) s (\(Int(Double(summary.events) / max(summary.seconds, 0.001))) events/s), "
                                + "checkpoint \(summary.checkpoint)")
                    }
                }
            }
        }

        struct Verify: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Replay the events and compare with the stored rows; print every difference, exit 1 when there is one.")

            @OptionGroup var options: GlobalOptions
            @OptionGroup var selection: Selection
            @Option(help: "Only the rows this conversation touches.") var conversation: ConversationID?
            @Option(help: "The conversation's tenant.") var tenant: TenantID = .default
            @Option(
                name: .customLong("max-waiting-seconds"),
                help: "Exit \(Self.staleExitCode) when an event after a projection's checkpoint has waited longer than this (default 10).")
            var maxWaitingSeconds: Int = 10
            @Flag(help: "Print the reports as JSON.") var json = false

            /// The exit status when every row matches but a projection is behind: it stopped, or cannot keep up.
            static let staleExitCode: Int32 = 3

            func validate() throws {
                guard maxWaitingSeconds >= 0 else { throw ValidationError("--max-waiting-seconds is 0 or more") }
            }

            func run() async throws {
                let projections = try selection.projections()
                let filter = conversation.map { (tenant, $0) }
                let logger = try options.makeLogger()
                let reports = try await withStore(options, logger: logger) { store in
                    var reports: [ProjectionVerifier.Report] = []
                    for projection in projections {
                        reports.append(try await ProjectionVerifier(store: store, logger: logger).verify(projection, conversation: filter))
                    }
                    return try await ProjectionVerifier.measureLag(reports, store: store, logger: logger)
                }
                if json {
                    printJSON(reports)
                } else {
                    for report in reports { printReport(report) }
                }
                if reports.contains(where: { !$0.isClean }) { throw ExitCode(1) }
                let limit = Duration.seconds(maxWaitingSeconds)
                if let behind = reports.first(where: { $0.isBehind(longerThan: limit) }) {
                    if !json {
                        if let held = behind.heldBack, held.waitingSeconds > limit.inSeconds {
                            print("\(behind.projection) is behind: \(held.summary) (limit \(maxWaitingSeconds) s), held back by an open transaction: \(held.by)")
                        } else {
                            print("\(behind.projection) is behind: an event has waited \(Int(behind.waitingSeconds ?? 0)) s (limit \(maxWaitingSeconds) s)")
                        }
                    }
                    throw ExitCode(Self.staleExitCode)
                }
            }

            /// "up to position P; head H, N events behind (the oldest waiting S s)".
            private func lagText(_ report: ProjectionVerifier.Report) -> String {
                var text = "up to position \(report.checkpoint)"
                if let head = report.head, let behind = report.behind {
                    text += "; head \(head), \(behind) events behind"
                    if behind > 0, let waiting = report.waitingSeconds { text += " (the oldest waiting \(Int(waiting)) s)" }
                }
                return text
            }

            private func printReport(_ report: ProjectionVerifier.Report) {
                if let stale = report.stale {
                    print("\(report.projection): STALE — \(stale)")
                    return
                }
                guard !report.differences.isEmpty else {
                    print("\(report.projection): OK — \(report.rowsCompared) rows match the events \(lagText(report))")
                    return
                }
                print("\(report.projection): \(report.differences.count) of \(report.rowsCompared) rows differ from the events \(lagText(report))")
                for difference in report.differences {
                    print("  \(difference.kind.rawValue) \(difference.key)")
                    for field in difference.fields {
                        print("    \(field.column): stored \(field.stored), events say \(field.expected)")
                    }
                }
            }
        }

        struct Status: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Per projection: version, checkpoint, head, lag, state (running, standby, rebuilding, failed) and last rebuild.")

            @OptionGroup var options: GlobalOptions
            @Flag(help: "Print the status as JSON.") var json = false

            func run() async throws {
                let logger = try options.makeLogger()
                let statuses = try await withStore(options, logger: logger) { store in
                    try await ProjectionStatus.read(ProjectionRegistry.standard, store: store, logger: logger)
                }
                if json {
                    printJSON(statuses)
                    return
                }
                for status in statuses {
                    let stored = status.storedVersion.map { $0 == status.version ? "v\($0)" : "v\($0) (code v\(status.version))" } ?? "v\(status.version)"
                    var line = "\(status.name) \(stored): \(status.state)"
                    if status.standby > 0 { line += " (\(status.standby) standby)" }
                    line += ", \(status.activeRunners) active runner\(status.activeRunners == 1 ? "" : "s")"
                    if let hosts = status.runningIn, !hosts.isEmpty { line += " (in \(hosts.joined(separator: ", ")))" }
                    line += ", checkpoint \(status.checkpoint), head \(status.head), lag \(status.lagText) events"
                    if status.lag > 0 { line += " (the oldest waiting \(Int(status.waitingSeconds)) s)" }
                    print(line)
                    if let held = status.heldBack {
                        print("  \(held.summary), held back by an open transaction: \(held.by)")
                    }
                    if let error = status.error { print("  error at position \(status.failedPosition ?? 0): \(error)") }
                    if let rebuild = status.lastRebuild {
                        var text = "  last rebuild: \(rebuild.outcome), v\(rebuild.version), \(rebuild.events) events, started \(rebuild.startedAt), reason \(rebuild.reason)"
                        if let error = rebuild.error { text += ", error: \(error)" }
                        print(text)
                    }
                }
            }
        }
    }

    /// `convo state`: a conversation's workflowState now or as it was, folded from its events.
    struct State: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a conversation's workflowState, now or as it was at a stream version or a time (folded from the events).")

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The conversation id.") var conversation: ConversationID
        @Option(help: "The conversation's tenant.") var tenant: TenantID = .default
        @Option(name: .customLong("at-version"), help: "The last workflow stream version to apply.") var atVersion: Int64?
        @Option(help: "A moment, ISO 8601 (e.g. 2026-11-22T10:15:00Z): only events recorded by then.") var at: Moment?
        @Flag(help: "Print the state as JSON.") var json = false

        func validate() throws {
            if atVersion != nil && at != nil { throw ValidationError("give --at-version or --at, not both") }
            if let atVersion, atVersion < 0 { throw ValidationError("--at-version is 0 or more") }
        }

        func run() async throws {
            let (id, tenant, date) = (conversation, tenant, at?.date)
            let version = atVersion
            let logger = try options.makeLogger()
            let (state, messages) = try await withStore(options, logger: logger) { store in
                let state = try await WorkflowState.history(of: id, tenant: tenant, atVersion: version, at: date, store: store)
                return (state, try await store.streamVersion(id.messagesStream, tenant: tenant))
            }
            guard state.version > 0 || messages > 0 else { throw CommandFailure("no conversation '\(id)' for tenant \(tenant)") }
            if json {
                printJSON(StateReport(conversationId: id.rawValue, tenant: tenant.rawValue, atVersion: version, at: date, state: state))
                return
            }
            print("conversation \(id) (tenant \(tenant))" + (version.map { " at version \($0)" } ?? "") + (date.map { " at \($0)" } ?? ""))
            print("  workflow:   \(state.workflowId.map { "\($0) v\(state.workflowVersion ?? 0)" } ?? "none yet")")
            print("  status:     \(state.status.rawValue)")
            print("  node:       \(state.currentNode ?? "-")")
            print("  version:    \(state.version) (messages consumed up to \(state.messagesConsumed))")
            if let team = state.handedOffTo { print("  handed off: \(team)") }
            if let reason = state.failureReason { print("  failure:    \(reason)") }
            for (name, value) in state.variables.sorted(by: { $0.key < $1.key }) { print("  var \(name) = \(value)") }
        }
    }
}

struct StateReport: Encodable {
    var conversationId: String
    var tenant: String
    var atVersion: Int64?
    var at: Date?
    var state: WorkflowState
}

/// Runs `body` with an event store on a reachable, migrated database; turns failures into `error: …` exits.
func withStore<T: Sendable>(_ options: GlobalOptions, logger: Logger, _ body: @Sendable (PostgresEventStore) async throws -> T) async throws -> T {
    let keyring = try options.keyring()
    return try await withPostgresClient(url: try options.databaseURL(), maximumConnections: 6, connectTimeout: try options.connectTimeout(), logger: logger) {
        client in
        do {
            try await Migrator(client: client, logger: logger).requireCurrent()
            return try await body(PostgresEventStore(client: client, keyring: keyring, logger: logger))
        } catch let error as ExitCode {
            throw error
        } catch {
            throw CommandFailure(error)
        }
    }
}

/// Prints rebuild progress: a bar redrawn in place on a terminal, a plain line every few seconds otherwise.
final class ProgressPrinter: Sendable {
    private let interactive: Bool
    private let lastPrint = Mutex<ContinuousClock.Instant?>(nil)

    init(interactive: Bool) { self.interactive = interactive }

    /// A terminal on standard error, and not CI.
    static var isInteractive: Bool {
        isatty(STDERR_FILENO) == 1 && ProcessInfo.processInfo.environment["CI"] != "true"
    }

    func update(_ progress: ProjectionRebuilder.Progress) {
        update(
            label: "rebuild", subject: progress.projections.joined(separator: ","), events: Int(progress.events), total: Int(progress.total),
            eventsPerSecond: progress.eventsPerSecond, secondsLeft: progress.secondsLeft)
    }

    /// Prints `events` of `total` done, at most every 100 ms on a terminal and every 2 s otherwise (and
    /// always at the end).
    func update(label: String, subject: String, events: Int, total: Int, eventsPerSecond: Double, secondsLeft: Double?) {
        let now = ContinuousClock.now
        let due = lastPrint.withLock { last -> Bool in
            let interval: Duration = interactive ? .milliseconds(100) : .seconds(2)
            guard last.map({ now - $0 >= interval }) ?? true else { return false }
            last = now
            return true
        }
        guard due || events == total else { return }
        let fraction = total > 0 ? Double(events) / Double(total) : 1
        let eta = secondsLeft.map { Self.duration($0) } ?? "?"
        let rate = Int(eventsPerSecond)
        if interactive {
            let width = 30
            let filled = min(width, Int(fraction * Double(width)))
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            printError("\r\(subject) \(bar) \(Int(fraction * 100))% \(events)/\(total) events  \(rate) ev/s  ETA \(eta)   ", newline: false)
        } else {
            printError("\(label) \(subject): \(events)/\(total) events (\(Int(fraction * 100))%), \(rate) events/s, ETA \(eta)")
        }
    }

    /// Prints `done` of `total` things, the rate and the time left measured from `started`.
    func update(label: String, subject: String, done: Int, total: Int, since started: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - started
        let rate = Double(done) / max(0.001, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        update(
            label: label, subject: subject, events: done, total: total, eventsPerSecond: rate, secondsLeft: rate > 0 ? Double(total - done) / rate : nil)
    }

    func finish() {
        if interactive { printError("") }
    }

    static func duration(_ seconds: Double) -> String {
        let total = Int(seconds.rounded())
        return total >= 3600 ? "\(total / 3600)h\(total % 3600 / 60)m" : total >= 60 ? "\(total / 60)m\(total % 60)s" : "\(total)s"
    }
}
