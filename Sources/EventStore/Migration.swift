import Crypto
import Foundation

/// One numbered, forward-only SQL file of `Migrations/`, compiled into the binary.
public struct Migration: Sendable, Hashable {
    /// The number the file name starts with.
    public let version: Int
    /// The file name, e.g. `0001_events.sql`.
    public let fileName: String
    public let sql: String
    /// SHA-256 of the file, hex; recorded when the migration is applied and checked on every later run.
    public let checksum: String

    init(fileName: String, bytes: [UInt8]) {
        self.fileName = fileName
        self.version = Int(fileName.prefix { $0.isNumber }) ?? 0
        self.sql = String(decoding: bytes, as: UTF8.self)
        self.checksum = Array(SHA256.hash(data: bytes)).hexString
    }

    /// Every migration, in order. A test checks this list against the files in `Migrations/`.
    public static let all: [Migration] = [
        Migration(fileName: "0001_events.sql", bytes: PackageResources._001_events_sql),
        Migration(fileName: "0002_events_immutable.sql", bytes: PackageResources._002_events_immutable_sql),
        Migration(fileName: "0003_append_function.sql", bytes: PackageResources._003_append_function_sql),
        Migration(fileName: "0004_append_fast_path.sql", bytes: PackageResources._004_append_fast_path_sql),
        Migration(fileName: "0005_users.sql", bytes: PackageResources._005_users_sql),
        Migration(fileName: "0006_workflows.sql", bytes: PackageResources._006_workflows_sql),
        Migration(fileName: "0007_projections.sql", bytes: PackageResources._007_projections_sql),
        Migration(fileName: "0008_tenants_keys.sql", bytes: PackageResources._008_tenants_keys_sql),
        Migration(fileName: "0009_append_many.sql", bytes: PackageResources._009_append_many_sql),
        Migration(fileName: "0010_event_hash_chain.sql", bytes: PackageResources._010_event_hash_chain_sql),
        Migration(fileName: "0011_audit_indexes.sql", bytes: PackageResources._011_audit_indexes_sql),
        Migration(fileName: "0012_agents.sql", bytes: PackageResources._012_agents_sql),
        Migration(fileName: "0013_webhooks.sql", bytes: PackageResources._013_webhooks_sql),
        Migration(fileName: "0014_tenant_settings.sql", bytes: PackageResources._014_tenant_settings_sql),
        Migration(fileName: "0015_personal_data_keys.sql", bytes: PackageResources._015_personal_data_keys_sql),
        Migration(fileName: "0016_console_sessions.sql", bytes: PackageResources._016_console_sessions_sql),
        Migration(fileName: "0017_read_streams.sql", bytes: PackageResources._017_read_streams_sql),
        Migration(fileName: "0018_append_many_with_keys.sql", bytes: PackageResources._018_append_many_with_keys_sql),
    ]
}
