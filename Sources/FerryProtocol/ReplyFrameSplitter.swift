import NIOCore

/// Splits the server's byte stream into reply frames like `ReplyFrameDecoder` behind NIO's
/// `ByteToMessageHandler`, but without merging every read into one buffer first: a chunk
/// payload that lies inside one read is handed on as a slice of that read (no copy), and
/// only a payload that spans reads is assembled (one copy, into a buffer of exactly its size).
/// Lines, and the few bytes of a line cut by a read, are copied as before; every limit of
/// `ReplyFrameDecoder` applies unchanged (it parses every line and header).
public struct ReplyFrameSplitter {
    private var decoder: ReplyFrameDecoder
    /// Bytes of a line cut at the end of the previous read (never a payload byte).
    private var lineTail: ByteBuffer?
    /// A payload spanning reads: its header and the bytes gathered so far.
    private var assembling: (header: ChunkHeader, bytes: ByteBuffer)?

    /// Copy even a payload that lies inside one read, keeping no slice of the input. For input
    /// whose buffer its producer writes into again (swift-nio-ssl reuses one buffer for the
    /// plaintext of every read): a slice kept alive there makes the producer's next write copy
    /// the buffer and grow the copy again from one TLS record, a record at a time.
    public let copiesPayloads: Bool

    public init(maxLine: Int = FerryLimits.maxReplyLine, copiesPayloads: Bool = false) {
        decoder = ReplyFrameDecoder(maxLine: maxLine)
        self.copiesPayloads = copiesPayloads
    }

    /// Whether part of a frame is waiting for more bytes.
    public var hasPartialFrame: Bool { lineTail != nil || assembling != nil }

    /// The wire length of the chunk payload being gathered across reads, if one is (a client
    /// gives a payload more time than a line: see `FerryConnection`).
    public var payloadInProgress: Int? { assembling?.header.wireLength }

    /// Takes the next read off the socket and returns the frames it completes, in order.
    public mutating func feed(_ input: ByteBuffer, allocator: ByteBufferAllocator) throws -> [ReplyFrame] {
        var frames: [ReplyFrame] = []
        try feed(input, allocator: allocator, into: &frames)
        return frames
    }

    /// Takes the next read off the socket and appends the frames it completes, in order, to
    /// `frames`. When the read breaks the framing rules, the frames completed before the point
    /// of the error are in `frames` when it throws, as `ReplyFrameDecoder` behind NIO's
    /// `ByteToMessageHandler` would have passed them on (found by fuzzing the two side by side).
    public mutating func feed(_ input: ByteBuffer, allocator: ByteBufferAllocator, into frames: inout [ReplyFrame]) throws {
        var buffer = input
        if var tail = lineTail {
            lineTail = nil  // so `tail` is the only reference and grows in place
            // Finish the cut line from the head of this read, then go on with the rest of it.
            let view = buffer.readableBytesView
            guard let lf = view.firstIndex(of: 0x0A) else {
                tail.writeBuffer(&buffer)
                lineTail = tail
                _ = try decoder.nextFrame(&tail)  // enforces the line limit; cannot complete without LF
                return
            }
            let count = lf - view.startIndex + 1
            var head = buffer.readSlice(length: count) ?? ByteBuffer()
            tail.writeBuffer(&head)
            if let frame = try decoder.nextFrame(&tail) { frames.append(frame) }
            // A CHUNK header's payload begins in `buffer`: handled by the loop below.
        }
        while true {
            if var gathering = assembling {
                assembling = nil  // so `gathering.bytes` is the only reference and grows in place
                let missing = gathering.header.wireLength - gathering.bytes.readableBytes
                guard var part = buffer.readSlice(length: min(missing, buffer.readableBytes)) else { break }
                gathering.bytes.writeBuffer(&part)
                if gathering.bytes.readableBytes < gathering.header.wireLength {
                    assembling = gathering
                    return
                }
                assembling = nil
                frames.append(.chunk(gathering.header, gathering.bytes))
                continue
            }
            if let frame = try decoder.nextFrame(&buffer) {
                if copiesPayloads, case .chunk(let header, var slice) = frame {
                    var copy = allocator.buffer(capacity: slice.readableBytes)
                    copy.writeBuffer(&slice)
                    frames.append(.chunk(header, copy))
                } else {
                    frames.append(frame)
                }
                continue
            }
            if let header = decoder.takePendingChunk() {
                // The payload goes on past this read: gather it into a buffer of its own size.
                var bytes = allocator.buffer(capacity: header.wireLength)
                bytes.writeBuffer(&buffer)
                assembling = (header, bytes)
                return
            }
            // Part of a line (or nothing) is left: keep a copy of just those bytes.
            if buffer.readableBytes > 0 {
                var tail = allocator.buffer(capacity: buffer.readableBytes)
                tail.writeBuffer(&buffer)
                lineTail = tail
            }
            return
        }
        return
    }
}
