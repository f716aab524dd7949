import NIOCore

/// What the server's framing layer produces: a request line, or notice that a line was over
/// the limit (its bytes are dropped up to the next LF so the connection stays usable).
public enum RequestFrame: Sendable, Hashable {
    case line(String)
    case tooLong
    case notUTF8
}

/// Splits the inbound byte stream into request lines (PROTOCOL.md section 2).
public struct RequestLineDecoder: ByteToMessageDecoder {
    public typealias InboundOut = RequestFrame

    private let maxLine: Int
    private var discarding = false
    /// Leading buffered bytes already known to hold no LF: a line arriving a few bytes at a
    /// time is scanned once, not once per read (which made framing quadratic in the line).
    private var scanned = 0

    public init(maxLine: Int = FerryLimits.maxRequestLine) {
        self.maxLine = maxLine
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = nextFrame(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }

    /// The pure framing step, separate from NIO so it can be tested on plain buffers.
    public mutating func nextFrame(_ buffer: inout ByteBuffer) -> RequestFrame? {
        while true {
            let view = buffer.readableBytesView
            if scanned > view.count { scanned = 0 }
            if let lf = view[(view.startIndex + scanned)...].firstIndex(of: 0x0A) {
                scanned = 0
                let length = lf - view.startIndex
                if discarding {
                    buffer.moveReaderIndex(forwardBy: length + 1)
                    discarding = false
                    return .tooLong
                }
                if length + 1 > maxLine {
                    buffer.moveReaderIndex(forwardBy: length + 1)
                    return .tooLong
                }
                var lineLength = length
                if lineLength > 0 && view[lf - 1] == 0x0D { lineLength -= 1 }
                let bytes = buffer.readSlice(length: length + 1)
                guard let line = bytes?.getString(at: bytes?.readerIndex ?? 0, length: lineLength),
                      let raw = bytes?.getBytes(at: bytes?.readerIndex ?? 0, length: lineLength),
                      validUTF8(raw) else {
                    return .notUTF8
                }
                return .line(line)
            }
            if buffer.readableBytes >= maxLine || discarding {
                // No LF within the limit: drop what we have and keep dropping until one arrives.
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                discarding = true
            }
            scanned = buffer.readableBytes
            return nil
        }
    }
}

@usableFromInline
func validUTF8(_ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBufferPointer { PercentEncoding.isValidUTF8($0) }
}

/// Passes frames on unchanged and calls `counted` for each, so a connection can compare the
/// frames decoded with the frames it took and tell whether the next one is already waiting
/// (the client, before it waits for the network; the server, to hold small replies back).
public final class FrameCounter<Frame: Sendable>: ChannelInboundHandler, Sendable {
    public typealias InboundIn = Frame
    public typealias InboundOut = Frame
    private let counted: @Sendable () -> Void

    public init(_ counted: @escaping @Sendable () -> Void) { self.counted = counted }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        counted()
        context.fireChannelRead(data)
    }
}

/// What the client's framing layer produces.
public enum ReplyFrame: Sendable {
    case line(String)
    /// A chunk header and its wire bytes (not yet inflated or checked).
    case chunk(ChunkHeader, ByteBuffer)
}

/// A reply stream that breaks the protocol's framing rules; the connection must be dropped.
public struct ReplyFramingError: Error, Hashable, Sendable, CustomStringConvertible {
    public let why: String
    public init(_ why: String) { self.why = why }
    public var description: String { "the server broke the protocol: \(why)" }
}

/// Splits the server's byte stream into reply lines and chunks. Lengths are bounded before
/// anything is buffered, so a lying server cannot make the client allocate without limit.
public struct ReplyFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ReplyFrame

    private let maxLine: Int
    private var pendingChunk: ChunkHeader?
    /// As in `RequestLineDecoder`: leading buffered bytes known to hold no LF.
    private var scanned = 0

    public init(maxLine: Int = FerryLimits.maxReplyLine) {
        self.maxLine = maxLine
    }

    /// The header of a chunk whose payload `nextFrame` is still waiting for, handed over (the
    /// decoder then forgets it): for a caller that assembles the payload itself.
    public mutating func takePendingChunk() -> ChunkHeader? {
        defer { pendingChunk = nil }
        return pendingChunk
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try nextFrame(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while let frame = try nextFrame(&buffer) {
            context.fireChannelRead(wrapInboundOut(frame))
        }
        if pendingChunk != nil || buffer.readableBytes > 0 {
            // A cut inside a frame: surfaced by the connection as an unexpected close.
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        }
        return .needMoreData
    }

    public mutating func nextFrame(_ buffer: inout ByteBuffer) throws -> ReplyFrame? {
        if let header = pendingChunk {
            guard let payload = buffer.readSlice(length: header.wireLength) else { return nil }
            pendingChunk = nil
            return .chunk(header, payload)
        }
        let view = buffer.readableBytesView
        if scanned > view.count { scanned = 0 }
        guard let lf = view[(view.startIndex + scanned)...].firstIndex(of: 0x0A) else {
            if buffer.readableBytes > maxLine { throw ReplyFramingError("reply line longer than \(maxLine) bytes") }
            scanned = buffer.readableBytes
            return nil
        }
        scanned = 0
        let length = lf - view.startIndex
        if length + 1 > maxLine { throw ReplyFramingError("reply line longer than \(maxLine) bytes") }
        var lineLength = length
        if lineLength > 0 && view[lf - 1] == 0x0D { lineLength -= 1 }
        guard let raw = buffer.getBytes(at: buffer.readerIndex, length: lineLength), validUTF8(raw) else {
            throw ReplyFramingError("reply line is not UTF-8")
        }
        buffer.moveReaderIndex(forwardBy: length + 1)
        let line = String(decoding: raw, as: UTF8.self)
        if line.hasPrefix("CHUNK ") {
            let header: ChunkHeader
            do { header = try ChunkHeader.parse(Substring(line)) } catch { throw ReplyFramingError(error.description) }
            pendingChunk = header
            return try nextFrame(&buffer)
        }
        return .line(line)
    }
}
