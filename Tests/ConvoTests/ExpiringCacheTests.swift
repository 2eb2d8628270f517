import Testing

@testable import convo

/// The cache behind the key and console-session checks: expiry, and eviction of the least recently used.
@Suite struct ExpiringCacheTests {
    @Test func aValueIsForgottenWhenItExpires() {
        var cache = ExpiringCache<String, Int>(capacity: 100)
        let now = ContinuousClock.now
        cache.insert(1, for: "a", until: now + .seconds(5))
        #expect(cache.value(for: "a", at: now) == 1)
        #expect(cache.value(for: "a", at: now + .seconds(5)) == nil)
        cache.remove("a")
        #expect(cache.value(for: "a", at: now) == nil && cache.count == 0)
    }

    /// A flood of new entries past the capacity evicts the least recently used tenth, not the entries in use.
    @Test func aFloodEvictsTheLeastRecentlyUsedAndKeepsWhatIsInUse() {
        var cache = ExpiringCache<Int, Int>(capacity: 100)
        let later = ContinuousClock.now + .seconds(60)
        for key in 0..<100 { cache.insert(key, for: key, until: later) }
        for key in 0..<5 { #expect(cache.value(for: key, at: .now) == key) }  // in use
        for key in 100..<1_000 {
            cache.insert(key, for: key, until: later)
            for used in 0..<5 { _ = cache.value(for: used, at: .now) }
        }
        #expect(cache.count <= 100)
        for key in 0..<5 { #expect(cache.value(for: key, at: .now) == key, "entry \(key), used all along, was evicted") }
        #expect(cache.value(for: 999, at: .now) == 999)
        #expect(cache.value(for: 50, at: .now) == nil)
        cache.removeAll { $0 < 3 }
        #expect(cache.value(for: 1, at: .now) == nil && cache.value(for: 4, at: .now) == 4)
    }
}
