// Fuzzing the protocol parsers: the request line parser and its framing (the server's side),
// and the reply framing with the status, entry, greeting and chunk-header lines it carries
// (the client's side).
//
// This file is compiled twice. In FerryProtocolTests the XCTest cases at the end drive the
// checks with a seeded mutation fuzzer. Through the symlink Fuzz/Sources/FuzzSupport/
// ProtocolChecks.swift it is also part of the libFuzzer harnesses (FERRY_FUZZ_HARNESS is
// defined there and libFuzzer supplies the inputs), so both check exactly the same properties.

import FerryProtocol
import NIOCore

/// A property that did not hold.
private struct Violation: Error, CustomStringConvertible {
    let description: String
}

private func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw Violation(description: message()) }
}

/// Input shown in a failure message: escaped, and cut to a readable length.
private func fuzzShow<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    let text = String(decoding: bytes.prefix(300), as: UTF8.self).debugDescription
    return bytes.count > 300 ? text + "…(\(bytes.count) bytes)" : text
}

/// UTF-8 validation written from RFC 3629's table, independently of the decoder under test.
private func fuzzIsValidUTF8<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
    var it = bytes.makeIterator()
    while let b0 = it.next() {
        let count: Int
        var low: UInt8 = 0x80, high: UInt8 = 0xBF
        switch b0 {
        case 0x00...0x7F: continue
        case 0xC2...0xDF: count = 1
        case 0xE0: count = 2; low = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: count = 2
        case 0xED: count = 2; high = 0x9F
        case 0xF0: count = 3; low = 0x90
        case 0xF1...0xF3: count = 3
        case 0xF4: count = 3; high = 0x8F
        default: return false
        }
        for i in 0..<count {
            guard let b = it.next() else { return false }
            if i == 0 { guard b >= low && b <= high else { return false } } else { guard b >= 0x80 && b <= 0xBF else { return false } }
        }
    }
    return true
}

// MARK: - Request side

public enum RequestFuzzChecks {
    /// `Request.parse` on one line. Accepted requests re-serialise to a canonical printable-ASCII
    /// line that parses to the same request and re-serialises to itself; refusals map to 400
    /// or 421 with a one-line reply that does not echo unbounded input.
    public static func checkRequestLine(_ line: Substring) throws {
        let request: Request
        do {
            request = try Request.parse(line)
        } catch {
            let reply = error.reply
            try expect(reply.code == 400 || reply.code == 421, "refusal with code \(reply.code) for \(fuzzShow(line.utf8))")
            let text = reply.line
            try expect(!text.utf8.contains { $0 < 0x20 || $0 == 0x7F }, "error reply is not one clean line: \(fuzzShow(text.utf8))")
            try expect(text.utf8.count <= 512, "error reply of \(text.utf8.count) bytes for \(fuzzShow(line.utf8))")
            return
        }
        try expect(!line.utf8.contains { $0 < 0x20 || $0 == 0x7F }, "a line with control bytes was accepted: \(fuzzShow(line.utf8))")
        let canonical = request.line
        try expect(canonical.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F },
                   "canonical form \(fuzzShow(canonical.utf8)) is not printable ASCII (input \(fuzzShow(line.utf8)))")
        try expect(!canonical.split(separator: " ", omittingEmptySubsequences: false).contains(where: \.isEmpty),
                   "canonical form \(fuzzShow(canonical.utf8)) has an empty field")
        let again: Request
        do { again = try Request.parse(Substring(canonical)) } catch {
            throw Violation(description: "canonical form \(fuzzShow(canonical.utf8)) of \(fuzzShow(line.utf8)) is refused: \(error)")
        }
        try expect(again == request, "\(fuzzShow(line.utf8)) → \(request), but its canonical form parses to \(again)")
        try expect(again.line == canonical, "canonical form is not a fixpoint: \(fuzzShow(canonical.utf8)) → \(fuzzShow(again.line.utf8))")
        // The verb is the first field, compared ASCII-case-insensitively.
        let first = Array(line.utf8.prefix { $0 != 0x20 })
        let verb = Array(request.verb.utf8)
        try expect(first.count == verb.count && zip(first, verb).allSatisfy { $0 == $1 || $0 == $1 + 0x20 },
                   "\(fuzzShow(line.utf8)) was read as \(request.verb)")
        switch request {
        case .get(let p, let offset, let length, _):
            try expect(offset >= 0 && (length ?? 0) >= 0, "negative range in \(request)")
            try checkPath(p)
        case .hash(let p, let offset, let length, _):
            try expect(offset >= 0 && length >= 0, "negative range in \(request)")
            try checkPath(p)
        case .blocks(let p, _, let blockSize):
            if let bs = blockSize { try expect(bs >= 4096 && bs <= 64 << 20 && bs & (bs - 1) == 0, "block size \(bs)") }
            try checkPath(p)
        case .list(let p, _), .stat(let p), .manifest(let p, _, _), .chunks(let p, _):
            try checkPath(p)
        case .auth(let hex):
            try expect(isSHA256Hex(hex), "AUTH with \(hex)")
        case .boundAuth(let hex, let nonce):
            try expect(isSHA256Hex(hex) && isSHA256Hex(nonce), "AUTH with \(hex) \(nonce)")
        case .caps(let list):
            try expect(!list.isEmpty && list.allSatisfy { Capability.isValidName(Substring($0.name)) }, "CAPS with \(list)")
        case .quit:
            break
        }
    }

    /// What PROTOCOL.md section 2.1 promises about every accepted path.
    static func checkPath(_ p: RemotePath) throws {
        try expect(p.bytes.count <= FerryLimits.maxPathBytes, "path of \(p.bytes.count) bytes")
        try expect(!p.bytes.contains(0) && p.bytes.first != 0x2F, "path \(fuzzShow(p.bytes))")
        for c in p.components {
            try expect(!c.isEmpty && !c.elementsEqual([0x2E]) && !c.elementsEqual([0x2E, 0x2E]) && c.count <= FerryLimits.maxComponentBytes,
                       "component \(fuzzShow(c)) in \(fuzzShow(p.bytes))")
        }
        try expect((try? RemotePath(wire: Substring(p.wire))) == p, "path \(fuzzShow(p.bytes)) does not survive its wire form \(p.wire)")
    }

    /// The frames a correct request framer yields for the LF-terminated lines of `stream`
    /// (PROTOCOL.md section 2), computed on the whole stream at once.
    public static func expectedRequestFrames(_ stream: [UInt8], maxLine: Int) -> [RequestFrame] {
        var frames: [RequestFrame] = []
        var start = 0
        while let lf = stream[start...].firstIndex(of: 0x0A) {
            let length = lf - start
            if length + 1 > maxLine {
                frames.append(.tooLong)
            } else {
                var end = lf
                if end > start && stream[end - 1] == 0x0D { end -= 1 }
                let raw = stream[start..<end]
                frames.append(fuzzIsValidUTF8(raw) ? .line(String(decoding: raw, as: UTF8.self)) : .notUTF8)
            }
            start = lf + 1
        }
        return frames
    }

    /// Feeds `stream` to a `RequestLineDecoder` in pieces of `nextPiece()` bytes and checks,
    /// after every piece, that each frame consumed input, that no line exceeds the limit and
    /// that the decoder holds fewer than `maxLine` bytes; then that the frames are exactly the
    /// model's, both before and after a final LF. Every line is also checked as a request.
    @discardableResult
    public static func checkRequestFraming(_ stream: [UInt8], maxLine: Int, nextPiece: () -> Int) throws -> [RequestFrame] {
        var decoder = RequestLineDecoder(maxLine: maxLine)
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        var frames: [RequestFrame] = []
        func drain() throws {
            while true {
                let before = buffer.readerIndex
                guard let frame = decoder.nextFrame(&buffer) else { break }
                try expect(buffer.readerIndex > before, "a frame without consuming input (stream \(fuzzShow(stream)))")
                if case .line(let line) = frame {
                    try expect(line.utf8.count < maxLine && !line.utf8.contains(0x0A),
                               "line of \(line.utf8.count) bytes with limit \(maxLine): \(fuzzShow(line.utf8))")
                    try checkRequestLine(Substring(line))
                }
                frames.append(frame)
                try expect(frames.count <= stream.count + 1, "more frames than input bytes")
            }
            try expect(buffer.readableBytes < maxLine, "the decoder holds \(buffer.readableBytes) bytes (limit \(maxLine))")
            if buffer.readerIndex > 4096 { buffer.discardReadBytes() }
        }
        var position = 0
        while position < stream.count {
            let n = min(stream.count - position, max(1, nextPiece()))
            buffer.writeBytes(stream[position..<(position + n)])
            position += n
            try drain()
        }
        let expected = expectedRequestFrames(stream, maxLine: maxLine)
        try expect(frames == expected, "frames \(frames.prefix(8)) differ from the model's \(expected.prefix(8)) (limit \(maxLine), stream \(fuzzShow(stream)))")
        buffer.writeInteger(UInt8(0x0A))
        try drain()
        let closed = expectedRequestFrames(stream + [0x0A], maxLine: maxLine)
        try expect(frames == closed, "after a final LF: frames \(frames.suffix(3)) differ from the model's \(closed.suffix(3)) (limit \(maxLine), stream \(fuzzShow(stream)))")
        try expect(buffer.readableBytes == 0, "bytes left after the final LF")
        return frames
    }
}

// MARK: - Reply side

public enum ReplyFuzzChecks {
    /// A reply frame with its payload copied out, so frames compare by value.
    public enum Frame: Hashable, Sendable {
        case line(String)
        case chunk(ChunkHeader, [UInt8])
    }

    /// The frames a correct reply framer yields for `stream`, whether the stream breaks the
    /// framing rules before its end (PROTOCOL.md sections 2 and 7), and, when it does not, how
    /// many bytes at its end are part of a frame not complete yet.
    public static func expectedReplyFrames(_ stream: [UInt8], maxLine: Int) -> (frames: [Frame], broken: Bool, unfinished: Int) {
        var frames: [Frame] = []
        var start = 0
        while true {
            guard let lf = stream[start...].firstIndex(of: 0x0A) else {
                return (frames, stream.count - start > maxLine, stream.count - start)
            }
            if lf - start + 1 > maxLine { return (frames, true, 0) }
            var end = lf
            if end > start && stream[end - 1] == 0x0D { end -= 1 }
            let raw = stream[start..<end]
            guard fuzzIsValidUTF8(raw) else { return (frames, true, 0) }
            let lineStart = start
            start = lf + 1
            let line = String(decoding: raw, as: UTF8.self)
            guard line.hasPrefix("CHUNK ") else {
                frames.append(.line(line))
                continue
            }
            guard let header = try? ChunkHeader.parse(Substring(line)) else { return (frames, true, 0) }
            guard stream.count - start >= header.wireLength else { return (frames, false, stream.count - lineStart) }
            frames.append(.chunk(header, Array(stream[start..<(start + header.wireLength)])))
            start += header.wireLength
        }
    }

    /// Feeds `stream` to a `ReplyFrameDecoder` in pieces and checks that the frames, and the
    /// point where it reports a framing error, are the model's; that the decoder never holds
    /// more than one line or one announced chunk; and checks every line and chunk header.
    @discardableResult
    public static func checkReplyFraming(_ stream: [UInt8], maxLine: Int, nextPiece: () -> Int) throws -> [Frame] {
        var decoder = ReplyFrameDecoder(maxLine: maxLine)
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        var frames: [Frame] = []
        var broken = false
        var position = 0
        feeding: while position < stream.count {
            let n = min(stream.count - position, max(1, nextPiece()))
            buffer.writeBytes(stream[position..<(position + n)])
            position += n
            do {
                while let frame = try decoder.nextFrame(&buffer) {
                    switch frame {
                    case .line(let line):
                        try expect(line.utf8.count < maxLine && !line.utf8.contains(0x0A), "reply line of \(line.utf8.count) bytes")
                        try checkReplyLine(line)
                        frames.append(.line(line))
                    case .chunk(let header, let wire):
                        try expect(wire.readableBytes == header.wireLength, "chunk frame with \(wire.readableBytes) bytes for \(header.line)")
                        try checkChunkHeaderLine(header.line)
                        frames.append(.chunk(header, Array(wire.readableBytesView)))
                    }
                }
            } catch let error as ReplyFramingError {
                try expect(!error.description.isEmpty && error.description.utf8.count < 512, "framing error text: \(error.description.prefix(600))")
                broken = true
                break feeding
            }
            try expect(buffer.readableBytes <= max(maxLine, FerryLimits.maxChunkRaw + FerryLimits.chunkWireSlack),
                       "the reply decoder holds \(buffer.readableBytes) bytes")
            if buffer.readerIndex > 4096 { buffer.discardReadBytes() }
        }
        let expected = expectedReplyFrames(stream, maxLine: maxLine)
        try expect(frames == expected.frames && broken == expected.broken,
                   "frames \(frames.prefix(6)) (error: \(broken)) differ from the model's \(expected.frames.prefix(6)) (error: \(expected.broken)); limit \(maxLine), stream \(fuzzShow(stream))")
        return frames
    }

    /// Feeds `stream` to the client's real framer, `ReplyFrameSplitter`, in pieces and checks
    /// that its frames, and the point where it reports a framing error, are the model's (so the
    /// same as `ReplyFrameDecoder`'s); that a payload it gathers across reads is one announced
    /// chunk, never longer than the chunk limit; and that at the end it holds part of a frame
    /// exactly when the stream ends inside one.
    @discardableResult
    public static func checkReplySplitting(_ stream: [UInt8], maxLine: Int, nextPiece: () -> Int) throws -> [Frame] {
        var splitter = ReplyFrameSplitter(maxLine: maxLine)
        let allocator = ByteBufferAllocator()
        var frames: [Frame] = []
        var broken = false
        var position = 0
        feeding: while position < stream.count {
            let n = min(stream.count - position, max(1, nextPiece()))
            let read = ByteBuffer(bytes: stream[position..<(position + n)])
            position += n
            // As the client's handler does: the frames before an error in a read are passed on.
            var complete: [ReplyFrame] = []
            var failure: ReplyFramingError?
            do { try splitter.feed(read, allocator: allocator, into: &complete) } catch let error as ReplyFramingError { failure = error }
            for frame in complete {
                switch frame {
                case .line(let line):
                    try expect(line.utf8.count < maxLine && !line.utf8.contains(0x0A), "split reply line of \(line.utf8.count) bytes")
                    frames.append(.line(line))
                case .chunk(let header, let wire):
                    try expect(wire.readableBytes == header.wireLength, "split chunk with \(wire.readableBytes) bytes for \(header.line)")
                    frames.append(.chunk(header, Array(wire.readableBytesView)))
                }
            }
            if let failure {
                try expect(!failure.description.isEmpty && failure.description.utf8.count < 512, "framing error text: \(failure.description.prefix(600))")
                broken = true
                break feeding
            }
            if let payload = splitter.payloadInProgress {
                try expect(payload <= FerryLimits.maxChunkRaw + FerryLimits.chunkWireSlack, "the splitter gathers a \(payload)-byte payload")
            }
        }
        let expected = expectedReplyFrames(stream, maxLine: maxLine)
        try expect(frames == expected.frames && broken == expected.broken,
                   "split frames \(frames.prefix(6)) (error: \(broken)) differ from the model's \(expected.frames.prefix(6)) (error: \(expected.broken)); limit \(maxLine), stream \(fuzzShow(stream))")
        if !broken {
            try expect(splitter.hasPartialFrame == (expected.unfinished > 0),
                       "the splitter \(splitter.hasPartialFrame ? "holds" : "holds no") partial frame; \(expected.unfinished) bytes are unfinished")
        }
        return frames
    }

    /// Every reading a client may apply to a reply line: status line, LIST/STAT entry,
    /// greeting and chunk header. Whatever is accepted must re-serialise to a line that reads
    /// back the same.
    public static func checkReplyLine(_ line: String) throws {
        let text = Substring(line)
        switch try? StatusLine.parse(text) {
        case .ok(let fields)?:
            try expect(line == "OK" ? fields.isEmpty : line.hasPrefix("OK ") && fields.joined(separator: " ") == line.dropFirst(3),
                       "OK fields \(fields) from \(fuzzShow(line.utf8))")
        case .err(let reply)?:
            try expect(line.hasPrefix("ERR ") && (100...599).contains(reply.code), "error \(reply.code) from \(fuzzShow(line.utf8))")
            let once = reply.line
            try expect(!once.utf8.contains { $0 < 0x20 || $0 == 0x7F }, "ERR line is not one clean line: \(fuzzShow(once.utf8))")
            guard case .err(let again)? = try? StatusLine.parse(Substring(once)) else {
                throw Violation(description: "re-serialised error \(fuzzShow(once.utf8)) does not parse")
            }
            try expect(again.code == reply.code, "\(fuzzShow(once.utf8)) reads back as \(again)")
            // A reason that was only control characters reads back empty (they become spaces,
            // and leading spaces are not part of the reason), and is then written as "error":
            // stable from the second round on.
            guard case .err(let third)? = try? StatusLine.parse(Substring(again.line)), third.code == reply.code,
                  case .err(let fourth)? = try? StatusLine.parse(Substring(third.line)), fourth == third, !third.reason.isEmpty else {
                throw Violation(description: "ERR line is not stable: \(fuzzShow(again.line.utf8))")
            }
        case nil:
            try expect(!line.hasPrefix("OK ") && line != "OK", "OK line refused: \(fuzzShow(line.utf8))")
        }
        if let entry = try? Entry(line: text) {
            try RequestFuzzChecks.checkPath(entry.path)
            try expect(entry.size >= 0 && entry.mode <= 0o7777, "entry \(entry)")
            try expect((try? Entry(line: Substring(entry.line))) == entry, "entry \(fuzzShow(line.utf8)) does not survive \(fuzzShow(entry.line.utf8))")
        }
        if let greeting = try? Greeting.parse(text) {
            try expect(greeting.nonce.map { $0.count == 32 } ?? true, "nonce of \(greeting.nonce?.count ?? 0) bytes")
            try expect((try? Greeting.parse(Substring(greeting.line))) == greeting,
                       "greeting \(fuzzShow(line.utf8)) does not survive \(fuzzShow(greeting.line.utf8))")
        }
        if line.hasPrefix("CHUNK ") { try checkChunkHeaderLine(line) }
        if let chunk = try? ChunksHead.parseChunkLine(text) {
            try expect(chunk.offset >= 0 && (0...FerryLimits.maxChunkRaw).contains(chunk.length), "chunk line out of bounds: \(chunk)")
            try expect((try? ChunksHead.parseChunkLine(Substring(ChunksHead.chunkLine(chunk)))) == chunk,
                       "chunk line \(fuzzShow(line.utf8)) does not survive \(ChunksHead.chunkLine(chunk))")
        }
        for body: any OKReply.Type in [ListHead.self, StatReply.self, GetHead.self, HashReply.self, BlocksHead.self,
                                       ChunksHead.self, ManifestHead.self, AuthOK.self, QuitOK.self, CapsReply.self] {
            try checkTypedReply(body, text)
        }
        if let end = try? StreamLine.parse(text) {
            let again: String
            switch end {
            case .end(let t): again = t.line
            case .err(let e): again = e.line
            }
            try expect((try? StreamLine.parse(Substring(again))).map { $0 == end || again.hasPrefix("ERR ") } ?? false,
                       "stream line \(fuzzShow(line.utf8)) does not survive \(fuzzShow(again.utf8))")
        }
    }

    /// A typed status line that reads is written back as a line that reads the same (an `ERR`
    /// only from the second round on: its reason is cleaned once).
    static func checkTypedReply<Body: OKReply>(_ body: Body.Type, _ text: Substring) throws {
        guard let reply = try? Reply<Body>.parse(text) else { return }
        let again: String
        switch reply {
        case .ok(let ok): again = ok.line
        case .err(let e): again = e.line
        }
        guard let back = try? Reply<Body>.parse(Substring(again)) else {
            throw Violation(description: "\(Body.self) \(fuzzShow(text.utf8)) is written as \(fuzzShow(again.utf8)), which does not read")
        }
        if case .ok = reply { try expect(back == reply, "\(Body.self) \(fuzzShow(text.utf8)) reads back as \(back)") }
    }

    /// `ChunkHeader.parse`: accepted headers are within the limits and survive their line.
    public static func checkChunkHeaderLine(_ line: String) throws {
        guard let h = try? ChunkHeader.parse(Substring(line)) else { return }
        try expect(h.offset >= 0 && (1...FerryLimits.maxChunkRaw).contains(h.rawLength)
                   && (1...(h.rawLength + FerryLimits.chunkWireSlack)).contains(h.wireLength)
                   && (h.codec != .stored || h.wireLength == h.rawLength), "header out of bounds: \(h) from \(fuzzShow(line.utf8))")
        try expect((try? ChunkHeader.parse(Substring(h.line))) == h, "chunk header \(fuzzShow(line.utf8)) does not survive \(h.line)")
    }
}

#if !FERRY_FUZZ_HARNESS
import FerryTestSupport
import XCTest

/// Byte-level mutations in the spirit of libFuzzer's: flips, inserts, deletes, splices,
/// truncation, huge numbers, long runs, invalid UTF-8, dictionary tokens.
private enum Mutator {
    static let interesting: [UInt8] = [0x00, 0x09, 0x0A, 0x0D, 0x20, 0x25, 0x2C, 0x2E, 0x2F, 0x3D, 0x2A, 0x7F, 0x80, 0xC0, 0xFF]
    static let hugeNumbers = ["9223372036854775807", "9223372036854775808", "18446744073709551615", "99999999999999999999",
                              "0000000000000000000001", "-1", "+1", "0", "4194304", "4194305", "4195328", "4195329",
                              "2147483648", "65536", "65535", "1e9", "0x10"]
    static let badUTF8: [[UInt8]] = [[0x80], [0xC0, 0xAF], [0xC2], [0xE2, 0x82], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80],
                                     [0xF8, 0x88, 0x80, 0x80, 0x80], [0xFF, 0xFE], [0xEF, 0xBB, 0xBF], [0xCC, 0x81]]

    static func mutate(_ input: [UInt8], _ rng: inout SplitMix64, corpus: [[UInt8]], dictionary: [String]) -> [UInt8] {
        var b = input
        for _ in 0..<(1 + rng.below(4)) {
            let at = rng.below(b.count + 1)
            switch rng.below(13) {
            case 0 where !b.isEmpty: b[rng.below(b.count)] ^= UInt8(1) << UInt8(rng.below(8))
            case 1 where !b.isEmpty: b[rng.below(b.count)] = rng.chance(50) ? rng.pick(interesting) : UInt8(truncatingIfNeeded: rng.next())
            case 2: b.insert(contentsOf: (0..<(1 + rng.below(3))).map { _ in rng.pick(interesting) }, at: at)
            case 3 where !b.isEmpty:
                let from = rng.below(b.count)
                b.removeSubrange(from..<min(b.count, from + 1 + rng.below(rng.chance(80) ? 4 : 64)))
            case 4 where !b.isEmpty:
                // A long run: one slice repeated.
                let from = rng.below(b.count)
                let slice = b[from..<min(b.count, from + 1 + rng.below(8))]
                let times = rng.chance(95) ? 1 + rng.below(16) : 1 + rng.below(5000 / slice.count)
                var run: [UInt8] = []
                run.reserveCapacity(times * slice.count)
                for _ in 0..<times { run.append(contentsOf: slice) }
                b.insert(contentsOf: run, at: at)
            case 5:
                let other = rng.pick(corpus)
                let cut = rng.below(other.count + 1)
                b = Array(b.prefix(at)) + (rng.chance(50) ? Array(other[cut...]) : Array(other.prefix(cut)))
            case 6: b = Array(b.prefix(rng.below(b.count + 1)))
            case 7:
                // Replace a run of digits (or insert) with an extreme number.
                let huge = Array(rng.pick(hugeNumbers).utf8)
                if let start = b.indices.filter({ (0x30...0x39).contains(b[$0]) }).randomElement(using: &rng) {
                    var end = start
                    while end < b.count && (0x30...0x39).contains(b[end]) { end += 1 }
                    b.replaceSubrange(start..<end, with: huge)
                } else {
                    b.insert(contentsOf: huge, at: at)
                }
            case 8: b.insert(contentsOf: Array(rng.pick(dictionary).utf8), at: at)
            case 9: b.insert(contentsOf: rng.pick(badUTF8), at: at)
            case 10:
                // Long runs are rarer: they make every input slower to check.
                let count = rng.chance(85) ? rng.pick([2, 3, 16, 19, 20, 64]) : rng.pick([255, 256, 4095, 4096, 5000])
                b.insert(contentsOf: [UInt8](repeating: rng.pick([0x61, 0x20, 0x25, 0x2F, 0x30, 0x2E]), count: count), at: at)
            case 11 where b.count > 2:
                // Swap two bytes (reorders fields and lines).
                let i = rng.below(b.count), j = rng.below(b.count)
                b.swapAt(i, j)
            default: b.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
            }
        }
        return b
    }
}


final class ProtocolFuzzTests: XCTestCase {
    /// Each test runs `iterations` inputs, or stops at `budget` once it has run `minimum`.
    private static let budget: Duration = .seconds(2)

    private struct Outcome {
        var inputs = 0
        var counts: [String: Int] = [:]
        mutating func count(_ what: String) { counts[what, default: 0] += 1 }
        subscript(_ what: String) -> Int { counts[what, default: 0] }
    }

    private func fuzz(_ name: String, seed: UInt64, iterations: Int, minimum: Int,
                      file: StaticString = #filePath, line: UInt = #line,
                      _ body: (inout SplitMix64, inout Outcome) throws -> Void) -> Outcome {
        var outcome = Outcome()
        var failures = 0
        let clock = ContinuousClock()
        let start = clock.now
        for i in 0..<iterations {
            if i >= minimum && clock.now - start > Self.budget { break }
            var rng = SplitMix64(seed: seed, iteration: i)
            do { try body(&rng, &outcome) } catch {
                failures += 1
                XCTFail("\(name) seed 0x\(String(seed, radix: 16)) iteration \(i): \(error)", file: file, line: line)
                if failures >= 5 { break }
            }
            outcome.inputs += 1
        }
        print("fuzz \(name): \(outcome.inputs) inputs in \(clock.now - start), \(outcome.counts.sorted { $0.key < $1.key })")
        return outcome
    }

    // MARK: Request lines

    private let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"

    private var requestSeeds: [[UInt8]] {
        [
            "LIST .", "LIST docs", "STAT hello%20world.txt", "stat caf%C3%A9.txt", "GET a 0 *", "GET big.bin 1048576 262144 11,1700000000.120000000",
            "GET x 0 * 5,-1.500000000", "HASH a/b 0 4096", "HASH f%FF 7 100 12,0.000000001", "BLOCKS a", "BLOCKS a 1,2.000000000 65536",
            "BLOCKS a 4096 1,2.000000000", "MANIFEST .", "MANIFEST docs hashes=no", "MANIFEST d hashes=yes", "QUIT", "quit",
            "AUTH \(sha)", "List a%2Fb", "LIST ../etc", "GET /etc/passwd 0 *", "LIST a%00b", "STAT a//b", "LIST %",
        ].map { Array($0.utf8) }
    }

    private let requestDictionary = ["LIST", "STAT", "GET", "HASH", "BLOCKS", "MANIFEST", "QUIT", "AUTH", " ", "*", ",", ".",
                                     "..", "/", "%2F", "%2f", "%00", "%", "%C3%A9", "hashes=no", "hashes=yes", "\r", "\r\n",
                                     "1700000000.000000000", "-1.000000000", "4096", "67108864", "134217728"]

    func testRequestParserOnMutatedAndRandomLines() {
        let seeds = requestSeeds
        let o = fuzz("request lines", seed: 0xF022_0001, iterations: 40_000, minimum: 2_000) { rng, o in
            let input = rng.chance(10) ? rng.bytes(rng.below(64))
                                       : Mutator.mutate(rng.pick(seeds), &rng, corpus: seeds, dictionary: requestDictionary)
            let line = String(decoding: input, as: UTF8.self)
            try RequestFuzzChecks.checkRequestLine(Substring(line))
            o.count((try? Request.parse(Substring(line))) == nil ? "refused" : "accepted")
        }
        XCTAssertGreaterThan(o["accepted"], o.inputs / 20, "the mutations must keep some requests valid")
        XCTAssertGreaterThan(o["refused"], o.inputs / 4)
    }

    func testRequestFramingAgainstTheModel() {
        let seeds = requestSeeds
        let o = fuzz("request framing", seed: 0xF022_0002, iterations: 20_000, minimum: 1_000) { rng, o in
            var stream: [UInt8] = []
            for _ in 0..<(1 + rng.below(6)) {
                stream += rng.pick(seeds) + (rng.chance(70) ? [0x0A] : [0x0D, 0x0A])
            }
            if rng.chance(80) { stream = Mutator.mutate(stream, &rng, corpus: seeds, dictionary: requestDictionary) }
            if rng.chance(5) { stream = rng.bytes(rng.below(300)) }
            let maxLine = rng.chance(50) ? 1 + rng.below(48) : FerryLimits.maxRequestLine
            let small = rng.chance(50)
            let frames = try RequestFuzzChecks.checkRequestFraming(stream, maxLine: maxLine) {
                small ? 1 + rng.below(4) : 1 + rng.below(600)
            }
            for f in frames {
                switch f {
                case .line: o.count("line")
                case .tooLong: o.count("tooLong")
                case .notUTF8: o.count("notUTF8")
                }
            }
        }
        XCTAssertGreaterThan(o["line"], o.inputs)
        XCTAssertGreaterThan(o["tooLong"], o.inputs / 10)
        XCTAssertGreaterThan(o["notUTF8"], o.inputs / 100)
    }

    /// A client that sends a long line a byte at a time must not cost the server a rescan of
    /// everything buffered on every byte (quadratic time). 64 KiB, one byte per read, with
    /// the largest limit a decoder is built with in tests here.
    func testRequestFramingIsLinearInTheBytesBuffered() {
        let limit = 1 << 16
        var decoder = RequestLineDecoder(maxLine: limit)
        var buffer = ByteBufferAllocator().buffer(capacity: limit + 1)
        let clock = ContinuousClock()
        let start = clock.now
        // A rescan of the buffer per byte is ~2·10⁹ byte comparisons: minutes in a debug build.
        for i in 0..<(limit - 2) {
            buffer.writeInteger(UInt8(0x61))
            XCTAssertNil(decoder.nextFrame(&buffer))
            if i % 1024 == 0 && clock.now - start > .seconds(10) {
                return XCTFail("byte-at-a-time framing: only \(i) bytes in 10 s")
            }
        }
        buffer.writeInteger(UInt8(0x0A))
        XCTAssertEqual(decoder.nextFrame(&buffer), .line(String(repeating: "a", count: limit - 2)))
    }

    // MARK: Replies

    private var replySeeds: [[UInt8]] {
        let chunkPayload = Array("hello world".utf8)
        return [
            Array("FERRY 1 name=studio id=5d41402abc4b2a76b9719d911017c592 auth=none\n".utf8),
            Array("FERRY 1 name=a%20b id=x auth=hmac-sha256 nonce=\(String(repeating: "ab", count: 32))\n".utf8),
            Array("OK 5\nd 0755 0 1700000000.000000000 docs\nf 0644 11 1700000000.120000000 hello%20world.txt\nl 0777 3 -1.500000000 ln ../x\no 0600 0 1.000000000 fifo\n".utf8),
            Array("OK 11 1700000000.000000000 -\nCHUNK 0 11 11 s 0d4a1185\n".utf8) + chunkPayload + Array("END \(sha)\n".utf8),
            Array("OK 1\nCHUNK 7 100 9 z 0000abcd\n".utf8) + [0x78, 0x9C, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07] + Array("END -\n".utf8),
            Array("ERR 404 no such file\r\nERR 421 path refused: '..' is not allowed\nERR 500\nERR 7 x\n".utf8),
            Array("OK\nOK 2 4096 1 2\n\(sha)\n\(sha)\n".utf8),
            Array("CHUNK 0 4194304 4195328 z ffffffff\n".utf8) + [UInt8](repeating: 0x41, count: 40),
            Array("CHUNK 262144 262144 262144 s 1c291ca3\nCHUNK 9223372036854775807 1 1025 z 00000000\nCHUNK 0 1 1 s 8cdc1683\n".utf8),
            Array("CHUNK 1 2 3 z 0000000a\nCHUNK 4096 4096 100 z deadbeef\nCHUNK 0 10 10 s 00000000\nCHUNK 5 7 7 s abcdef01\n".utf8),
        ]
    }

    private let replyDictionary = ["OK ", "ERR ", "CHUNK ", "END ", "FERRY 1 ", "name=", "id=", "auth=none", "auth=hmac-sha256",
                                   "nonce=", " s ", " z ", "4194304", "4195328", "4195329", "0d4a1185", "\n", "\r\n", "f 0644 ",
                                   "d 0755 ", "l 0777 ", "1700000000.000000000", "%2F", "..", "/"]

    func testReplyFramingAgainstTheModel() {
        let seeds = replySeeds
        let o = fuzz("reply framing", seed: 0xF022_0003, iterations: 20_000, minimum: 1_000) { rng, o in
            var stream: [UInt8] = []
            for _ in 0..<(1 + rng.below(4)) { stream += rng.pick(seeds) }
            if rng.chance(80) { stream = Mutator.mutate(stream, &rng, corpus: seeds, dictionary: replyDictionary) }
            if rng.chance(5) { stream = rng.bytes(rng.below(400)) }
            let maxLine = rng.chance(30) ? 8 + rng.below(120) : FerryLimits.maxReplyLine
            let small = rng.chance(50)
            let frames = try ReplyFuzzChecks.checkReplyFraming(stream, maxLine: maxLine) { small ? 1 + rng.below(5) : 1 + rng.below(700) }
            // The client's real framer, fed in other pieces, must agree.
            try ReplyFuzzChecks.checkReplySplitting(stream, maxLine: maxLine) { small ? 1 + rng.below(700) : 1 + rng.below(5) }
            if ReplyFuzzChecks.expectedReplyFrames(stream, maxLine: maxLine).broken { o.count("broken") }
            for f in frames {
                if case .chunk = f { o.count("chunk") } else { o.count("line") }
            }
        }
        XCTAssertGreaterThan(o["line"], o.inputs)
        XCTAssertGreaterThan(o["chunk"], o.inputs / 10)
        XCTAssertGreaterThan(o["broken"], o.inputs / 20)
    }

    func testReplyLinesOnMutatedAndRandomInput() {
        let seeds: [[UInt8]] = replySeeds.flatMap { $0.split(separator: 0x0A).map(Array.init) }.filter { fuzzIsValidUTF8($0) }
        let o = fuzz("reply lines", seed: 0xF022_0004, iterations: 40_000, minimum: 2_000) { rng, o in
            let input = rng.chance(10) ? rng.bytes(rng.below(80))
                                       : Mutator.mutate(rng.pick(seeds), &rng, corpus: seeds, dictionary: replyDictionary)
            let line = String(decoding: input.filter { $0 != 0x0A }, as: UTF8.self)
            try ReplyFuzzChecks.checkReplyLine(line)
            if (try? StatusLine.parse(Substring(line))) != nil { o.count("status") }
            if (try? Entry(line: Substring(line))) != nil { o.count("entry") }
            if (try? Greeting.parse(Substring(line))) != nil { o.count("greeting") }
            if (try? ChunkHeader.parse(Substring(line))) != nil { o.count("chunk header") }
        }
        for kind in ["status", "entry", "greeting", "chunk header"] {
            XCTAssertGreaterThan(o[kind], o.inputs / 200, "\(kind) lines must be reached")
        }
    }

    /// The same byte-at-a-time attack from a server: 64 KiB reply line, one byte per read.
    func testReplyFramingIsLinearInTheBytesBuffered() throws {
        let limit = FerryLimits.maxReplyLine
        var decoder = ReplyFrameDecoder(maxLine: limit)
        var buffer = ByteBufferAllocator().buffer(capacity: limit + 1)
        let clock = ContinuousClock()
        let start = clock.now
        for i in 0..<(limit - 2) {
            buffer.writeInteger(UInt8(0x61))
            XCTAssertNil(try decoder.nextFrame(&buffer))
            if i % 1024 == 0 && clock.now - start > .seconds(10) {
                return XCTFail("byte-at-a-time reply framing: only \(i) bytes in 10 s")
            }
        }
        buffer.writeInteger(UInt8(0x0A))
        guard case .line(let l)? = try decoder.nextFrame(&buffer) else { return XCTFail("expected the line") }
        XCTAssertEqual(l.utf8.count, limit - 2)
    }
}
#endif
