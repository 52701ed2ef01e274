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
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
    ],
    targets: [
        // libpq, found through pkg-config; Debian/Ubuntu: apt-get install libpq-dev
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        // Our own small libpq client: connections, bound queries, typed rows, pool, LISTEN/NOTIFY.
        .target(
            name: "PostgresClient",
            dependencies: [
                "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
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
        // The coordinator: migrations, modules, boot, membership, leadership.
        .target(
            name: "RegentCore",
            dependencies: [
                "PostgresClient",
                .product(name: "Logging", package: "swift-log"),
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
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "regent",
            dependencies: [
                "RegentCore",
                "PostgresClient",
                "EmbeddedPostgres",
                "CLibPQ",
                "RegentHTTP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "RegentTestSupport",
            dependencies: ["PostgresClient", "EmbeddedPostgres"],
            path: "Tests/RegentTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RegentUnitTests",
            dependencies: ["RegentCore", "PostgresClient"],
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
                "RegentHTTP", "RegentCore", "PostgresClient", "RegentTestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RegentCoreTests",
            dependencies: ["RegentCore", "PostgresClient", "RegentTestSupport"],
            swiftSettings: swiftSettings
        ),
    ]
)
