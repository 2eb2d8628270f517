/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held. For states
/// that other tasks or processes reach in their own time (runners catching up, readers seeing a commit).
public func eventually(timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}
