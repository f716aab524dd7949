// What the libFuzzer entry points share: running a check so that a violated property stops the
// fuzzer (libFuzzer then saves the input as a crash artifact), and reading a few control
// values from the front of an input. The checks themselves live in the test files symlinked
// next to this one, so `swift test` and the fuzzers check the same properties.

/// Runs one check; a violated property is a crash, with the property's message.
public func fuzzRun(_ check: () throws -> Void) {
    do { try check() } catch { fatalError("property violated: \(error)") }
}

/// The fuzzer's input, read from the front: control values first, the rest is data.
public struct FuzzInput {
    public private(set) var rest: ArraySlice<UInt8>

    public init(_ data: UnsafeRawPointer?, _ count: Int) {
        if let data, count > 0 {
            rest = Array(UnsafeRawBufferPointer(start: data, count: count))[...]
        } else {
            rest = []
        }
    }

    /// The next byte, or 0 when the input is used up.
    public mutating func byte() -> UInt8 { rest.popFirst() ?? 0 }

    public mutating func uint16() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }

    public mutating func uint32() -> UInt32 { UInt32(uint16()) << 16 | UInt32(uint16()) }
}

/// Piece sizes for feeding a stream to a decoder, from a one-byte seed (xorshift), so that
/// libFuzzer controls how reads split the stream.
public struct PieceSizes {
    private var state: UInt32

    public init(seed: UInt8) { state = 0x9E37_79B9 ^ UInt32(seed) &* 0x0101_0101 }

    public mutating func next(max: Int) -> Int {
        state ^= state << 13
        state ^= state >> 17
        state ^= state << 5
        return 1 + Int(state % UInt32(max))
    }
}

/// libFuzzer's entry for programs that have their own `main` (compiler-rt, LLVM 11 and later).
@_silgen_name("LLVMFuzzerRunDriver")
private func llvmFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                                 _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                                 _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt) -> CInt

/// SwiftPM links an executable target `X` on Linux with `--defsym main=X_main` (so tests can
/// import executables); under `-parse-as-library` nothing defines `X_main` and the link fails
/// (swiftlang/swift-package-manager#8731). Each harness therefore defines `X_main` itself
/// and hands over to libFuzzer's driver here. Where SwiftPM does not rename `main`,
/// libFuzzer's own `main` runs and `X_main` is simply unused.
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>,
                     _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt) -> CInt {
    var count = argc
    var arguments: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return llvmFuzzerRunDriver(&count, &arguments, callback)
}
