import Crypto
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOCore
import PostgresNIO
import SharedTypes
import Synchronization

/// Seals the personal members of events with their visitor's own data key as they are appended, and
/// opens them as they are read: AES-256-GCM (``GCMCipher``, libcrypto), bound to the tenant, the visitor,
/// the key's generation, the event's id and the member's name, so a ciphertext cannot be moved elsewhere.
///
/// A sealed member is stored as the JSON string `pd1:` + base64(nonce ‖ ciphertext ‖ tag), and the event's
/// metadata says whose it is: `"pd": "GENERATION SUBJECT"` (the key's generation, a space, the visitor) when
/// the members sealed are those its type lists (``PersonalData/fieldsByType``), which is nearly always;
/// otherwise, and in events stored before the short form, `"personalData": {"subject": uid, "key":
/// generation, "fields": [...]}`. Both are read. The short form keeps a sealed row about 75 bytes smaller
/// (26 bytes of JSONB against 101), which PostgreSQL writes for every event with personal data. The hash
/// chain covers what is stored, the ciphertext, so it verifies before and after an erasure.
///
/// Data keys live in `personal_data_keys` (`Migrations/0015_personal_data_keys.sql`), wrapped by the
/// current master key of a ``MasterKeyring``. Destroying a visitor's keys (``destroyKeys(tenant:subject:)``)
/// makes everything sealed with them read as ``PersonalData/erasedPlaceholder`` for good, with the event
/// marked ``RecordedEvent/isErased``. Unwrapped keys are kept in memory for
/// ``Configuration/cacheLifetime`` (erased ones for good); every process that listens on the store's
/// channel drops a visitor's at once when they are destroyed anywhere.
public final class PersonalDataVault: Sendable {
    public struct Configuration: Sendable {
        /// How long an unwrapped data key is used without asking PostgreSQL again; bounds how long a
        /// process that missed the notification of an erasure can still read. Default: 10 seconds.
        public var cacheLifetime: Duration
        /// Whether events with personal members may be stored unsealed when no master key is configured:
        /// only for measuring what sealing costs. Default: `false` (such an append is refused).
        public var allowsPlaintext: Bool

        public init(cacheLifetime: Duration = .seconds(10), allowsPlaintext: Bool = false) {
            self.cacheLifetime = cacheLifetime
            self.allowsPlaintext = allowsPlaintext
        }
    }

    public let keyring: MasterKeyring?
    public let configuration: Configuration
    let client: PostgresClient
    let channel: String
    let logger: Logger
    private let cache = Mutex(Cache())
    /// Reads of visitors' latest keys made, for tests to tell a key read from one left out.
    let keyReads = Atomic<Int>(0)
    /// Whether the store's `LISTEN` is up: every erasure then reaches this process as it commits, and live
    /// keys are kept for ``listeningCacheLifetime`` rather than ``Configuration/cacheLifetime``.
    private let listening = Atomic<Bool>(false)
    /// How long a live key is kept while erasures are heard: 10 minutes (memory, not staleness, bounds it).
    static let listeningCacheLifetime: Duration = .seconds(600)
    /// The most keys kept in memory; past it the live ones are dropped (they are read again as needed).
    static let cacheLimit = 200_000

    static let envelopePrefix = "pd1:"
    /// The seal record's key in the metadata: the long form (any fields) and the short one (the type's).
    static let metadataKey = "personalData"
    static let shortMetadataKey = "pd"

    struct SubjectKey: Hashable, Sendable {
        var tenant: String
        var subject: String
    }

    struct GenerationKey: Hashable, Sendable {
        var tenant: String
        var subject: String
        var generation: Int
    }

    enum DataKey: Sendable {
        case live(SymmetricKey)
        case erased
    }

    struct Cache: Sendable {
        var keys: [GenerationKey: (key: DataKey, expires: ContinuousClock.Instant?)] = [:]
        var current: [SubjectKey: (generation: Int, key: SymmetricKey, expires: ContinuousClock.Instant)] = [:]
        /// Subjects ``readKeys(_:)`` found without any key, until when: the next seal makes their key
        /// without asking again (once; the statement that stores the key is refused should one exist by then).
        var keyless: [SubjectKey: ContinuousClock.Instant] = [:]
        /// Grows with every erasure heard and every drop: a key read before it changed is not kept, since the
        /// erasure may have been handled between the read and the keeping.
        var epoch = 0
    }

    init(keyring: MasterKeyring?, configuration: Configuration, client: PostgresClient, channel: String, logger: Logger) {
        self.keyring = keyring
        self.configuration = configuration
        self.client = client
        self.channel = channel
        self.logger = logger
    }

    // MARK: Sealing

    /// The events with their personal members sealed and their metadata naming whose they are.
    ///
    /// - Throws: ``EventStoreError`` `invalidArgument` for personal members without a subject or a payload
    ///   that is not a JSON object; `subjectErased` when the subject's key is destroyed and the event may not
    ///   make a new one; `keyUnavailable` without a master key; the store's errors.
    func seal(_ events: [NewEvent], tenant: TenantID) async throws -> [NewEvent] {
        guard events.contains(where: { !$0.personalFields.isEmpty }) else { return events }
        return try await seal([(events, tenant)]).results[0].get()
    }

    /// A data key made for a visitor who had none, not stored yet: the append whose events it sealed stores
    /// it in the same transaction (``PostgresEventStore/appendMany(_:)``), so a key and the first events
    /// sealed with it are committed, or lost, together, with one commit.
    struct NewKey: Sendable {
        var id: SubjectKey
        var generation: Int
        var key: SymmetricKey
        var masterKeyId: String
        var wrapped: ByteBuffer
    }

    /// Appends' events sealed: each append's result, and the keys made for them and left to their append
    /// to store (only when asked to leave them).
    struct Sealed: Sendable {
        var results: [Result<[NewEvent], EventStoreError>]
        var newKeys: [NewKey]
        /// The erasures heard when the keys were made: a new key is kept in memory only if none was since.
        var epoch: Int
    }

    /// Several appends' events sealed, their keys read (and made) in one query each: each append gets its
    /// own result, so one append's refusal does not fail the others.
    ///
    /// - Parameter leavingNewKeys: whether keys made for visitors who have none are left unstored, in
    ///   ``Sealed/newKeys``, for the caller to store with the events (and then ``kept(_:epoch:)``); when not,
    ///   they are stored here first, each batch of them in a transaction of its own.
    func seal(_ appends: [([NewEvent], TenantID)], leavingNewKeys: Bool = false) async throws -> Sealed {
        var wanted: [SubjectKey: Bool] = [:]
        var results: [Result<[NewEvent], EventStoreError>] = appends.map { .success($0.0) }
        for (index, (events, tenant)) in appends.enumerated() {
            for event in events where !event.personalFields.isEmpty {
                guard let subject = event.personalDataSubject else {
                    results[index] = .failure(
                        EventStoreError(
                            code: .invalidArgument,
                            message: "a \(event.type) carries personal data (\(event.personalFields.joined(separator: ", "))): the append must name its visitor"))
                    break
                }
                guard keyring != nil else {
                    if configuration.allowsPlaintext { continue }
                    results[index] = .failure(EventStoreError(code: .keyUnavailable, message: "no master key is configured: personal data cannot be stored"))
                    break
                }
                let id = SubjectKey(tenant: tenant.rawValue, subject: subject.visitor.rawValue)
                wanted[id] = (wanted[id] ?? false) || subject.mayCreateKey
            }
        }
        guard !wanted.isEmpty else { return Sealed(results: results, newKeys: [], epoch: 0) }
        let (keys, newKeys, epoch) = try await currentKeys(wanted, storingNewKeys: !leavingNewKeys)
        var sealing = Ciphers(sealing: true)
        var used = Set<SubjectKey>()
        for (index, (events, tenant)) in appends.enumerated() {
            guard case .success = results[index] else { continue }
            do {
                var sealed = events
                var sealedWith = Set<SubjectKey>()
                for position in sealed.indices where !sealed[position].personalFields.isEmpty {
                    guard let subject = sealed[position].personalDataSubject else { continue }
                    let id = SubjectKey(tenant: tenant.rawValue, subject: subject.visitor.rawValue)
                    switch keys[id] {
                    case .some(.some(let current)):
                        try Self.seal(&sealed[position], tenant: tenant, generation: current.generation, key: current.key, with: &sealing)
                        sealedWith.insert(id)
                    default:
                        throw EventStoreError(code: .subjectErased, message: "the visitor was forgotten: what was derived from their data is not stored")
                    }
                }
                results[index] = .success(sealed)
                used.formUnion(sealedWith)
            } catch let error as EventStoreError {
                results[index] = .failure(error)
            }
        }
        // A key made for a visitor whose every append was refused (a payload that is not an object) seals
        // nothing that is stored: it is not stored either.
        return Sealed(results: results, newKeys: newKeys.filter { used.contains($0.id) }, epoch: epoch)
    }

    /// Keeps in memory keys ``seal(_:leavingNewKeys:)`` left, once their append has committed them; not when
    /// an erasure was heard since they were made (the visitor's keys are read again next time).
    func kept(_ newKeys: [NewKey], epoch: Int) {
        for new in newKeys { remember(new.id, generation: new.generation, key: new.key, ifEpoch: epoch) }
    }

    /// The ciphers and scratch buffers of a batch being sealed or opened: a cipher per data key, made at its
    /// first member and kept for the batch, and the box and associated data of one member at a time.
    struct Ciphers {
        let sealing: Bool
        private var made: [GenerationKey: GCMCipher] = [:]
        var box: [UInt8] = []
        var associatedData: [UInt8] = []

        init(sealing: Bool) { self.sealing = sealing }

        mutating func cipher(_ id: GenerationKey, key: SymmetricKey) throws -> GCMCipher {
            if let found = made[id] { return found }
            guard let cipher = GCMCipher.make(key: key, sealing: sealing) else {
                throw EventStoreError(code: .storageFailure, message: "the cipher of a data key could not be set up")
            }
            made[id] = cipher
            return cipher
        }

        /// What opens the members sealed with `key`: its cipher, or nothing when it is destroyed.
        mutating func opener(_ id: GenerationKey, _ key: DataKey) throws -> Opener {
            guard case .live(let key) = key else { return .erased }
            return .live(try cipher(id, key: key))
        }
    }

    /// Seals one event's personal members with `key`.
    static func seal(_ event: inout NewEvent, tenant: TenantID, generation: Int, key: SymmetricKey) throws {
        var sealing = Ciphers(sealing: true)
        try seal(&event, tenant: tenant, generation: generation, key: key, with: &sealing)
    }

    /// Seals one event's personal members with `key`, its cipher and buffers kept in `sealing` for the next.
    static func seal(_ event: inout NewEvent, tenant: TenantID, generation: Int, key: SymmetricKey, with sealing: inout Ciphers) throws {
        guard let subject = event.personalDataSubject else { return }
        let cipher = try sealing.cipher(GenerationKey(tenant: tenant.rawValue, subject: subject.visitor.rawValue, generation: generation), key: key)
        let current = event
        var fields: [String] = []
        let data = try current.data.withUnsafeReadableBytes { bytes throws -> ByteBuffer in
            let members: [JSONMembers.Member]
            do { members = try JSONMembers.members(of: bytes) } catch {
                throw EventStoreError(code: .invalidArgument, message: "a \(current.type) with personal data must be a JSON object")
            }
            var out = ByteBuffer()
            out.reserveCapacity(bytes.count * 2 + 64)
            var copied = 0
            for member in members {
                guard let field = current.personalFields.first(where: { JSONMembers.matches(bytes, member.key, $0) }) else { continue }
                out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[copied..<member.value.lowerBound]))
                associatedData(
                    tenant: tenant.rawValue, subject: subject.visitor.rawValue, generation: generation, eventId: current.eventId, field: field,
                    into: &sealing.associatedData)
                let sealed = sealing.associatedData.withUnsafeBytes { associated in
                    cipher.seal(UnsafeRawBufferPointer(rebasing: bytes[member.value]), authenticating: associated, into: &sealing.box)
                }
                guard sealed else { throw EventStoreError(code: .storageFailure, message: "sealing produced no ciphertext") }
                out.writeInteger(UInt8(ascii: "\""))
                out.writeString(envelopePrefix)
                Base64.encode(sealing.box, into: &out)
                out.writeInteger(UInt8(ascii: "\""))
                copied = member.value.upperBound
                fields.append(field)
            }
            out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[copied...]))
            return out
        }
        guard !fields.isEmpty else { return }
        event.data = data
        if fields == PersonalData.fields(ofType: event.type) {
            event.metadata[shortMetadataKey] = .string("\(generation) \(subject.visitor.rawValue)")
        } else {
            event.metadata[metadataKey] = .object([
                "subject": .string(subject.visitor.rawValue), "key": .number(Double(generation)), "fields": .array(fields.map(JSONValue.string)),
            ])
        }
    }

    /// What a sealed member is bound to besides its key.
    /// Written into `bytes` (emptied first, its capacity kept: a batch reuses one array).
    static func associatedData(tenant: String, subject: String, generation: Int, eventId: UUID, field: String, into bytes: inout [UInt8]) {
        bytes.removeAll(keepingCapacity: true)
        bytes.reserveCapacity(64 + tenant.utf8.count + subject.utf8.count + field.utf8.count)
        bytes += "convo.pd.v1".utf8
        bytes.append(0)
        bytes += tenant.utf8
        bytes.append(0)
        bytes += subject.utf8
        bytes.append(0)
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: generation).bigEndian) { bytes += $0 }
        withUnsafeBytes(of: eventId.uuid) { bytes += $0 }
        bytes += field.utf8
    }

    /// How long a subject found without a key is taken to have none (``readKeys(_:)``).
    static let keylessLifetime: Duration = .seconds(5)

    /// Visitors whose keys are neither in memory nor known to be missing: what ``readKeys(_:)`` reads.
    public struct KeysToRead: Sendable {
        fileprivate var ids: [SubjectKey]
        fileprivate var epoch: Int

        public var isEmpty: Bool { ids.isEmpty }
    }

    /// The visitors of `visitors` whose keys ``readKeys(_:)`` would read: those without a live key in memory
    /// or a recent finding that they have none. Memory only; empty without a master key.
    public func keysToRead(for visitors: [(TenantID, VisitorUID)]) -> KeysToRead {
        guard keyring != nil, !visitors.isEmpty else { return KeysToRead(ids: [], epoch: 0) }
        let now = ContinuousClock.now
        return cache.withLock { cache in
            var missing = Set<SubjectKey>()
            for (tenant, visitor) in visitors {
                let id = SubjectKey(tenant: tenant.rawValue, subject: visitor.rawValue)
                if let cached = cache.current[id], cached.expires > now { continue }
                if let until = cache.keyless[id], until > now { continue }
                missing.insert(id)
            }
            return KeysToRead(ids: Array(missing), epoch: cache.epoch)
        }
    }

    /// Reads, ahead of the append that will seal their events, the keys of visitors that are not in memory
    /// (``keysToRead(for:)``): found keys are kept, and visitors found without one are noted so that the
    /// seal makes theirs without asking PostgreSQL again. Ingest runs it beside its other reads, so a batch
    /// with new visitors waits for one round trip fewer.
    ///
    /// Only a hint: a failed read is ignored (the seal reads then), and a key stored by another writer
    /// between this read and the append makes the append's statement write nothing and be tried again
    /// with the key read (``PostgresEventStore/appendMany(_:)``).
    public func readKeys(_ wanted: KeysToRead) async {
        guard !wanted.isEmpty else { return }
        let (missing, epoch) = (wanted.ids, wanted.epoch)
        var keyless = Set(missing)
        do {
            keyReads.add(1, ordering: .relaxed)
            let statement = LatestKeysStatement(tenants: missing.map(\.tenant), subjects: missing.map(\.subject))
            for (tenant, subject, generation, masterKeyId, wrapped) in try await client.executeOpen(statement, logger: logger) {
                let id = SubjectKey(tenant: tenant, subject: subject)
                keyless.remove(id)
                guard let masterKeyId, let wrapped else { continue }
                let key = try unwrap(wrapped, masterKeyId: masterKeyId, GenerationKey(tenant: tenant, subject: subject, generation: Int(generation)))
                remember(id, generation: Int(generation), key: key, ifEpoch: epoch)
            }
        } catch {
            logger.debug("reading data keys ahead failed; the append reads them", metadata: ["convo.error": "\(error)"])
            return
        }
        let until = ContinuousClock.now + Self.keylessLifetime
        cache.withLock { cache in
            guard cache.epoch == epoch else { return }
            if cache.keyless.count + keyless.count > Self.cacheLimit { cache.keyless.removeAll() }
            for id in keyless { cache.keyless[id] = until }
        }
    }

    /// The subjects' live keys for sealing, made where there is none and the value says one may be made;
    /// `nil` for a subject whose key is destroyed and may not be made again. Keys made are stored here when
    /// `storingNewKeys`; otherwise they are returned unstored (with the epoch to keep them by) and used as
    /// they are: the caller stores them with what they seal.
    private func currentKeys(
        _ wanted: [SubjectKey: Bool], storingNewKeys: Bool
    ) async throws -> (keys: [SubjectKey: (generation: Int, key: SymmetricKey)?], made: [NewKey], epoch: Int) {
        let now = ContinuousClock.now
        var found: [SubjectKey: (generation: Int, key: SymmetricKey)?] = [:]
        cache.withLock { cache in
            for id in wanted.keys {
                if let cached = cache.current[id], cached.expires > now { found[id] = (cached.generation, cached.key) }
            }
        }
        // Subjects just found without a key (readKeys(_:)) get one made without a read, when it is left
        // to the append to store: its statement writes nothing should another writer have stored one since.
        // Taken once: should that happen, the next seal reads.
        var keyless = Set<SubjectKey>()
        if !storingNewKeys {
            cache.withLock { cache in
                for id in wanted.keys where found[id] == nil {
                    if let until = cache.keyless.removeValue(forKey: id), until > now { keyless.insert(id) }
                }
            }
        }
        for _ in 0..<5 {
            let epoch = cache.withLock { $0.epoch }
            let missing = wanted.keys.filter { found[$0] == nil }
            guard !missing.isEmpty else { return (found, [], epoch) }
            var latest: [SubjectKey: (generation: Int, masterKeyId: String?, wrapped: ByteBuffer?)] = [:]
            let reading = missing.filter { !keyless.contains($0) }
            keyless = []
            if !reading.isEmpty {
                do {
                    keyReads.add(1, ordering: .relaxed)
                    let statement = LatestKeysStatement(tenants: reading.map(\.tenant), subjects: reading.map(\.subject))
                    for (tenant, subject, generation, masterKeyId, wrapped) in try await client.executeOpen(statement, logger: logger) {
                        latest[SubjectKey(tenant: tenant, subject: subject)] = (Int(generation), masterKeyId, wrapped)
                    }
                } catch {
                    throw PostgresEventStore.mapError(error, operation: "read data keys")
                }
            }
            var creating: [NewKey] = []
            for id in missing {
                if let row = latest[id], let masterKeyId = row.masterKeyId, let wrapped = row.wrapped {
                    let key = try unwrap(wrapped, masterKeyId: masterKeyId, GenerationKey(tenant: id.tenant, subject: id.subject, generation: row.generation))
                    remember(id, generation: row.generation, key: key, ifEpoch: epoch)
                    found[id] = (row.generation, key)
                } else if latest[id] != nil, wanted[id] != true {
                    found[id] = .some(nil)
                } else {
                    let generation = (latest[id]?.generation ?? 0) + 1
                    let key = SymmetricKey(size: .bits256)
                    let (masterKeyId, wrapped) = try wrap(key, GenerationKey(tenant: id.tenant, subject: id.subject, generation: generation))
                    creating.append(NewKey(id: id, generation: generation, key: key, masterKeyId: masterKeyId, wrapped: wrapped))
                }
            }
            guard !creating.isEmpty else { continue }
            // In one order everywhere: two writers inserting overlapping keys in different orders would each
            // wait for the other's row (a deadlock PostgreSQL breaks by failing one of them).
            creating.sort { ($0.id.tenant, $0.id.subject) < ($1.id.tenant, $1.id.subject) }
            guard storingNewKeys else {
                for new in creating { found[new.id] = (new.generation, new.key) }
                return (found, creating, epoch)
            }
            var created = Set<SubjectKey>()
            do {
                let rows = try await client.queryOpen(
                    """
                    INSERT INTO personal_data_keys (tenant_id, subject, generation, master_key_id, wrapped)
                    SELECT * FROM unnest(\(creating.map(\.id.tenant)), \(creating.map(\.id.subject)), \(creating.map(\.generation)), \(creating.map(\.masterKeyId)), \(creating.map(\.wrapped)))
                    ON CONFLICT DO NOTHING RETURNING tenant_id, subject
                    """, logger: logger)
                for try await (tenant, subject) in rows.decode((String, String).self) { created.insert(SubjectKey(tenant: tenant, subject: subject)) }
            } catch let error as PSQLError where error.serverInfo?[.sqlState] == "40P01" {
                // Still, should one happen (a writer of another version): nothing was inserted; read again.
                logger.debug("storing data keys met a deadlock; reading them again", metadata: ["convo.error": "\(String(reflecting: error))"])
                continue
            } catch {
                throw PostgresEventStore.mapError(error, operation: "store data keys")
            }
            for new in creating where created.contains(new.id) {
                remember(new.id, generation: new.generation, key: new.key, ifEpoch: epoch)
                found[new.id] = (new.generation, new.key)
            }
            // Another writer made a generation first: the next round reads theirs.
        }
        throw EventStoreError(code: .storageFailure, message: "could not settle the visitors' data keys")
    }

    private var liveKeyLifetime: Duration { listening.load(ordering: .acquiring) ? Self.listeningCacheLifetime : configuration.cacheLifetime }

    private func remember(_ id: SubjectKey, generation: Int, key: SymmetricKey, ifEpoch epoch: Int) {
        let expires = ContinuousClock.now + liveKeyLifetime
        cache.withLock {
            guard $0.epoch == epoch else { return }
            if $0.keys.count > Self.cacheLimit { Self.dropLive(&$0) }
            $0.current[id] = (generation, key, expires)
            $0.keys[GenerationKey(tenant: id.tenant, subject: id.subject, generation: generation)] = (.live(key), expires)
        }
    }

    func wrap(_ key: SymmetricKey, _ id: GenerationKey) throws -> (String, ByteBuffer) {
        guard let keyring else { throw EventStoreError(code: .keyUnavailable, message: "no master key is configured") }
        let box = try key.withUnsafeBytes { bytes in
            try AES.GCM.seal(bytes, using: keyring.current.key, authenticating: Self.wrappingData(id))
        }
        guard let combined = box.combined else { throw EventStoreError(code: .storageFailure, message: "wrapping produced no ciphertext") }
        return (keyring.current.id, ByteBuffer(bytes: combined))
    }

    func unwrap(_ wrapped: ByteBuffer, masterKeyId: String, _ id: GenerationKey) throws -> SymmetricKey {
        guard let keyring else {
            throw EventStoreError(code: .keyUnavailable, message: "no master key is configured: personal data cannot be read (CONVO_MASTER_KEY or --master-key-file)")
        }
        guard let master = keyring.key(id: masterKeyId) else {
            throw EventStoreError(code: .keyUnavailable, message: "a data key is wrapped by master key \(masterKeyId), which this process was not given")
        }
        do {
            let box = try AES.GCM.SealedBox(combined: Data(wrapped.readableBytesView))
            return SymmetricKey(data: try AES.GCM.open(box, using: master.key, authenticating: Self.wrappingData(id)))
        } catch {
            throw EventStoreError(code: .storageFailure, message: "a data key does not unwrap with master key \(masterKeyId): it was altered", cause: error)
        }
    }

    static func wrappingData(_ id: GenerationKey) -> [UInt8] {
        Array("convo.dk.v1\u{0}\(id.tenant)\u{0}\(id.subject)\u{0}\(id.generation)".utf8)
    }

    // MARK: Opening

    struct SealInfo: Decodable {
        struct Personal: Decodable, Equatable {
            var subject: String
            var key: Int
            var fields: [String]
        }

        var personalData: Personal?
        var pd: String?

        /// The record, long or short (whose fields are those of `type`); `nil` when the event is not sealed.
        /// - Throws: ``EventStoreError`` `storageFailure` for a short record that is not `GENERATION SUBJECT`.
        func personal(type: String) throws -> Personal? {
            if let personalData { return personalData }
            guard let pd else { return nil }
            guard let personal = Array(pd.utf8).withUnsafeBytes({ PersonalDataVault.shortSealInfo($0, type: type) }) else {
                throw EventStoreError(code: .storageFailure, message: "a sealed event's record '\(pd)' is not a key generation and a visitor")
            }
            return personal
        }
    }

    private static let marker = Array("\"\(metadataKey)\"".utf8)
    private static let shortMarker = Array("\"\(shortMetadataKey)\"".utf8)

    /// What sealed an event of `type` (read from its metadata), when it is sealed.
    /// - Throws: ``EventStoreError`` `storageFailure` when the seal record is malformed.
    static func sealInfo(of metadataJSON: ByteBuffer, type: String) throws -> SealInfo.Personal? {
        let found = metadataJSON.withUnsafeReadableBytes { bytes -> SealInfo.Personal?? in
            // The common shapes, read in place: a rebuild opens every sealed event, and a JSON decoder per event
            // would cost more than opening it. Anything else goes to the decoder.
            if let at = shortMarker.withUnsafeBytes({ needle in firstIndex(of: needle, in: bytes) }) {
                guard let value = valueOfKey(bytes, markerAt: at, markerLength: shortMarker.count),
                    let inner = plainStringBytes(UnsafeRawBufferPointer(rebasing: bytes[value])),
                    let info = shortSealInfo(inner, type: type)
                else { return nil }
                return .some(info)
            }
            guard let at = marker.withUnsafeBytes({ needle in firstIndex(of: needle, in: bytes) }) else { return .some(nil) }
            return fastSealInfo(bytes, markerAt: at).map { .some($0) } ?? nil
        }
        switch found {
        case .some(let info): return info
        case .none:
            let record: SealInfo
            do { record = try RecordedEvent.decode(SealInfo.self, from: metadataJSON) } catch {
                throw EventStoreError(code: .storageFailure, message: "a sealed event's metadata does not say whose it is: \(error)")
            }
            return try record.personal(type: type)
        }
    }

    /// The short record's text (`GENERATION SUBJECT`) read: the fields are those of `type`; `nil` when it is
    /// not a decimal generation, one space and a subject without spaces.
    static func shortSealInfo(_ text: UnsafeRawBufferPointer, type: String) -> SealInfo.Personal? {
        guard let space = text.firstIndex(of: 0x20), space > 0, space < text.count - 1,
            let key = integer(UnsafeRawBufferPointer(rebasing: text[..<space]))
        else { return nil }
        let subject = UnsafeRawBufferPointer(rebasing: text[(space + 1)...])
        let fields = PersonalData.fields(ofType: type)
        guard !subject.contains(0x20), !fields.isEmpty else { return nil }
        return SealInfo.Personal(subject: String(decoding: subject, as: UTF8.self), key: key, fields: fields)
    }

    /// Where the value of the key found at `at` lies; `nil` when what was found is not a key (text inside a
    /// string, a value) or its value is malformed.
    private static func valueOfKey(_ bytes: UnsafeRawBufferPointer, markerAt at: Int, markerLength: Int) -> Range<Int>? {
        // A key follows `{`, `,` or a space; inside a string the quote would be escaped.
        guard at > 0, bytes[at - 1] != UInt8(ascii: "\\") else { return nil }
        var index = at + markerLength
        while index < bytes.count, bytes[index] == 0x20 { index += 1 }
        guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return nil }
        index += 1
        while index < bytes.count, bytes[index] == 0x20 { index += 1 }
        guard index < bytes.count, let end = try? JSONMembers.valueEnd(bytes, index) else { return nil }
        return index..<end
    }

    /// `personalData` read from the metadata's bytes, starting where its key was found; `nil` when it is not
    /// the plain shape convo writes (a key, not text inside a string; an object of a plain subject, a key
    /// generation and a list of plain field names).
    static func fastSealInfo(_ bytes: UnsafeRawBufferPointer, markerAt at: Int) -> SealInfo.Personal? {
        guard let value = valueOfKey(bytes, markerAt: at, markerLength: marker.count), bytes[value.lowerBound] == UInt8(ascii: "{") else { return nil }
        let object = UnsafeRawBufferPointer(rebasing: bytes[value])
        var subject: String?
        var key: Int?
        var names: [String]?
        var malformed = false
        do {
            try JSONMembers.forEach(in: object) { field in
                let value = UnsafeRawBufferPointer(rebasing: object[field.value])
                if JSONMembers.matches(object, field.key, "subject") {
                    subject = plainString(value)
                } else if JSONMembers.matches(object, field.key, "key") {
                    key = integer(value)
                } else if JSONMembers.matches(object, field.key, "fields") {
                    guard value.count >= 2, value[0] == UInt8(ascii: "["), value[value.count - 1] == UInt8(ascii: "]") else {
                        malformed = true
                        return
                    }
                    if let common = commonFieldLists.first(where: { $0.bytes.elementsEqual(value) }) {
                        names = common.fields
                        return
                    }
                    var list: [String] = []
                    for part in UnsafeRawBufferPointer(rebasing: value[1..<(value.count - 1)]).split(separator: UInt8(ascii: ",")) {
                        guard let name = plainString(UnsafeRawBufferPointer(rebasing: part.drop { $0 == 0x20 })) else {
                            malformed = true
                            return
                        }
                        list.append(name)
                    }
                    names = list
                }
            }
        } catch { return nil }
        guard !malformed, let subject, let key, let names else { return nil }
        return SealInfo.Personal(subject: subject, key: key, fields: names)
    }

    /// The field lists convo writes, as PostgreSQL writes them out: most events have one of these.
    static let commonFieldLists: [(bytes: [UInt8], fields: [String])] = Set(PersonalData.fieldsByType.values).map { fields in
        (Array("[\(fields.map { "\"\($0)\"" }.joined(separator: ", "))]".utf8), fields)
    }

    /// A non-negative decimal integer; `nil` for anything else.
    private static func integer(_ value: UnsafeRawBufferPointer) -> Int? {
        guard !value.isEmpty, value.count < 10 else { return nil }
        var result = 0
        for byte in value {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            result = result * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return result
    }

    /// A JSON string without escapes, unquoted; `nil` for anything else.
    private static func plainString(_ value: UnsafeRawBufferPointer) -> String? {
        plainStringBytes(value).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The bytes inside a JSON string without escapes; `nil` for anything else.
    private static func plainStringBytes(_ value: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        guard value.count >= 2, value[0] == UInt8(ascii: "\""), value[value.count - 1] == UInt8(ascii: "\"") else { return nil }
        let inner = UnsafeRawBufferPointer(rebasing: value[1..<(value.count - 1)])
        guard !inner.contains(UInt8(ascii: "\\")), !inner.contains(UInt8(ascii: "\"")) else { return nil }
        return inner
    }

    /// Where `needle` first occurs in `bytes`: `memchr` (vectorized) finds each candidate by the needle's
    /// rarest byte, its uppercase `D`, so the metadata of an unsealed event costs almost nothing to rule out.
    static func firstIndex(of needle: UnsafeRawBufferPointer, in bytes: UnsafeRawBufferPointer) -> Int? {
        guard let base = bytes.baseAddress, needle.count > 0, bytes.count >= needle.count else { return nil }
        let pivot = needle.firstIndex(of: UInt8(ascii: "D")) ?? 0
        var from = pivot
        while from < bytes.count {
            guard let hit = memchr(base + from, Int32(needle[pivot]), bytes.count - from) else { return nil }
            let at = base.distance(to: UnsafeRawPointer(hit))
            let start = at - pivot
            if start + needle.count <= bytes.count, memcmp(base + start, needle.baseAddress!, needle.count) == 0 { return start }
            from = at + 1
        }
        return nil
    }

    /// The events with their sealed members opened, or marked erased where the key is destroyed.
    ///
    /// - Throws: ``EventStoreError`` `keyUnavailable` when a live key's master key is not configured;
    ///   `storageFailure` when a sealed member does not open with its key (altered data) or its key is missing.
    /// - Parameter connection: the connection the events were read on, when the caller holds one (a reader
    ///   inside its own transaction): the keys are read there too, never on a second connection it would wait for.
    /// - Parameter opening: which events' sealed members are opened; the others are passed on as stored
    ///   (their members sealed envelopes), their metadata and keys not read.
    func open(_ events: consuming [RecordedEvent], on connection: PostgresConnection? = nil, opening: PersonalDataOpening = .all) async throws -> [RecordedEvent] {
        // Events of types not opened are passed over: not even their metadata is read.
        if opening.types?.isEmpty == true { return events }
        // Large batches (a rebuild's, a scan's) are read and opened on several child tasks: the reading task
        // would otherwise be the rebuild's bottleneck.
        let parts = events.count >= 256 ? max(1, min(4, ProcessInfo.processInfo.activeProcessorCount)) : 1
        var infos: [(Int, SealInfo.Personal)] = []
        if parts == 1 {
            infos = try Self.sealInfos(events, events.indices, opening: opening)
        } else {
            infos = try await Self.sealInfosInParts(events, opening: opening, parts: parts)
        }
        guard !infos.isEmpty else { return events }
        var opened = events
        var wanted = Set<GenerationKey>()
        var previous: GenerationKey?
        for (index, info) in infos {
            let id = GenerationKey(tenant: opened[index].tenant.rawValue, subject: info.subject, generation: info.key)
            if id != previous { wanted.insert(id) }
            previous = id
        }
        let keys = try await dataKeys(wanted, on: connection)
        if parts == 1 || infos.count < 256 {
            let (outputs, erasures) = try Self.openAll(opened, infos[...], keys: keys)
            for (position, (index, _)) in infos.enumerated() {
                opened[index].data = outputs[position]
                opened[index].isErased = erasures[position]
            }
            return opened
        }
        // The child tasks' hold on the events ends with the call: changing them after it copies no array.
        let results = try await Self.openInParts(opened, infos, keys: keys, parts: parts)
        for (slice, outputs, erasures) in results {
            for (offset, item) in slice.enumerated() {
                let index = infos[item].0
                opened[index].data = outputs[offset]
                opened[index].isErased = erasures[offset]
            }
        }
        return opened
    }

    /// ``openAll(_:_:keys:)`` of `parts` slices of `infos` on child tasks.
    private static func openInParts(
        _ events: [RecordedEvent], _ infos: [(Int, SealInfo.Personal)], keys: [GenerationKey: DataKey], parts: Int
    ) async throws -> [(Range<Int>, [ByteBuffer], [Bool])] {
        try await withThrowingTaskGroup(of: (Range<Int>, [ByteBuffer], [Bool]).self) { group in
            for slice in slices(infos.count, parts) {
                group.addTask {
                    let (outputs, erasures) = try openAll(events, infos[slice], keys: keys)
                    return (slice, outputs, erasures)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
    }

    /// The opened payloads of `items`, in order: slices of one buffer.
    private static func openAll(
        _ events: [RecordedEvent], _ items: ArraySlice<(Int, SealInfo.Personal)>, keys: [GenerationKey: DataKey]
    ) throws -> ([ByteBuffer], [Bool]) {
        var out = ByteBuffer()
        out.reserveCapacity(items.reduce(0) { $0 + events[$1.0].data.readableBytes })
        var ranges: [(Int, Int)] = []
        var erasures: [Bool] = []
        ranges.reserveCapacity(items.count)
        erasures.reserveCapacity(items.count)
        var state = Ciphers(sealing: false)
        // Neighbouring events are often one conversation's: the last key found is tried first.
        var last: (id: GenerationKey, opener: Opener)?
        for (index, info) in items {
            let opener: Opener
            let id = GenerationKey(tenant: events[index].tenant.rawValue, subject: info.subject, generation: info.key)
            if let last, last.id == id {
                opener = last.opener
            } else if let found = keys[id] {
                opener = try state.opener(id, found)
                last = (id, opener)
            } else {
                throw EventStoreError(code: .storageFailure, message: "the data key of the event at position \(events[index].globalPosition) is missing")
            }
            let start = out.writerIndex
            erasures.append(try openedData(events[index], info: info, opener: opener, with: &state, into: &out))
            ranges.append((start, out.writerIndex - start))
        }
        return (ranges.map { out.getSlice(at: $0.0, length: $0.1)! }, erasures)
    }

    private static func slices(_ count: Int, _ parts: Int) -> [Range<Int>] {
        let size = (count + parts - 1) / max(1, parts)
        return stride(from: 0, to: count, by: max(1, size)).map { $0..<min(count, $0 + size) }
    }

    /// ``sealInfos(_:_:opening:)`` of `parts` slices of `events` on child tasks, in order; the tasks' hold on
    /// the events ends with the call.
    private static func sealInfosInParts(_ events: [RecordedEvent], opening: PersonalDataOpening, parts: Int) async throws -> [(Int, SealInfo.Personal)] {
        try await withThrowingTaskGroup(of: (Int, [(Int, SealInfo.Personal)]).self) { group in
            for slice in slices(events.count, parts) { group.addTask { (slice.lowerBound, try sealInfos(events, slice, opening: opening)) } }
            return try await group.reduce(into: []) { $0.append($1) }.sorted { $0.0 < $1.0 }.flatMap(\.1)
        }
    }

    /// What sealed each event of `range` whose type `opening` opens, when it is sealed.
    private static func sealInfos(_ events: [RecordedEvent], _ range: Range<Int>, opening: PersonalDataOpening) throws -> [(Int, SealInfo.Personal)] {
        var found: [(Int, SealInfo.Personal)] = []
        for index in range where opening.opens(events[index].type) {
            if let info = try sealInfo(of: events[index].metadataJSON, type: events[index].type) { found.append((index, info)) }
        }
        return found
    }


    /// What opens the members sealed with one data key: its cipher, or nothing when the key is destroyed.
    enum Opener {
        case live(GCMCipher)
        case erased
    }

    static func open(_ event: RecordedEvent, info: SealInfo.Personal, key dataKey: DataKey) throws -> RecordedEvent {
        var opening = Ciphers(sealing: false)
        let opener = try opening.opener(GenerationKey(tenant: event.tenant.rawValue, subject: info.subject, generation: info.key), dataKey)
        var out = ByteBuffer()
        let erased = try openedData(event, info: info, opener: opener, with: &opening, into: &out)
        return event.replacing(data: out, erased: erased)
    }

    /// Writes the payload with its sealed members opened (or erased) at the end of `out`, which many events
    /// share (a batch's opened payloads are slices of one buffer); whether they were erased.
    static func openedData(
        _ event: borrowing RecordedEvent, info: SealInfo.Personal, opener: Opener, with opening: inout Ciphers, into out: inout ByteBuffer
    ) throws -> Bool {
        try event.data.withUnsafeReadableBytes { bytes throws in
            var copied = 0
            var failure: EventStoreError?
            do {
                try JSONMembers.forEach(in: bytes) { member in
                    guard failure == nil, let field = info.fields.first(where: { JSONMembers.matches(bytes, member.key, $0) }) else { return }
                    out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[copied..<member.value.lowerBound]))
                    copied = member.value.upperBound
                    switch opener {
                    case .erased:
                        out.writeString("\"\(PersonalData.erasedPlaceholder)\"")
                    case .live(let cipher):
                        let value = UnsafeRawBufferPointer(rebasing: bytes[member.value])
                        let prefix = 1 + envelopePrefix.utf8.count
                        guard value.count > prefix + 1, Base64.decode(UnsafeRawBufferPointer(rebasing: value[prefix..<(value.count - 1)]), into: &opening.box) else {
                            failure = EventStoreError(
                                code: .storageFailure, message: "the sealed member '\(field)' of the event at position \(event.globalPosition) is not an envelope")
                            return
                        }
                        associatedData(
                            tenant: event.tenant.rawValue, subject: info.subject, generation: info.key, eventId: event.eventId, field: field,
                            into: &opening.associatedData)
                        let opened = opening.box.withUnsafeBytes { box in
                            opening.associatedData.withUnsafeBytes { cipher.open(box, authenticating: $0, into: &out) }
                        }
                        if !opened {
                            failure = EventStoreError(
                                code: .storageFailure,
                                message: "the sealed member '\(field)' of the event at position \(event.globalPosition) does not open: it was altered")
                        }
                    }
                }
            } catch {
                throw EventStoreError(code: .storageFailure, message: "the sealed event at position \(event.globalPosition) is not a JSON object")
            }
            if let failure { throw failure }
            out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[copied...]))
            if case .erased = opener { return true }
            return false
        }
    }

    /// The data keys of `ids`, from memory or in one query.
    private func dataKeys(_ ids: Set<GenerationKey>, on connection: PostgresConnection?) async throws -> [GenerationKey: DataKey] {
        let now = ContinuousClock.now
        var found: [GenerationKey: DataKey] = [:]
        var missing: [GenerationKey] = []
        cache.withLock { cache in
            for id in ids {
                if let entry = cache.keys[id], entry.expires.map({ $0 > now }) ?? true { found[id] = entry.key } else { missing.append(id) }
            }
        }
        guard !missing.isEmpty else { return found }
        let epoch = cache.withLock { $0.epoch }
        var fetched: [(GenerationKey, DataKey, Bool)] = []
        do {
            let query: PostgresQuery = """
                SELECT k.tenant_id, k.subject, k.generation, k.master_key_id, k.wrapped FROM personal_data_keys k
                JOIN unnest(\(missing.map(\.tenant)), \(missing.map(\.subject)), \(missing.map(\.generation))) AS w (tenant, subject, generation)
                  ON k.tenant_id = w.tenant AND k.subject = w.subject AND k.generation = w.generation
                """
            let rows: [PostgresRow]
            if let connection {
                rows = try await connection.collect(query, logger: logger).rows
            } else {
                rows = try await client.queryOpen(query, logger: logger).rows
            }
            for row in rows {
                let (tenant, subject, generation, masterKeyId, wrapped) = try row.decode((String, String, Int, String?, ByteBuffer?).self)
                let id = GenerationKey(tenant: tenant, subject: subject, generation: generation)
                if let masterKeyId, let wrapped {
                    fetched.append((id, .live(try unwrap(wrapped, masterKeyId: masterKeyId, id)), true))
                } else {
                    fetched.append((id, .erased, false))
                }
            }
        } catch {
            throw PostgresEventStore.mapError(error, operation: "read data keys")
        }
        let expires = now + liveKeyLifetime
        cache.withLock { cache in
            if cache.keys.count > Self.cacheLimit { Self.dropLive(&cache) }
            // A destroyed key is kept for good; a live one only if no erasure was heard meanwhile.
            for (id, key, live) in fetched where !live || cache.epoch == epoch { cache.keys[id] = (key, live ? expires : nil) }
        }
        for (id, key, _) in fetched { found[id] = key }
        return found
    }

    // MARK: Erasure

    /// Destroys every live data key of a subject, in one transaction that also tells every listening
    /// process to drop them from memory.
    ///
    /// - Returns: the generations destroyed; empty when there was none live.
    public func destroyKeys(tenant: TenantID, subject: VisitorUID) async throws -> [Int] {
        let payload = Self.erasurePayload(tenant: tenant.rawValue, subject: subject.rawValue)
        let channel = self.channel
        let logger = self.logger
        let generations: [Int]
        do {
            generations = try await client.withOpenTransaction(logger: logger) { connection in
                var destroyed: [Int] = []
                let rows = try await connection.query(
                    """
                    UPDATE personal_data_keys SET wrapped = NULL, master_key_id = NULL, erased_at = now()
                    WHERE tenant_id = \(tenant.rawValue) AND subject = \(subject.rawValue) AND wrapped IS NOT NULL
                    RETURNING generation
                    """, logger: logger)
                for try await generation in rows.decode(Int.self) { destroyed.append(generation) }
                try await connection.query("SELECT pg_notify(\(channel), \(payload))", logger: logger)
                return destroyed.sorted()
            }
        } catch {
            throw PostgresEventStore.mapError(error, operation: "destroy data keys")
        }
        forget(tenant: tenant.rawValue, subject: subject.rawValue)
        return generations
    }

    /// Every key generation of a subject, live or not: whether convo has ever held their data.
    public func generations(tenant: TenantID, subject: VisitorUID) async throws -> [(generation: Int, live: Bool)] {
        do {
            var found: [(Int, Bool)] = []
            let rows = try await client.queryOpen(
                """
                SELECT generation, wrapped IS NOT NULL FROM personal_data_keys
                WHERE tenant_id = \(tenant.rawValue) AND subject = \(subject.rawValue) ORDER BY generation
                """, logger: logger)
            for try await row in rows.decode((Int, Bool).self) { found.append(row) }
            return found
        } catch {
            throw PostgresEventStore.mapError(error, operation: "read data keys")
        }
    }

    static let erasureNotice = "erase\n"

    static func erasurePayload(tenant: String, subject: String) -> String { "\(erasureNotice)\(tenant)\n\(subject)" }

    /// Acts on a notification of the store's channel: an erasure drops the subject's keys from memory.
    func handle(notification payload: String) {
        guard payload.hasPrefix(Self.erasureNotice) else { return }
        let parts = payload.dropFirst(Self.erasureNotice.count).split(separator: "\n", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return }
        forget(tenant: String(parts[0]), subject: String(parts[1]))
    }

    /// Drops a subject's live keys from memory.
    func forget(tenant: String, subject: String) {
        cache.withLock { cache in
            cache.epoch += 1
            cache.current[SubjectKey(tenant: tenant, subject: subject)] = nil
            cache.keyless[SubjectKey(tenant: tenant, subject: subject)] = nil
            for (id, entry) in cache.keys where id.tenant == tenant && id.subject == subject {
                if case .live = entry.key { cache.keys[id] = nil }
            }
        }
    }

    /// Drops every live key from memory and says whether erasures are heard from now on: what a process
    /// does when its `LISTEN` starts or ends (it may have missed notifications in between).
    func listeningChanged(_ isListening: Bool) {
        cache.withLock { Self.dropLive(&$0) }
        listening.store(isListening, ordering: .releasing)
    }

    private static func dropLive(_ cache: inout Cache) {
        cache.epoch += 1
        cache.current.removeAll()
        cache.keyless.removeAll()
        cache.keys = cache.keys.filter { if case .erased = $0.value.key { true } else { false } }
        if cache.keys.count > cacheLimit { cache.keys.removeAll() }
    }

    // MARK: Rotation

    /// Wraps again with the current master key every live data key wrapped by another one, a batch at a
    /// time; a key destroyed meanwhile stays destroyed (each rewrap is conditional on the wrapping it read).
    ///
    /// - Parameter progress: called after each batch with the keys rewrapped so far and how many were left.
    /// - Returns: how many keys were rewrapped.
    public func rewrapAll(batchSize: Int = 500, progress: (Int, Int) -> Void = { _, _ in }) async throws -> Int {
        guard let keyring else { throw EventStoreError(code: .keyUnavailable, message: "no master key is configured") }
        var done = 0
        while true {
            var batch: [(GenerationKey, String, ByteBuffer)] = []
            var remaining = 0
            do {
                let rows = try await client.queryOpen(
                    """
                    SELECT tenant_id, subject, generation, master_key_id, wrapped, count(*) OVER () FROM personal_data_keys
                    WHERE wrapped IS NOT NULL AND master_key_id <> \(keyring.current.id)
                    ORDER BY tenant_id, subject, generation LIMIT \(batchSize)
                    """, logger: logger)
                for try await (tenant, subject, generation, masterKeyId, wrapped, total) in rows.decode((String, String, Int, String, ByteBuffer, Int).self) {
                    batch.append((GenerationKey(tenant: tenant, subject: subject, generation: generation), masterKeyId, wrapped))
                    remaining = total
                }
            } catch {
                throw PostgresEventStore.mapError(error, operation: "read data keys to rewrap")
            }
            if batch.isEmpty { return done }
            var ids: (tenants: [String], subjects: [String], generations: [Int], old: [ByteBuffer], new: [ByteBuffer]) = ([], [], [], [], [])
            for (id, masterKeyId, wrapped) in batch {
                let key = try unwrap(wrapped, masterKeyId: masterKeyId, id)
                let (_, rewrapped) = try wrap(key, id)
                ids.tenants.append(id.tenant)
                ids.subjects.append(id.subject)
                ids.generations.append(id.generation)
                ids.old.append(wrapped)
                ids.new.append(rewrapped)
            }
            do {
                let rows = try await client.queryOpen(
                    """
                    UPDATE personal_data_keys k SET wrapped = w.new, master_key_id = \(keyring.current.id)
                    FROM unnest(\(ids.tenants), \(ids.subjects), \(ids.generations), \(ids.old), \(ids.new)) AS w (tenant, subject, generation, old, new)
                    WHERE k.tenant_id = w.tenant AND k.subject = w.subject AND k.generation = w.generation AND k.wrapped = w.old
                    RETURNING 1
                    """, logger: logger)
                for try await _ in rows { done += 1 }
            } catch {
                throw PostgresEventStore.mapError(error, operation: "rewrap data keys")
            }
            progress(done, max(0, remaining - batch.count))
        }
    }

    /// How many live data keys each master key wraps.
    public func keysByMasterKey() async throws -> [String: Int] {
        do {
            var counts: [String: Int] = [:]
            let rows = try await client.queryOpen(
                "SELECT master_key_id, count(*) FROM personal_data_keys WHERE wrapped IS NOT NULL GROUP BY master_key_id", logger: logger)
            for try await (id, count) in rows.decode((String, Int).self) { counts[id] = count }
            return counts
        } catch {
            throw PostgresEventStore.mapError(error, operation: "count data keys")
        }
    }
}

/// Which sealed personal members a read opens: every one (``all``, what every read but a rebuild's asks),
/// or only those of some event types. An event of a type not opened is passed on as stored, its personal
/// members their sealed envelopes (`pd1:…`): never decrypted, its metadata and key not even read.
public struct PersonalDataOpening: Sendable, Hashable {
    /// The event types whose members are opened; `nil`: every type.
    public let types: Set<String>?

    public static let all = PersonalDataOpening(types: nil)

    /// Only the members of events of `types`.
    public static func only(_ types: Set<String>) -> PersonalDataOpening { PersonalDataOpening(types: types) }

    @inline(__always)
    func opens(_ type: String) -> Bool { types?.contains(type) ?? true }
}

/// The latest key generation of each visitor (`$1` tenants, `$2` visitors, in pairs), wrapped, or destroyed
/// (`NULL`s); none for a visitor who never had one. Prepared once per connection: the sealing of every batch
/// holding a visitor not in memory (a new one, nearly always) asks it, and PostgreSQL would otherwise plan
/// the join each time.
struct LatestKeysStatement: PostgresPreparedStatement {
    static let name = "convo_latest_keys_v1"
    static let sql = """
        SELECT DISTINCT ON (k.tenant_id, k.subject) k.tenant_id, k.subject, k.generation::bigint, k.master_key_id, k.wrapped
        FROM personal_data_keys k JOIN unnest($1::text[], $2::text[]) AS w (tenant, subject)
          ON k.tenant_id = w.tenant AND k.subject = w.subject
        ORDER BY k.tenant_id, k.subject, k.generation DESC
        """
    typealias Row = (String, String, Int64, String?, ByteBuffer?)

    var tenants: [String]
    var subjects: [String]

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 2)
        bindings.append(tenants)
        bindings.append(subjects)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}
