// libFuzzer target: the server's request side. Byte 0 chooses the line limit and how reads
// split the stream; the rest is one request line for `Request.parse` and, as a byte stream,
// the input of `RequestLineDecoder` (every line it frames is parsed too).
import FerryProtocol
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequest(_ data: UnsafeRawPointer?, _ count: Int) -> CInt {
    var input = FuzzInput(data, count)
    let control = input.byte()
    let bytes = Array(input.rest)
    fuzzRun { try RequestFuzzChecks.checkRequestLine(Substring(String(decoding: bytes, as: UTF8.self))) }
    let maxLine = control & 0x80 != 0 ? FerryLimits.maxRequestLine : 1 + Int(control & 0x3F)
    let largest = control & 0x40 != 0 ? 4 : 700
    var pieces = PieceSizes(seed: control)
    fuzzRun { try RequestFuzzChecks.checkRequestFraming(bytes, maxLine: maxLine) { pieces.next(max: largest) } }
    return 0
}

/// See `fuzzMain`: the entry point SwiftPM links as `main`.
@_cdecl("FuzzRequest_main")
public func harnessMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    fuzzMain(argc, argv, fuzzRequest)
}
