/// Values remembered until they expire, at most `capacity` of them: past it, the least recently used tenth
/// is dropped at once (so eviction is rare however full the cache, and a flood of new entries evicts the
/// entries in use last). Not thread-safe: keep it in a `Mutex`.
struct ExpiringCache<Key: Hashable, Value> {
    private struct Entry {
        var value: Value
        var expires: ContinuousClock.Instant
        var used: UInt64
    }

    let capacity: Int
    private var entries: [Key: Entry] = [:]
    private var tick: UInt64 = 0

    init(capacity: Int) {
        self.capacity = max(10, capacity)
    }

    var count: Int { entries.count }

    /// The value of `key` when it has not expired by `now` (marking it used).
    mutating func value(for key: Key, at now: ContinuousClock.Instant) -> Value? {
        guard var entry = entries[key], entry.expires > now else { return nil }
        tick &+= 1
        entry.used = tick
        entries[key] = entry
        return entry.value
    }

    mutating func insert(_ value: Value, for key: Key, until expires: ContinuousClock.Instant) {
        if entries[key] == nil && entries.count >= capacity {
            let victims = entries.sorted { $0.value.used < $1.value.used }.prefix(capacity / 10)
            for (victim, _) in victims { entries.removeValue(forKey: victim) }
        }
        tick &+= 1
        entries[key] = Entry(value: value, expires: expires, used: tick)
    }

    mutating func remove(_ key: Key) {
        entries.removeValue(forKey: key)
    }

    mutating func removeAll(where matches: (Value) -> Bool) {
        entries = entries.filter { !matches($0.value.value) }
    }
}
