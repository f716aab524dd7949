// libFuzzer target: the client's reply side. Byte 0 chooses a mode:
//   0, 1  a reply stream through `ReplyFrameDecoder` and through the client's real framer,
//         `ReplyFrameSplitter` (byte 1 chooses the line limit and how reads split it, for each
//         its own way); both must give the model's frames; every line is read as status, entry,
//         greeting and chunk header, every chunk goes through `ChunkDecoder`;
//   2     one chunk: raw length, codec, CRC and offset from the next bytes, the rest is the
//         wire (a flag lets the CRC be that of what the reference decoder of the codec yields,
//         so acceptance is reachable; flag 0x10 chooses zstd, 0x02 stored, neither zlib);
//   3     the encoder: the rest is raw data, encoded, decoded, then decoded with one byte flipped.
import FerryFiles
import FerryProtocol
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReply(_ data: UnsafeRawPointer?, _ count: Int) -> CInt {
    var input = FuzzInput(data, count)
    let mode = input.byte() % 4
    switch mode {
    case 0, 1:
        let control = input.byte()
        let maxLine = control & 0x80 != 0 ? FerryLimits.maxReplyLine : 8 + Int(control & 0x7F)
        let largest = control & 0x40 != 0 ? 5 : 1000
        var pieces = PieceSizes(seed: control)
        var reads = PieceSizes(seed: ~control)
        let stream = Array(input.rest)
        fuzzRun {
            for frame in try ReplyFuzzChecks.checkReplyFraming(stream, maxLine: maxLine, nextPiece: { pieces.next(max: largest) }) {
                if case .chunk(let header, let wire) = frame { try ChunkFuzzChecks.checkChunk(header, wire) }
            }
            try ReplyFuzzChecks.checkReplySplitting(stream, maxLine: maxLine, nextPiece: { reads.next(max: 1005 - largest) })
        }
    case 2:
        let flags = input.byte()
        let length = Int(input.uint16())
        let rawLength = flags & 0x01 != 0 ? FerryLimits.maxChunkRaw - length : 1 + length
        var crc = input.uint32()
        let offset = Int64(input.uint16())
        let wire = Array(input.rest)
        let codec: ChunkCodec = flags & 0x10 != 0 ? .zstd : flags & 0x02 != 0 ? .stored : .zlib
        if flags & 0x04 != 0 {
            let raw: [UInt8]?
            switch codec {
            case .stored: raw = wire
            case .zlib: raw = ChunkFuzzChecks.referenceInflate(wire, rawLength: rawLength)
            case .zstd: raw = ChunkFuzzChecks.referenceZstd(wire, rawLength: rawLength)
            }
            if let raw { crc = ChunkFuzzChecks.crc32(raw) }
        }
        let header = ChunkHeader(offset: offset, rawLength: rawLength, wireLength: wire.count, codec: codec, crc32: crc)
        // The client decodes only what its framing delivered under a header it parsed.
        guard (try? ChunkHeader.parse(Substring(header.line))) == header else { return 0 }
        fuzzRun { try ChunkFuzzChecks.checkChunk(header, wire) }
    default:
        let flags = input.byte()
        let decisions: [ChunkDecision] = [.store, .sampleThenCompress(.zlib(1)), .compress(.zlib(1)), .compress(.zlib(6)),
                                          .compress(.zlib(9)), .sampleThenCompress(.zstd(1)), .compress(.zstd(3)), .compress(.zstd(-5))]
        let decision = decisions[Int(flags & 0x07)]
        let flip = flags & 0x08 != 0 ? (position: Int(input.uint16()), mask: input.byte()) : nil
        let raw = Array(input.rest)
        fuzzRun { try ChunkFuzzChecks.checkRoundTrip(raw, decision: decision, offset: 0, flip: flip) }
    }
    return 0
}

/// See `fuzzMain`: the entry point SwiftPM links as `main`.
@_cdecl("FuzzReply_main")
public func harnessMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    fuzzMain(argc, argv, fuzzReply)
}
