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
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
    ],
    targets: [
        // zlib from the system (Debian: zlib1g-dev).
        .systemLibrary(
            name: "CZlib",
            path: "Sources/CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        // zstd from the system (Debian: libzstd-dev), the second chunk codec.
        .systemLibrary(
            name: "CZstd",
            path: "Sources/CZstd",
            pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]
        ),
        // CRC-32 with PCLMULQDQ folding (run-time dispatch) and a portable fallback.
        .target(name: "CFerryCRC", path: "Sources/CFerryCRC"),
        // System calls Glibc has no Swift-callable wrapper for (`openat2`).
        .target(name: "CFerrySys", path: "Sources/CFerrySys"),
        // XXH3-128, the transfer digest: Debian's xxhash.h (libxxhash-dev) compiled in inline,
        // so the binary needs no libxxhash at run time.
        .target(name: "CFerryXXH", path: "Sources/CFerryXXH"),
        // Wire protocol: pure values and codecs, no I/O.
        .target(
            name: "FerryProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Files: path safety, chunk codecs (CRC-32, zlib, zstd: one registry), hashing, manifests.
        .target(
            name: "FerryFiles",
            dependencies: [
                "FerryProtocol",
                "CZlib",
                "CZstd",
                "CFerryCRC",
                "CFerrySys",
                "CFerryXXH",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Identity and trust: the server's key and self-signed certificate, fingerprints, the
        // client's known-servers file, TLS configurations (swift-nio-ssl, swift-certificates).
        .target(
            name: "FerryTrust",
            dependencies: [
                "FerryProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "FerryServer",
            dependencies: [
                "FerryProtocol",
                "FerryFiles",
                "FerryTrust",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "FerryClient",
            dependencies: [
                "FerryProtocol",
                "FerryFiles",
                "FerryTrust",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
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
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
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
                "FerryTrust",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // Micro-benchmark of content-defined chunking (`swift run -c release ferry-chunkbench`).
        .executableTarget(name: "ferry-chunkbench", dependencies: ["FerryFiles", "FerryProtocol"]),
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
            dependencies: [
                "FerryFiles", "FerryProtocol", "FerryTestSupport", "CZlib", "CZstd", "CFerryCRC",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The server's compression policy (`AdaptiveCompression`, `CompressionMode`) and buffer pool, without sockets.
        .testTarget(
            name: "FerryServerTests",
            dependencies: ["FerryServer", "FerryFiles", "FerryProtocol", "FerryTestSupport", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "FerryDiscoveryTests",
            dependencies: [
                "FerryDiscovery", "FerryProtocol", "FerryTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "FerryResumeTests",
            dependencies: ["FerryClient", "FerryFiles", "FerryTestSupport"]
        ),
        .testTarget(
            name: "FerryIntegrationTests",
            dependencies: [
                "FerryServer", "FerryClient", "FerryFiles", "FerryProtocol", "FerryTrust", "FerryTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Channel handlers in EmbeddedChannel: the client's reply framer and read timeout, the
        // server's idle closer and request framer.
        .testTarget(
            name: "FerryChannelTests",
            dependencies: [
                "FerryClient", "FerryServer", "FerryProtocol",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
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
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
