import ArgumentParser

@main
struct ConvoBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convo-bench",
        abstract: "convo's code against a raw baseline, in one process and one run; prints rates and ratios.",
        subcommands: [EventStoreBenchmark.self, ResponderBenchmark.self, ProjectionBenchmark.self, IngestBenchmark.self, AnsweringBenchmark.self, AuditBenchmark.self, RedisTopologyBenchmark.self, WebhookLagBenchmark.self, PersonalDataBenchmark.self, ConsoleBenchmark.self, EncodingBenchmark.self, FrameworkServer.self]
    )
}
