// swift-tools-version: 6.0
import PackageDescription

// libFuzzer harnesses for ferry's four parsers (docs/SECURITY.md, "Fuzzing").
//
// A separate package so that the main package's `swift build` / `swift test` never builds it.
// The root package exports no library products (only the `ferry` executable), and a path
// dependency can only be used through its products, so this package compiles the parser
// modules itself from symlinks (Sources/FerryProtocol -> ../../Sources/FerryProtocol, same for
// FerryFiles, CZlib, CZstd, CFerryCRC, CFerrySys and CFerryXXH): the code fuzzed is exactly the code in the main package's Sources/.
// That also lets the fuzzer's coverage instrumentation cover the parser modules and not
// swift-nio or swift-crypto, so libFuzzer's feedback is about our code.
//
// Build with scripts/fuzz (or `swift build -c release --package-path Fuzz`); needs a Linux
// swift.org toolchain (libFuzzer ships with it).

let sanitizers = "-sanitize=fuzzer,address"
let instrumented: [SwiftSetting] = [.unsafeFlags([sanitizers])]
let harness: [SwiftSetting] = [.unsafeFlags([sanitizers, "-parse-as-library"])]
let linkFuzzer: [LinkerSetting] = [.unsafeFlags([sanitizers])]

let package = Package(
    name: "FerryFuzz",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .target(name: "CFerryCRC", path: "Sources/CFerryCRC"),
        .target(name: "CFerrySys", path: "Sources/CFerrySys"),
        .target(name: "CFerryXXH", path: "Sources/CFerryXXH"),
        .target(
            name: "FerryProtocol",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: instrumented
        ),
        .target(
            name: "FerryFiles",
            dependencies: [
                "FerryProtocol", "CZlib", "CZstd", "CFerryCRC", "CFerrySys", "CFerryXXH",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: instrumented
        ),
                // Harness.swift, plus the test files that define the checks (symlinks into Tests/):
        // FERRY_FUZZ_HARNESS leaves out their XCTest cases.
        .target(
            name: "FuzzSupport",
            dependencies: ["FerryProtocol", "FerryFiles", "CZlib", "CZstd", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: instrumented + [.define("FERRY_FUZZ_HARNESS")]
        ),
        .executableTarget(name: "FuzzRequest", dependencies: ["FuzzSupport"], swiftSettings: harness, linkerSettings: linkFuzzer),
        .executableTarget(name: "FuzzReply", dependencies: ["FuzzSupport"], swiftSettings: harness, linkerSettings: linkFuzzer),
        .executableTarget(name: "FuzzManifest", dependencies: ["FuzzSupport"], swiftSettings: harness, linkerSettings: linkFuzzer),
        .executableTarget(name: "FuzzDatagram", dependencies: ["FuzzSupport"], swiftSettings: harness, linkerSettings: linkFuzzer),
    ],
    swiftLanguageModes: [.v6]
)
