import ArgumentParser
import EventStore
import Foundation
import Logging
import PostgresNIO
import Projections
import Responder
import SharedTypes

/// What sealing visitors' personal data costs, each side measured in the same run on the same machine:
/// ingest through the real group-commit path (IngestBatcher) with sealing against the same without (a store
/// given no master key that stores plaintext, kept for this measure), and a rebuild of every projection over
/// sealed events (opened as they are read) against one over the same events in plaintext.
struct PersonalDataBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "personal-data", abstract: "ingest and rebuild with sealing against without (targets ≥ 0.9×).")

    @Option(help: "Seconds per ingest side and round.") var seconds: Double = 8
    @Option(help: "Slices each ingest side's seconds are cut into, the sides taking turns.") var slices: Int = 4
    @Option(help: "Characters added to every plaintext message's text, to tell the cost of sealing from that of storing longer rows: with 88, a plaintext row is as long as a sealed one (the ciphertext in base64 with its nonce and tag, and the seal record).")
    var plaintextPadding: Int = 0
    @Option(help: "Concurrent ingest callers.") var concurrency: Int = 64
    @Option(help: "Percent of ingested messages that are a new visitor's first (a data key made for them on the sealed side).")
    var newVisitors: Int = 0
    @Option(help: "Visitors (each with a data key of their own).") var visitors: Int = 5000
    @Option(help: "Conversations the rebuild's events are spread over.") var conversations: Int = 4000
    @Option(help: "Turns per conversation for the rebuild (8 events each).") var turns: Int = 12
    @Option(help: "Rounds; the median ratio counts.") var rounds: Int = 9
    @Flag(help: "Exit 1 when a target is missed.") var check = false
    @Flag(help: "Also time scanning and opening alone.") var diagnose = false
    @Flag(help: "Only the rebuild side.") var rebuildOnly = false
    @Flag(help: "Only the ingest side.") var ingestOnly = false
    @Option(help: "With --rebuild-only or --ingest-only: run only this side (sealed or plaintext), for a profiler.") var profileSide: String?

    static let target = 0.9

    func run() async throws {
        let (seconds, slices, concurrency, visitors, conversations, turns, rounds, diagnose, ingestOnly) = (
            seconds, max(1, slices), concurrency, visitors, conversations, turns, rounds, diagnose, ingestOnly
        )
        let padding = String(repeating: "x", count: max(0, plaintextPadding))
        guard (0...100).contains(newVisitors) else { throw ValidationError("--new-visitors is a percentage, 0 to 100") }
        if let profileSide, !["sealed", "plaintext"].contains(profileSide) { throw ValidationError("--profile-side is sealed or plaintext") }
        let newVisitors = newVisitors
        if rebuildOnly {
            let ok = try await Self.rebuildSide(conversations: conversations, turns: turns, rounds: rounds, diagnose: diagnose, profileSide: profileSide)
            if check && !ok { throw ExitCode(1) }
            return
        }
        let ingestOK = try await BenchDatabase.withDatabase(maximumConnections: 12) { sealedClient, _ in
            try await BenchDatabase.withDatabase(maximumConnections: 12) { plainClient, _ in
                let sealed = PostgresEventStore(client: sealedClient, keyring: BenchDatabase.keyring, logger: BenchDatabase.logger)
                let plain = PostgresEventStore(
                    client: plainClient, keyring: nil, vaultConfiguration: .init(allowsPlaintext: true), logger: BenchDatabase.logger)
                report(
                    "personal-data: \(concurrency) callers, \(visitors) visitors, \(seconds) s per ingest side in \(slices) slices; rebuild of \(conversations) conversations × \(turns) turns"
                        + (padding.isEmpty ? "" : "; plaintext texts \(padding.count) characters longer")
                        + (newVisitors == 0 ? "" : "; \(newVisitors) % of the messages from new visitors"))
                var ingestRatios: [Double] = []
                var cpuRatios: [Double] = []
                try await BenchDatabase.withoutAutovacuum([sealedClient, plainClient])
                // Both stores run as in `convo serve`: announcing appends and listening, so erasures are heard
                // and live data keys are kept for minutes (a store that does not listen asks PostgreSQL for
                // them again every 10 seconds).
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await sealed.run() }
                    group.addTask { try await plain.run() }
                    defer { group.cancelAll() }
                    for round in 1...rounds {
                        let (withSealing, without) = try await Self.ingestRound(
                            round: round, slices: slices, sealed: (sealed, sealedClient), plain: (plain, plainClient),
                            seconds: seconds, concurrency: concurrency, visitors: visitors, padding: padding, newVisitors: newVisitors,
                            only: ingestOnly ? profileSide : nil)
                        ingestRatios.append(withSealing.rate / without.rate)
                        func µs(_ seconds: Double) -> String { (seconds * 1e6).formatted(0) }
                        let (sealedCPU, plainCPU) = (withSealing.cpuPerMessage, without.cpuPerMessage)
                        report(
                            "  round \(round): ingest sealed \(withSealing.rate.formatted(0)) msg/s, plaintext \(without.rate.formatted(0)) msg/s: ×\((withSealing.rate / without.rate).formatted(3)); "
                                + "CPU per message sealed: this process \(µs(sealedCPU.process)) µs, PostgreSQL and the rest \(µs(sealedCPU.rest)) µs; "
                                + "plaintext \(µs(plainCPU.process)) µs, \(µs(plainCPU.rest)) µs; "
                                + "messages per batch sealed \(withSealing.perBatch.formatted(1)), plaintext \(without.perBatch.formatted(1)); "
                                + "WAL per message sealed \(withSealing.walPerMessage.formatted(0)) bytes, plaintext \(without.walPerMessage.formatted(0)) bytes")
                        cpuRatios.append((plainCPU.process + plainCPU.rest) / (sealedCPU.process + sealedCPU.rest))
                    }
                }
                report("machine CPU per message, plaintext / sealed: ×\(cpuRatios.sorted()[cpuRatios.count / 2].formatted(3)) median of \(rounds)")
                let ingest = ingestRatios.sorted()[ingestRatios.count / 2]
                let ingestOK = ingest >= Self.target
                report("ingest with sealing / without: ×\(ingest.formatted(3)) median of \(rounds) (target ≥ \(Self.target)) \(ingestOK ? "ok" : "MISSED")")

                return ingestOK
            }
        }
        // The rebuilds start after the ingest's databases are dropped: their tables and indexes would
        // otherwise share PostgreSQL's buffers and the machine's page cache with the rebuild's.
        let rebuildOK = ingestOnly ? true : try await Self.rebuildSide(conversations: conversations, turns: turns, rounds: rounds, diagnose: diagnose)
        if check && !(ingestOK && rebuildOK) { throw ExitCode(1) }
    }


    /// Rebuilds on two new databases holding the same conversations, sealed and in plaintext.
    static func rebuildSide(conversations: Int, turns: Int, rounds: Int, diagnose: Bool, profileSide: String? = nil) async throws -> Bool {
        try await BenchDatabase.withDatabase(maximumConnections: 12) { sealedClient, _ in
            try await BenchDatabase.withDatabase(maximumConnections: 12) { plainClient, _ in
                let sealed = PostgresEventStore(client: sealedClient, keyring: BenchDatabase.keyring, logger: BenchDatabase.logger)
                let plain = PostgresEventStore(
                    client: plainClient, keyring: nil, vaultConfiguration: .init(allowsPlaintext: true), logger: BenchDatabase.logger)
                    let sealedTenant = TenantID(rawValue: "rebuild")!
                    try await Self.generate(sealed, tenant: sealedTenant, conversations: conversations, turns: turns)
                    try await Self.generate(plain, tenant: sealedTenant, conversations: conversations, turns: turns)
                    for client in [sealedClient, plainClient] { try await client.query("VACUUM (FREEZE, ANALYZE) events", logger: BenchDatabase.logger) }
                    try await BenchDatabase.withoutAutovacuum([sealedClient, plainClient])
                    if diagnose {
                        let narrowed = PersonalDataOpening.read(by: ProjectionRegistry.standard)
                        for (name, store, opening) in [
                            ("sealed", sealed, PersonalDataOpening.all), ("sealed, what the folds read", sealed, narrowed), ("plaintext", plain, .all),
                            ("sealed", sealed, .all), ("sealed, what the folds read", sealed, narrowed), ("plaintext", plain, .all),
                        ] {
                            let started = ContinuousClock.now
                            let count = try await store.scanAll(after: 0, batchSize: 2000, opening: opening) { _ in }
                            let elapsed = ContinuousClock.now - started
                            report("  scan \(name): \(count) events in \(elapsed) (\((Double(count) / elapsed.seconds).formatted(0)) ev/s)")
                        }
                        // Reading alone (pages, nothing opened), then opening alone on the pages read.
                        var batches: [[RecordedEvent]] = []
                        for (name, client) in [("sealed", sealedClient), ("plaintext", plainClient), ("sealed", sealedClient), ("plaintext", plainClient)] {
                            let raw = PostgresEventStore(client: client, keyring: nil, vaultConfiguration: .init(allowsPlaintext: true), logger: BenchDatabase.logger)
                            var position: Int64 = 0
                            var read: [[RecordedEvent]] = []
                            let started = ContinuousClock.now
                            while true {
                                let rows = try await raw.readAllUnopened(after: position, maxCount: 2000)
                                guard let last = rows.last else { break }
                                read.append(rows)
                                position = last.globalPosition
                            }
                            let bytes = read.map { $0.map { $0.data.readableBytes + $0.metadataJSON.readableBytes }.reduce(0, +) }.reduce(0, +)
                            report("  read unopened \(name): \(read.map(\.count).reduce(0, +)) events in \(ContinuousClock.now - started), \(bytes / 1_000_000) MB of JSON")
                            if name == "sealed" { batches = read }
                        }
                        for _ in 0..<2 {
                            let started = ContinuousClock.now
                            var count = 0
                            for batch in batches { count += try await sealed.openPersonalData(batch).count }
                            let elapsed = ContinuousClock.now - started
                            report("  open alone: \(count) events in \(elapsed)")
                        }
                    }
                    if let only = profileSide {
                        // For a profiler: one side's rebuilds only, nothing compared.
                        for round in 1...rounds {
                            try await BenchDatabase.settle([sealedClient, plainClient])
                            let (count, seconds, cpu) = try await Self.rebuild(only == "sealed" ? sealed : plain)
                            report("  \(only) round \(round): \((Double(count) / seconds).formatted(0)) ev/s, this process \(cpu.benchmark.formatted(2)) s")
                        }
                        return true
                    }
                    // This process should be quiet before the rounds: work left running (from the ingest side, say)
                    // would add to the slower side's CPU and time the more.
                    let quietBefore = IngestBaselines.CPU.now(server: nil)
                    try await Task.sleep(for: .seconds(2))
                    let quiet = IngestBaselines.CPU.now(server: nil) - quietBefore
                    report("  before the rebuilds, 2 s idle: this process \(quiet.benchmark.formatted(3)) s of CPU, the machine \(quiet.machine.formatted(3)) s")
                    var rebuildRatios: [Double] = []
                    for round in 1...rounds {
                        let ((count, sealedSeconds, sealedCPU), (_, plainSeconds, plainCPU)) = try await Self.sides(
                            round: round, settling: [sealedClient, plainClient],
                            sealed: {
                                try await Self.prewarm(sealedClient)
                                return try await Self.rebuild(sealed)
                            },
                            plain: {
                                try await Self.prewarm(plainClient)
                                return try await Self.rebuild(plain)
                            })
                        let ratio = plainSeconds / sealedSeconds
                        rebuildRatios.append(ratio)
                        func cpu(_ cpu: IngestBaselines.CPU) -> String { "this process \(cpu.benchmark.formatted(2)) s, the rest \(cpu.rest.formatted(2)) s" }
                        report(
                            "  round \(round): rebuild of \(count) events sealed \((Double(count) / sealedSeconds).formatted(0)) ev/s, plaintext \((Double(count) / plainSeconds).formatted(0)) ev/s: ×\(ratio.formatted(3)); "
                                + "CPU sealed: \(cpu(sealedCPU)); plaintext: \(cpu(plainCPU))")
                    }
                    let rebuild = rebuildRatios.sorted()[rebuildRatios.count / 2]
                    let rebuildOK = rebuild >= Self.target
                    report("rebuild with opening / without: ×\(rebuild.formatted(3)) median of \(rounds) (target ≥ \(Self.target)) \(rebuildOK ? "ok" : "MISSED")")
                    return rebuildOK

            }
        }
    }

    /// The two sides of a round, each started on settled databases (``BenchDatabase/settle(_:)``): the
    /// sealed side first in odd rounds, the plaintext side in even ones (the databases grow as rounds go on).
    static func sides<T>(
        round: Int, settling clients: [PostgresClient], sealed: () async throws -> T, plain: () async throws -> T
    ) async throws -> (sealed: T, plain: T) {
        if round % 2 == 1 {
            try await BenchDatabase.settle(clients)
            let first = try await sealed()
            try await BenchDatabase.settle(clients)
            return (first, try await plain())
        }
        try await BenchDatabase.settle(clients)
        let first = try await plain()
        try await BenchDatabase.settle(clients)
        return (try await sealed(), first)
    }

    /// What one side's ingest came to in a round.
    struct IngestMeasure {
        var sent = 0
        var seconds = 0.0
        var cpu = IngestBaselines.CPU.zero
        var wal = 0.0
        var batches = 0
        var batched = 0

        var rate: Double { Double(sent) / seconds }
        /// CPU per message: this process's (the callers, the batcher, sealing) and the rest of the machine's
        /// busy time (PostgreSQL, mostly).
        var cpuPerMessage: (process: Double, rest: Double) {
            (cpu.benchmark / Double(max(1, sent)), max(0, cpu.machine - cpu.benchmark) / Double(max(1, sent)))
        }
        var perBatch: Double { Double(batched) / Double(max(1, batches)) }
        var walPerMessage: Double { wal / Double(max(1, sent)) }
    }

    /// One round of ingest: both databases settled, then each side's seconds cut into `slices` that take
    /// turns (the side going first alternating from slice to slice and from round to round), each side
    /// through an IngestBatcher of its own running for the whole round. Taking turns in short slices puts both sides in the same stretches of
    /// this noisy machine (a neighbour's burst, PostgreSQL's background work) rather than one side in each.
    static func ingestRound(
        round: Int, slices: Int, sealed: (PostgresEventStore, PostgresClient), plain: (PostgresEventStore, PostgresClient),
        seconds: Double, concurrency: Int, visitors: Int, padding: String = "", newVisitors: Int = 0, only: String? = nil
    ) async throws -> (sealed: IngestMeasure, plain: IngestMeasure) {
        try await BenchDatabase.settle([sealed.1, plain.1])
        let batchers = [IngestBatcher(store: sealed.0, logger: BenchDatabase.logger), IngestBatcher(store: plain.0, logger: BenchDatabase.logger)]
        let clients = [sealed.1, plain.1]
        var measures = [IngestMeasure(), IngestMeasure()]
        try await withThrowingTaskGroup(of: Void.self) { group in
            for batcher in batchers { group.addTask { try await batcher.run() } }
            defer { group.cancelAll() }
            for slice in 0..<slices {
                for side in (round + slice) % 2 == 1 ? [0, 1] : [1, 0] where only == nil || only == ["sealed", "plaintext"][side] {
                    let walBefore = try await walPosition(clients[side])
                    let before = IngestBaselines.CPU.now(server: nil)
                    let (sent, elapsed) = try await ingestSlice(
                        batchers[side], seconds: seconds / Double(slices), concurrency: concurrency, visitors: visitors, round: round, slice: slice,
                        padding: side == 1 ? padding : "", newVisitors: newVisitors)
                    measures[side].cpu = measures[side].cpu + (IngestBaselines.CPU.now(server: nil) - before)
                    measures[side].wal += try await walPosition(clients[side]) - walBefore
                    measures[side].sent += sent
                    measures[side].seconds += elapsed
                }
            }
        }
        for side in 0..<2 { (measures[side].batches, measures[side].batched) = batchers[side].written }
        return (measures[0], measures[1])
    }

    /// `concurrency` callers sending one message after another through a running IngestBatcher for
    /// `seconds`: how many were stored, and in how long.
    static func ingestSlice(
        _ batcher: IngestBatcher, seconds: Double, concurrency: Int, visitors: Int, round: Int, slice: Int, padding: String, newVisitors: Int = 0
    ) async throws -> (Int, Double) {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        let started = ContinuousClock.now
        let sent = try await withThrowingTaskGroup(of: Int.self) { callersGroup in
            for caller in 0..<concurrency {
                callersGroup.addTask {
                    var count = 0
                    while ContinuousClock.now < deadline {
                        // Every message whose number falls in the first `newVisitors` of each hundred is a new
                        // visitor's first, in a conversation of its own; the others go to the returning visitors.
                        let (visitor, conversation) =
                            (caller * 7 + count) % 100 < newVisitors
                            ? ("n\(round)-\(slice)-\(caller)-\(count)", "r\(round)-n\(slice)-\(caller)-\(count)")
                            : ("v\((caller * 7919 + count * 31) % visitors)", "r\(round)-c\((caller * 7919 + count * 31) % visitors)")
                        let message = IncomingMessage(
                            tenant: TenantID(rawValue: "ingest")!, conversationId: ConversationID(rawValue: conversation)!,
                            visitorUid: VisitorUID(rawValue: visitor)!, messageId: "m\(slice)-\(caller)-\(count)",
                            text: "Hello, I ordered a blue jacket last week and it has not arrived yet; my order number is \(caller)-\(count).\(padding)",
                            sentAt: Date())
                        _ = try await batcher.ingest(message)
                        count += 1
                    }
                    return count
                }
            }
            return try await callersGroup.reduce(0, +)
        }
        let elapsed = ContinuousClock.now - started
        return (sent, elapsed.seconds)
    }

    /// Where PostgreSQL's write-ahead log is: bytes written to it since it began (the whole server's).
    static func walPosition(_ client: PostgresClient) async throws -> Double {
        for try await wal in try await client.query("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8", logger: BenchDatabase.logger).decode(Double.self) {
            return wal
        }
        return 0
    }

    /// What the responder writes for `turns` turns of each conversation, through the store (sealed when it seals).
    static func generate(_ store: PostgresEventStore, tenant: TenantID, conversations: Int, turns: Int) async throws {
        let chunk = 250
        for start in stride(from: 0, to: conversations, by: chunk) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for conversation in start..<min(conversations, start + chunk) {
                    group.addTask {
                        let id = ConversationID(rawValue: "c\(conversation)")!
                        let visitor = VisitorUID(rawValue: "v\(conversation)")!
                        let subject = PersonalDataSubject(visitor: visitor, mayCreateKey: true)
                        var messages: [NewEvent] = [try NewEvent(type: ConversationStarted.eventType, encoding: ConversationStarted(visitorUid: visitor, startedAt: Date()))]
                        var workflow: [NewEvent] = []
                        let metadata = EventMetadata(actorId: SystemActor.actorID, extra: ["visitorUid": .string(visitor.rawValue)])
                        workflow.append(try NewEvent(type: WorkflowStarted.eventType, encoding: WorkflowStarted(workflowId: "support", workflowVersion: 1, startNodeId: "wait"), metadata: metadata))
                        for turn in 1...turns {
                            let text = "Where is my order number \(conversation)-\(turn)? It was due yesterday."
                            messages.append(
                                try NewEvent(
                                    type: VisitorMessageReceived.eventType,
                                    encoding: VisitorMessageReceived(messageId: "m\(turn)", visitorUid: visitor, text: text, sentAt: Date()), subject: subject))
                            let decided: [WorkflowEvent] = [
                                .variableSet(WorkflowVariableSet(name: "question", value: .string(text), nodeId: "wait")),
                                .transitioned(WorkflowTransitioned(from: "wait", to: "answer", causedByMessageId: "m\(turn)")),
                                .assistantMessageSent(
                                    AssistantMessageSent(
                                        text: "Orders usually arrive within 3 to 5 working days; I have noted order \(conversation)-\(turn).", nodeId: "answer",
                                        inReplyTo: ["m\(turn)"], provider: "rules")),
                                .toolCalled(ToolCalled(tool: "add_tag", arguments: ["tag": "shipping"], outcome: .succeeded, actorId: SystemActor.actorID, nodeId: "answer")),
                                .waitingForInput(WorkflowWaitingForInput(nodeId: "wait")),
                                .messagesProcessed(MessagesProcessed(upToVersion: Int64(turn + 1))),
                            ]
                            workflow += try decided.map { try NewEvent(type: $0.eventType, encoding: $0, metadata: metadata, subject: subject) }
                        }
                        try await store.append(messages, to: id.messagesStream, tenant: tenant, expectedVersion: .noStream)
                        try await store.append(workflow, to: id.workflowStream, tenant: tenant, expectedVersion: .noStream)
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    /// Loads the side's `events` table and its primary key into PostgreSQL's shared buffers before its
    /// rebuild: the two databases together outgrow this machine's 128 MB, so each side's rebuild would
    /// otherwise start with part of its table pushed out by the other side's (the larger sealed table the
    /// more), which measured the alternation as much as the opening.
    static func prewarm(_ client: PostgresClient) async throws {
        try await client.query("CREATE EXTENSION IF NOT EXISTS pg_prewarm", logger: BenchDatabase.logger)
        try await client.query("SELECT pg_prewarm('events'), pg_prewarm('events_pkey')", logger: BenchDatabase.logger)
    }

    /// Rebuilds every projection; how many events and how long.
    static func rebuild(_ store: PostgresEventStore) async throws -> (Int64, Double, IngestBaselines.CPU) {
        let before = IngestBaselines.CPU.now(server: nil)
        let started = ContinuousClock.now
        let summaries = try await ProjectionRebuilder(store: store, logger: BenchDatabase.logger).rebuild(ProjectionRegistry.standard, reason: "bench")
        let elapsed = ContinuousClock.now - started
        let events = summaries.map(\.events).max() ?? 0
        return (events, elapsed.seconds, IngestBaselines.CPU.now(server: nil) - before)
    }
}
