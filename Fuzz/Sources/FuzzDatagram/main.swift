// libFuzzer target: `DiscoveryDatagram.parse` (and `ServerName`) on one datagram's bytes,
// compared with an independent reading of PROTOCOL.md section 9.
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDatagram(_ data: UnsafeRawPointer?, _ count: Int) -> CInt {
    let input = FuzzInput(data, count)
    let bytes = Array(input.rest)
    fuzzRun {
        try DatagramFuzzChecks.checkDatagram(bytes)
        try DatagramFuzzChecks.checkServerName(bytes)
    }
    return 0
}

/// See `fuzzMain`: the entry point SwiftPM links as `main`.
@_cdecl("FuzzDatagram_main")
public func harnessMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    fuzzMain(argc, argv, fuzzDatagram)
}
