// libFuzzer target: `Manifest.parse`. The input, as the client reads it (bytes decoded as
// UTF-8 with repair), is the manifest text.
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzManifest(_ data: UnsafeRawPointer?, _ count: Int) -> CInt {
    let input = FuzzInput(data, count)
    let text = String(decoding: input.rest, as: UTF8.self)
    fuzzRun { try ManifestFuzzChecks.checkManifest(text) }
    return 0
}

/// See `fuzzMain`: the entry point SwiftPM links as `main`.
@_cdecl("FuzzManifest_main")
public func harnessMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    fuzzMain(argc, argv, fuzzManifest)
}
