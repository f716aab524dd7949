// swift-tools-version: 6.1
import PackageDescription

// Micro-benchmarks of ferry's hot paths, each next to the raw library call it wraps
// (docs/BENCHMARKS.md, "Micro-benchmarks"). Run from this directory:
//
//     swift package benchmark                   # all, as a table
//     swift package benchmark --filter 'CRC-32.*'  # a subset (a regex over the names)
//
// A separate package so that the main package's `swift build` / `swift test` never resolves
// or builds ordo-one/benchmark. The root package exports no library products (only the
// `ferry` executable), and a path dependency can only be used through its products, so this
// package compiles the measured modules itself from symlinks (Sources/FerryProtocol ->
// ../../Sources/FerryProtocol, same for FerryFiles, CZlib, CZstd, CFerryCRC, CFerrySys and CFerryXXH): what is measured is exactly the
// code in the main package's Sources/, built with the same settings.
let package = Package(
    name: "FerryBenchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
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
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "FerryFiles",
            dependencies: [
                "FerryProtocol", "CZlib", "CZstd", "CFerryCRC", "CFerrySys", "CFerryXXH",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .executableTarget(
            name: "FerryBenchmarks",
            dependencies: [
                "FerryFiles", "FerryProtocol", "CZlib",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/FerryBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
