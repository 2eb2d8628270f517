import Foundation

/// The run of `./scripts/test` this process belongs to (`CONVO_TEST_RUN`), or `manual`.
///
/// The folders of the daemons a test starts carry it, so that `./scripts/test` can end what a test could
/// not (a test process that crashed runs no clean-up), this run's and no other's.
public enum TestRun {
    public static let tag: String = {
        let raw = ProcessInfo.processInfo.environment["CONVO_TEST_RUN"] ?? "manual"
        let safe = raw.filter { $0.isLetter || $0.isNumber || $0 == "." }
        return safe.isEmpty ? "manual" : safe
    }()
}
