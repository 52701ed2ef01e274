// swift-tools-version: 6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "Regent",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "regent", targets: ["regent"]),
        .library(name: "PostgresClient", targets: ["PostgresClient"]),
        .library(name: "RegentCore", targets: ["RegentCore"]),
        // Workers over the HTTP API (no libpq): what users' step programs depend on.
        .library(name: "RegentWorker", targets: ["RegentWorker"]),
        // examples/workers/swift: a worker built on RegentWorker (regent demo runs it).
        .executable(name: "regent-example-worker", targets: ["RegentExampleWorker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // HTTPS for the admin API (HummingbirdTLS is built on it).
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        // `regent worker --api-url https://…`: a worker over the admin API (also what HummingbirdTesting uses).
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        // The vault's AES-256-GCM and HMAC (already built for async-http-client's TLS stack).
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        // libpq, found through pkg-config; Debian/Ubuntu: apt-get install libpq-dev
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        // zlib, for .tar.gz workflow packages; Debian/Ubuntu: apt-get install zlib1g-dev
        .systemLibrary(
            name: "CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        // Timestamps as text (PostgreSQL's and the API's), shared by the libpq client and the worker SDK.
        .target(name: "CivilTime", swiftSettings: swiftSettings),
        // JSON values and the strict linear-time reader, shared by the server and the worker SDK.
        .target(name: "RegentJSON", swiftSettings: swiftSettings),
        // Our own small libpq client: connections, bound queries, typed rows, pool, LISTEN/NOTIFY.
        .target(
            name: "PostgresClient",
            dependencies: [
                "CLibPQ",
                "CivilTime",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // A private PostgreSQL cluster for development, demos and tests.
        .target(
            name: "EmbeddedPostgres",
            dependencies: [
                "PostgresClient",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Compiles sql/<schema>/NNNN_name.sql into the binary.
        .executableTarget(name: "EmbedSQLTool", swiftSettings: swiftSettings),
        .plugin(name: "EmbedSQL", capability: .buildTool(), dependencies: ["EmbedSQLTool"]),
        // Compiles console/ (the browser console's HTML, CSS and JavaScript) into the binary.
        .executableTarget(name: "EmbedConsoleTool", swiftSettings: swiftSettings),
        .plugin(name: "EmbedConsole", capability: .buildTool(), dependencies: ["EmbedConsoleTool"]),
        // The coordinator: migrations, modules, boot, membership, leadership.
        .target(
            name: "RegentCore",
            dependencies: [
                "PostgresClient",
                "RegentJSON",
                "CivilTime",
                "CZlib",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings,
            plugins: ["EmbedSQL"]
        ),
        // The admin HTTP API.
        .target(
            name: "RegentHTTP",
            dependencies: [
                "RegentCore",
                "PostgresClient",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings,
            plugins: ["EmbedConsole"]
        ),
        // The worker SDK: typed step handlers over the admin API with renewals, cancellation,
        // completions that cannot count twice, batching and failover between nodes.
        .target(
            name: "RegentWorker",
            dependencies: [
                "RegentJSON",
                "CivilTime",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "RegentExampleWorker",
            dependencies: [
                "RegentWorker",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "examples/workers/swift",
            swiftSettings: swiftSettings
        ),
        // Fault and failover drills: a local cluster of `regent serve` processes, the faults, the invariant checks.
        .target(
            name: "RegentDrill",
            dependencies: ["RegentCore", "PostgresClient", "EmbeddedPostgres"],
            swiftSettings: swiftSettings
        ),
        // Benchmarks' measuring parts and their raw-libpq baselines (the CLI prints the figures).
        .target(
            name: "RegentBench",
            dependencies: ["RegentCore", "PostgresClient", "EmbeddedPostgres", "RegentDrill", "CLibPQ"],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "regent",
            dependencies: [
                "RegentCore",
                "PostgresClient",
                "EmbeddedPostgres",
                "RegentDrill",
                "RegentBench",
                "RegentHTTP",
                "RegentWorker",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "RegentTestSupport",
            dependencies: ["PostgresClient", "EmbeddedPostgres", "RegentCore"],
            path: "Tests/RegentTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RegentUnitTests",
            dependencies: ["RegentCore", "PostgresClient", "RegentTestSupport", "CivilTime"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PostgresClientTests",
            dependencies: ["PostgresClient", "RegentTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RegentHTTPTests",
            dependencies: [
                "RegentHTTP", "RegentCore", "PostgresClient", "RegentTestSupport", "RegentWorker", "CivilTime",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RegentCoreTests",
            dependencies: [
                "RegentCore", "PostgresClient", "RegentTestSupport", "RegentDrill",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
