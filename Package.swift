// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "convo",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "convo", targets: ["convo"]),
        .library(name: "SharedTypes", targets: ["SharedTypes"]),
        .library(name: "EventStore", targets: ["EventStore"]),
        .library(name: "Projections", targets: ["Projections"]),
        .library(name: "Responder", targets: ["Responder"]),
        .library(name: "Audit", targets: ["Audit"]),
        .library(name: "Webhooks", targets: ["Webhooks"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-async-algorithms.git", from: "1.1.4"),
    ],
    targets: [
        // Ids, stream names, event payloads, node and tool definitions. Depends on nothing of ours.
        .target(
            name: "SharedTypes",
            swiftSettings: swiftSettings
        ),
        // Append-only PostgreSQL event store: append with expected version, reads, subscriptions, migrations.
        .target(
            name: "EventStore",
            dependencies: [
                "SharedTypes",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                "COpenSSLCrypto",
            ],
            // Migrations/ is linked into the target so every .sql file is compiled into the binary.
            resources: [.embedInCode("Migrations")],
            swiftSettings: swiftSettings
        ),
        // Pure folds of events into read models, and the runner that stores them.
        .target(
            name: "Projections",
            dependencies: [
                "SharedTypes",
                "EventStore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
            ],
            swiftSettings: swiftSettings
        ),
        // The audit-trail queries: workflowState history, reply explanations, searches, conflicts; read from
        // the events, never from a projection.
        .target(
            name: "Audit",
            dependencies: [
                "SharedTypes",
                "EventStore",
                "Projections",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Standard Webhooks: endpoints, signing, and the senders that follow the event store.
        .target(
            name: "Webhooks",
            dependencies: [
                "SharedTypes",
                "EventStore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Debian's libcrypto (OpenSSL 3), for AES-GCM with a key schedule kept across messages: the personal
        // members of a batch (a rebuild's page, an ingest batch) are opened and sealed with it. swift-crypto's
        // AES.GCM has no such API: it sets up a new cipher context on every call.
        .systemLibrary(
            name: "COpenSSLCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        // Debian's libhiredis, for the visitor lock.
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // Visitor lock, workflow engine, tool executor, AI providers. No HTTP.
        .target(
            name: "Responder",
            dependencies: [
                "SharedTypes",
                "EventStore",
                "Projections",
                "CHiredis",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            // Workflows/ (the demo support workflow) is linked into the target and compiled into the binary.
            resources: [.embedInCode("Workflows")],
            swiftSettings: swiftSettings
        ),
        // The `convo` command: HTTP server and CLI.
        .executableTarget(
            name: "convo",
            dependencies: [
                "SharedTypes",
                "EventStore",
                "Projections",
                "Responder",
                "Audit",
                "Webhooks",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            // Console/ (the console's page, script and styles) is compiled into the binary: no CDN, works offline.
            resources: [.embedInCode("Server/openapi.json"), .embedInCode("Console")],
            swiftSettings: swiftSettings
        ),
        // What the integration tests share: the PostgreSQL and Redis that ./scripts/test starts.
        .target(
            name: "ConvoTestSupport",
            dependencies: [
                "EventStore",
                "SharedTypes",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Tests/Support",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SharedTypesTests",
            dependencies: ["SharedTypes"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EventStoreTests",
            dependencies: [
                "EventStore",
                "ConvoTestSupport",
                "SharedTypes",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ProjectionsTests",
            dependencies: [
                "Projections",
                "EventStore",
                "SharedTypes",
                "ConvoTestSupport",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ResponderTests",
            dependencies: [
                "Responder",
                "Projections",
                "EventStore",
                "SharedTypes",
                "ConvoTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ConvoTests",
            dependencies: [
                "convo",
                "ConvoTestSupport",
                "Audit",
                "Webhooks",
                "EventStore",
                "Projections",
                "Responder",
                "SharedTypes",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
