/// A line a server sends, as a value: `line` is its one encoder, and each type has its one
/// parser. The server writes replies only through these values and the client reads them only
/// through them (PROTOCOL.md sections 3–7).
public protocol ReplyLine: Hashable, Sendable {
    /// The line without its LF.
    var line: String { get }
}

/// The `OK` status line that answers one kind of request.
public protocol OKReply: ReplyLine {
    /// What follows `OK ` (nil for a bare `OK`).
    var detail: String? { get }
    /// Reads what follows `OK ` (nil for a bare `OK`); throws when it breaks the request's
    /// grammar, which includes every empty field.
    init(detail: Substring?) throws(MalformedReply)
}

extension OKReply {
    public var line: String { detail.map { "OK \($0)" } ?? "OK" }
}

/// The status line of a reply: the request's `OK`, or an `ERR`.
public enum Reply<Body: OKReply>: Hashable, Sendable {
    case ok(Body)
    case err(ErrorReply)

    public static func parse(_ line: Substring) throws(MalformedReply) -> Reply<Body> {
        if line == "OK" { return .ok(try Body(detail: nil)) }
        if line.hasPrefix("OK ") { return .ok(try Body(detail: line.dropFirst(3))) }
        if line.hasPrefix("ERR ") { return .err(try ErrorReply.parse(line)) }
        throw MalformedReply("expected OK or ERR", line)
    }
}

/// The fields of `detail`, split on single spaces; exactly `count` of them, none empty.
private func fields(_ detail: Substring?, _ count: Int, _ what: String) throws(MalformedReply) -> [Substring] {
    guard let detail else { throw MalformedReply("\(what) without fields", "OK") }
    let f = detail.spaceSeparatedFields()
    guard f.count == count, !f.contains(where: \.isEmpty) else {
        throw MalformedReply("\(what) needs \(count) field(s) separated by single spaces", detail)
    }
    return f
}

private func parseCount(_ field: Substring, max: Int, _ what: String) throws(MalformedReply) -> Int {
    guard let n = parseWireNumber(field), n <= Int64(max) else { throw MalformedReply("bad \(what) count", field) }
    return Int(n)
}

private func parseSHA256(_ field: Substring, _ what: String) throws(MalformedReply) -> String {
    guard isSHA256Hex(field) else { throw MalformedReply("\(what) is not a SHA-256", field) }
    return String(field)
}

/// `OK <count>` before a `LIST`'s entry lines (`Entry`, one per line).
public struct ListHead: OKReply {
    public var count: Int
    public init(count: Int) { self.count = count }
    public var detail: String? { "\(count)" }
    public init(detail: Substring?) throws(MalformedReply) {
        count = try parseCount(try fields(detail, 1, "LIST reply")[0], max: FerryLimits.maxListEntries, "entry")
    }
}

/// `OK <entry>`, the answer to `STAT`.
public struct StatReply: OKReply {
    public var entry: Entry
    public init(entry: Entry) { self.entry = entry }
    public var detail: String? { entry.line }
    public init(detail: Substring?) throws(MalformedReply) {
        guard let detail else { throw MalformedReply("STAT reply without an entry", "OK") }
        do { entry = try Entry(line: detail) } catch { throw MalformedReply("bad STAT entry (\(error))", detail) }
    }
}

/// `OK <size> <mtime> <sha256|->`, the head of a `GET` reply (its chunk stream follows).
public struct GetHead: OKReply {
    public var size: Int64
    public var mtime: Timestamp
    /// The whole file's SHA-256 when the server already knew it (`-` on the wire otherwise).
    public var sha256: String?

    public init(size: Int64, mtime: Timestamp, sha256: String?) {
        self.size = size
        self.mtime = mtime
        self.sha256 = sha256
    }

    public var detail: String? { "\(size) \(mtime) \(sha256 ?? "-")" }

    public init(detail: Substring?) throws(MalformedReply) {
        if let detail, let quick = withUTF8Bytes(detail, Self.quick) {
            self = quick
            return
        }
        let f = try fields(detail, 3, "GET reply")
        guard let size = parseWireNumber(f[0]), let mtime = Timestamp(f[1]) else { throw MalformedReply("bad GET size or mtime", f[0]) }
        self.init(size: size, mtime: mtime, sha256: f[2] == "-" ? nil : try parseSHA256(f[2], "GET's hash field"))
    }

    /// `SIZE MTIME SHA256|-` read straight from the bytes: a client fetching many small files
    /// reads one per file, and splitting it into Substrings first was 2-3% of its CPU. Nil for
    /// anything else, which the fields above then read or word the error for; where this
    /// returns a head, it is the one they return (`QuickGetTests` checks both).
    static func quick(_ b: UnsafeBufferPointer<UInt8>) -> GetHead? {
        guard let f = singleSpaceFields(b, 3...3), let size = parseWireNumber(bytes: f[0]),
              let mtime = Timestamp(wireBytes: f[1]) else { return nil }
        let hash = f[2]
        if hash.count == 1 && hash[0] == 0x2D { return GetHead(size: size, mtime: mtime, sha256: nil) }
        guard isSHA256Hex(bytes: hash) else { return nil }
        return GetHead(size: size, mtime: mtime, sha256: String(decoding: hash, as: UTF8.self))
    }
}

/// `OK <sha256>`, the answer to `HASH`.
public struct HashReply: OKReply {
    public var sha256: String
    public init(sha256: String) { self.sha256 = sha256 }
    public var detail: String? { sha256 }
    public init(detail: Substring?) throws(MalformedReply) {
        sha256 = try parseSHA256(try fields(detail, 1, "HASH reply")[0], "HASH reply")
    }
}

/// `OK <size> <mtime> <block-size> <count>`, the head of a `BLOCKS` reply; `count` lines of one
/// SHA-256 each follow (`BlocksHead.hashLine`, `parseHashLine`).
public struct BlocksHead: OKReply {
    public var size: Int64
    public var mtime: Timestamp
    public var blockSize: Int
    public var count: Int

    public init(size: Int64, mtime: Timestamp, blockSize: Int, count: Int) {
        self.size = size
        self.mtime = mtime
        self.blockSize = blockSize
        self.count = count
    }

    public var detail: String? { "\(size) \(mtime) \(blockSize) \(count)" }

    /// Also checks what the numbers must agree on: the block size's range and a count that
    /// covers the size exactly.
    public init(detail: Substring?) throws(MalformedReply) {
        let f = try fields(detail, 4, "BLOCKS reply")
        guard let size = parseWireNumber(f[0]), let mtime = Timestamp(f[1]),
              let bs = parseWireNumber(f[2]), bs >= 4096, bs <= 64 << 20 else {
            throw MalformedReply("bad BLOCKS size, mtime or block size", detail ?? "")
        }
        let count = try parseCount(f[3], max: FerryLimits.maxBlockCount, "block")
        guard Int64(count) == (size + bs - 1) / bs else { throw MalformedReply("block count does not cover the size", detail ?? "") }
        self.init(size: size, mtime: mtime, blockSize: Int(bs), count: count)
    }

    /// One block's line: its SHA-256.
    public static func hashLine(_ sha256: String) -> String { sha256 }

    public static func parseHashLine(_ line: Substring) throws(MalformedReply) -> String {
        try parseSHA256(line, "block hash line")
    }
}

/// `OK <count>`, the head of a `MANIFEST` reply: the number of entries (not of note lines).
public struct ManifestHead: OKReply {
    public var count: Int
    public init(count: Int) { self.count = count }
    public var detail: String? { "\(count)" }
    public init(detail: Substring?) throws(MalformedReply) {
        count = try parseCount(try fields(detail, 1, "MANIFEST reply")[0], max: FerryLimits.maxManifestEntries, "entry")
    }
}

/// `OK auth`, the answer to a good `AUTH` (and to any `AUTH` on an open server); to a
/// channel-bound `AUTH`, `OK auth PROOF`, the server's own proof that it knows the token.
public struct AuthOK: OKReply {
    /// The server's proof (64 lowercase hex digits), after a channel-bound `AUTH` only.
    public var proofHex: String?

    public init(proofHex: String? = nil) {
        self.proofHex = proofHex
    }

    public var detail: String? { proofHex.map { "auth \($0)" } ?? "auth" }

    public init(detail: Substring?) throws(MalformedReply) {
        let f = detail?.spaceSeparatedFields() ?? []
        guard f.first == "auth", f.count <= 2 else { throw MalformedReply("expected OK auth", detail ?? "OK") }
        if f.count == 2 {
            guard isSHA256Hex(f[1]) else { throw MalformedReply("the proof after OK auth is not 64 lowercase hex digits", detail ?? "OK") }
            proofHex = String(f[1])
        }
    }
}

/// `OK bye`, the answer to `QUIT`.
public struct QuitOK: OKReply {
    public init() {}
    public var detail: String? { "bye" }
    public init(detail: Substring?) throws(MalformedReply) {
        guard detail == "bye" else { throw MalformedReply("expected OK bye", detail ?? "OK") }
    }
}

/// `OK <name>,<name>,…`, the answer to `CAPS`: what this connection now uses, in the server's
/// order. A bare `OK` enables nothing.
public struct CapsReply: OKReply {
    public var enabled: [Capability]
    public init(enabled: [Capability]) { self.enabled = enabled }
    public var detail: String? { enabled.isEmpty ? nil : Capability.encode(enabled) }
    public init(detail: Substring?) throws(MalformedReply) {
        guard let detail else {
            enabled = []
            return
        }
        guard let list = Capability.parseList(detail) else { throw MalformedReply("bad capability list", detail) }
        enabled = list
    }
}

/// `END <sha256> [<xxh128>]`, the trailer that ends a chunk stream. `xxh128`, the XXH3-128 of
/// the reply's own chunks, comes only in `GET` replies on a connection that enabled the
/// capability `xxh128` (PROTOCOL.md section 7); whether it may or must be there is the
/// reader's to check, since it depends on the request and the connection.
public struct Trailer: ReplyLine {
    public var sha256: String
    public var xxh128: String?
    public init(sha256: String, xxh128: String? = nil) {
        self.sha256 = sha256
        self.xxh128 = xxh128
    }
    public var line: String { xxh128.map { "END \(sha256) \($0)" } ?? "END \(sha256)" }
    public static func parse(_ line: Substring) throws(MalformedReply) -> Trailer {
        guard line.hasPrefix("END ") else { throw MalformedReply("not an END line", line) }
        let rest = line.dropFirst(4)
        // Split at the first space by hand (one per file on the client): what follows it must be
        // exactly one XXH3-128, so a third field or a doubled space fails that check.
        guard let space = rest.utf8.firstIndex(of: 0x20) else { return Trailer(sha256: try parseSHA256(rest, "END")) }
        let xxh = rest[rest.utf8.index(after: space)...]
        guard isLowercaseHex(xxh, digits: 32) else { throw MalformedReply("END's second field is not an XXH3-128", xxh) }
        return Trailer(sha256: try parseSHA256(rest[..<space], "END"), xxh128: String(xxh))
    }
}

/// A line inside a chunk stream other than a chunk header (chunk headers are framed with their
/// payload, `ChunkHeader`): the trailer, or an `ERR` that ends the reply early.
public enum StreamLine: Hashable, Sendable {
    case end(Trailer)
    case err(ErrorReply)

    public static func parse(_ line: Substring) throws(MalformedReply) -> StreamLine {
        if line.hasPrefix("END ") { return .end(try Trailer.parse(line)) }
        if line.hasPrefix("ERR ") { return .err(try ErrorReply.parse(line)) }
        throw MalformedReply("expected CHUNK, END or ERR", line)
    }
}

extension ChunkHeader: ReplyLine {}
