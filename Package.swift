// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "ferry",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "ferry", targets: ["ferry"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // zlib from the system (Debian: zlib1g-dev).
        .systemLibrary(
            name: "CZlib",
            path: "Sources/CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        // CRC-32 with PCLMULQDQ folding (run-time dispatch) and a portable fallback.
        .target(name: "CFerryCRC", path: "Sources/CFerryCRC"),
        // Wire protocol: pure values and codecs, no I/O.
        .target(
            name: "FerryProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Files: path safety, chunk reading and encoding, hashing, manifests.
        .target(
            name: "FerryFiles",
            dependencies: [
                "FerryProtocol",
                "CZlib",
                "CFerryCRC",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "FerryServer",
            dependencies: [
                "FerryProtocol",
                "FerryFiles",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "FerryClient",
            dependencies: [
                "FerryProtocol",
                "FerryFiles",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // LAN discovery: UDP probe/answer/announce over NIOPosix datagram channels.
        .target(
            name: "FerryDiscovery",
            dependencies: [
                "FerryProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ferry",
            dependencies: [
                "FerryProtocol",
                "FerryFiles",
                "FerryServer",
                "FerryClient",
                "FerryDiscovery",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // Helpers shared by the test targets (fixtures, the built executable, child processes).
        .target(
            name: "FerryTestSupport",
            path: "Tests/FerryTestSupport"
        ),
        .testTarget(
            name: "FerryProtocolTests",
            dependencies: ["FerryProtocol", "FerryTestSupport", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "FerryFilesTests",
            dependencies: ["FerryFiles", "FerryProtocol", "FerryTestSupport", "CZlib", "CFerryCRC"]
        ),
        .testTarget(
            name: "FerryDiscoveryTests",
            dependencies: [
                "FerryDiscovery", "FerryProtocol", "FerryTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "FerryResumeTests",
            dependencies: [
                "FerryServer", "FerryClient", "FerryFiles", "FerryProtocol", "FerryTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "FerryIntegrationTests",
            dependencies: [
                "FerryServer", "FerryClient", "FerryFiles", "FerryProtocol", "FerryTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // What the executable renders (mode strings, escaping, the progress line), without a process.
        .testTarget(
            name: "FerryCLITests",
            dependencies: [
                "ferry", "FerryProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Hostile clients, limits, load, shutdown and full-disk behaviour of the real binaries.
        .testTarget(
            name: "FerryRobustnessTests",
            dependencies: [
                "FerryClient", "FerryFiles", "FerryProtocol", "FerryTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
