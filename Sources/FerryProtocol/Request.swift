/// A client request (PROTOCOL.md section 6). Parsing is strict; serialising produces
/// exactly what `parse` accepts.
public enum Request: Hashable, Sendable {
    case auth(hmacHex: String)
    /// `AUTH HMAC CLIENT-NONCE`: the answer bound to the TLS channel, for a server whose
    /// greeting says `auth=hmac-sha256-tls` (PROTOCOL.md section 3, "Channel-bound AUTH").
    case boundAuth(hmacHex: String, clientNonceHex: String)
    /// `kinds`: the client wants `o` entries to say what they are (`kinds=yes`).
    case list(RemotePath, kinds: Bool = false)
    case stat(RemotePath)
    case get(RemotePath, offset: Int64, length: Int64?, validator: Validator?)
    case hash(RemotePath, offset: Int64, length: Int64, validator: Validator?)
    case blocks(RemotePath, validator: Validator?, blockSize: Int?)
    /// The content-defined chunk map of a file (capability `cdc`).
    case chunks(RemotePath, validator: Validator?)
    /// `report`: also describe what the manifest leaves out (`ManifestNote` lines after the
    /// entries). Servers of protocol 1.0 refuse the argument with `ERR 400`.
    case manifest(RemotePath, hashes: Bool, report: Bool = false)
    /// The capabilities the client will use on this connection (protocol 1.1; sent only to a
    /// server whose greeting had `caps=`, at most once).
    case caps([Capability])
    case quit

    public var verb: String {
        switch self {
        case .auth, .boundAuth: return "AUTH"
        case .list: return "LIST"
        case .stat: return "STAT"
        case .get: return "GET"
        case .hash: return "HASH"
        case .blocks: return "BLOCKS"
        case .chunks: return "CHUNKS"
        case .manifest: return "MANIFEST"
        case .caps: return "CAPS"
        case .quit: return "QUIT"
        }
    }

    /// The request line without the trailing LF.
    public var line: String {
        switch self {
        case .auth(let hex): return "AUTH \(hex)"
        case .boundAuth(let hex, let nonce): return "AUTH \(hex) \(nonce)"
        case .list(let p, let kinds): return "LIST \(p.wire)" + (kinds ? " kinds=yes" : "")
        case .stat(let p): return "STAT \(p.wire)"
        case .get(let p, let offset, let length, let v):
            var s = "GET \(p.wire) \(offset) \(length.map(String.init) ?? "*")"
            if let v { s += " \(v)" }
            return s
        case .hash(let p, let offset, let length, let v):
            var s = "HASH \(p.wire) \(offset) \(length)"
            if let v { s += " \(v)" }
            return s
        case .blocks(let p, let v, let bs):
            var s = "BLOCKS \(p.wire)"
            if let v { s += " \(v)" }
            if let bs { s += " \(bs)" }
            return s
        case .chunks(let p, let v):
            return "CHUNKS \(p.wire)" + (v.map { " \($0)" } ?? "")
        case .manifest(let p, let hashes, let report):
            return "MANIFEST \(p.wire)" + (hashes ? "" : " hashes=no") + (report ? " report=yes" : "")
        case .caps(let list): return "CAPS \(Capability.encode(list))"
        case .quit: return "QUIT"
        }
    }

    /// Why a request line was refused; maps onto a reply code.
    public enum ParseError: Error, Equatable, Sendable {
        case malformed(String)
        case badPath(RemotePath.Invalid)

        public var reply: ErrorReply {
            switch self {
            case .malformed(let why): return ErrorReply(.malformed, why)
            case .badPath(.badEncoding): return ErrorReply(.malformed, "bad percent-encoding in path")
            case .badPath(let why): return ErrorReply(.pathRefused, "path refused: \(why)")
            }
        }
    }

    private static let yesNo = ["yes", "no"]

    /// `GET PATH OFFSET LENGTH|* [SIZE,MTIME]` as clients send it (upper-case verb, nothing
    /// unusual), read straight from the bytes: a server answering many small files parses one
    /// per file, and the general parser below (fields as Substrings, the verb folded into a
    /// String, options in a dictionary) was 5% of its CPU. Nil for every other line, which
    /// the general parser then reads or words the error for; where this returns a request, it
    /// is the one the general parser returns (`QuickGetTests` checks both on mutated inputs).
    static func quickGet(_ b: UnsafeBufferPointer<UInt8>) -> Request? {
        guard b.count > 4, b[0] == 0x47, b[1] == 0x45, b[2] == 0x54, b[3] == 0x20,
              !b.contains(where: { $0 < 0x20 || $0 == 0x7F }),
              let f = singleSpaceFields(UnsafeBufferPointer(rebasing: b[4...]), 3...4),
              let path = try? RemotePath(wireBytes: f[0]),
              let offset = parseWireNumber(bytes: f[1]) else { return nil }
        var length: Int64?
        if !(f[2].count == 1 && f[2][0] == 0x2A) {
            guard let n = parseWireNumber(bytes: f[2]) else { return nil }
            length = n
        }
        var validator: Validator?
        if f.count == 4 {
            let v = f[3]
            // A field with `=` there is an option to the general parser (and none is allowed).
            guard let comma = v.firstIndex(of: 0x2C), !v.contains(0x3D),
                  let size = parseWireNumber(bytes: UnsafeBufferPointer(rebasing: v[..<comma])),
                  let mtime = Timestamp(wireBytes: UnsafeBufferPointer(rebasing: v[(comma + 1)...])) else { return nil }
            validator = Validator(size: size, mtime: mtime)
        }
        return .get(path, offset: offset, length: length, validator: validator)
    }

    public static func parse(_ line: Substring) throws(ParseError) -> Request {
        if let get = withUTF8Bytes(line, quickGet) { return get }
        return try parseFields(line)
    }

    /// The general parser: every request, every error.
    static func parseFields(_ line: Substring) throws(ParseError) -> Request {
        if line.isEmpty { throw .malformed("empty request") }
        for b in line.utf8 where b < 0x20 || b == 0x7F {
            throw .malformed("control character in request")
        }
        let f = line.spaceSeparatedFields()
        if f.contains(where: { $0.isEmpty }) { throw .malformed("fields are separated by exactly one space") }
        // ASCII case folding only: `uppercased()` would turn "lıst" or "ſtat" into verbs.
        let verb = String(decoding: f[0].utf8.map { (0x61...0x7A).contains($0) ? $0 - 0x20 : $0 }, as: UTF8.self)
        let args = f.dropFirst()

        func path(_ s: Substring) throws(ParseError) -> RemotePath {
            do { return try RemotePath(wire: s) } catch { throw .badPath(error) }
        }
        func number(_ s: Substring, _ what: String) throws(ParseError) -> Int64 {
            guard let n = parseWireNumber(s) else { throw .malformed("bad \(what) '\(s.prefix(24))'") }
            return n
        }
        func validator(_ s: Substring) throws(ParseError) -> Validator {
            guard let v = Validator(s) else { throw .malformed("bad validator '\(s.prefix(48))' (expected SIZE,MTIME)") }
            return v
        }
        /// The positional fields (`range` of them; a field with `=` after the first
        /// `range.lowerBound` starts the options) and the options (`key=value`, each key at most
        /// once, from `allowed`: key → permitted values), all options after all positional fields.
        func split(_ range: ClosedRange<Int>, _ usage: String,
                   options allowed: KeyValuePairs<String, [String]> = [:]) throws(ParseError) -> ([Substring], [String: Substring]) {
            var positional: [Substring] = []
            var options: [String: Substring] = [:]
            for field in args {
                guard positional.count >= range.lowerBound, let eq = field.utf8.firstIndex(of: 0x3D) else {
                    guard options.isEmpty, positional.count < range.upperBound else { throw .malformed("usage: \(usage)") }
                    positional.append(field)
                    continue
                }
                let key = String(field[..<eq]), value = field[field.utf8.index(after: eq)...]
                guard !key.isEmpty else { throw .malformed("an option is KEY=VALUE, not '\(field.prefix(32))'") }
                guard let values = allowed.first(where: { $0.key == key })?.value else {
                    throw .malformed("unknown option \(key.prefix(32))")
                }
                guard values.contains(String(value)) else { throw .malformed("bad value for option \(key): '\(value.prefix(32))'") }
                guard options.updateValue(value, forKey: key) == nil else { throw .malformed("option \(key) given twice") }
            }
            guard range.contains(positional.count) else { throw .malformed("usage: \(usage)") }
            return (positional, options)
        }
        switch verb {
        case "AUTH":
            let (a, _) = try split(1...2, "AUTH HMAC-HEX [CLIENT-NONCE-HEX]")
            guard a.allSatisfy(isSHA256Hex) else { throw .malformed("AUTH takes 64 lowercase hex digits (and a client nonce of 64)") }
            return a.count == 2 ? .boundAuth(hmacHex: String(a[0]), clientNonceHex: String(a[1])) : .auth(hmacHex: String(a[0]))
        case "LIST":
            let (a, o) = try split(1...1, "LIST PATH [kinds=yes|no]", options: ["kinds": Self.yesNo])
            return .list(try path(a[0]), kinds: o["kinds"] == "yes")
        case "STAT":
            let (a, _) = try split(1...1, "STAT PATH")
            return .stat(try path(a[0]))
        case "GET":
            let (a, _) = try split(3...4, "GET PATH OFFSET LENGTH|* [SIZE,MTIME]")
            let p = try path(a[0])
            let offset = try number(a[1], "offset")
            let length: Int64? = a[2] == "*" ? nil : try number(a[2], "length")
            let v: Validator? = a.count == 4 ? try validator(a[3]) : nil
            return .get(p, offset: offset, length: length, validator: v)
        case "HASH":
            let (a, _) = try split(3...4, "HASH PATH OFFSET LENGTH [SIZE,MTIME]")
            let p = try path(a[0])
            let offset = try number(a[1], "offset")
            let length = try number(a[2], "length")
            let v: Validator? = a.count == 4 ? try validator(a[3]) : nil
            return .hash(p, offset: offset, length: length, validator: v)
        case "BLOCKS":
            let (a, _) = try split(1...3, "BLOCKS PATH [SIZE,MTIME] [BLOCK-SIZE]")
            let p = try path(a[0])
            var v: Validator?
            var bs: Int?
            for field in a.dropFirst() {
                if field.utf8.contains(0x2C) {
                    guard v == nil else { throw .malformed("two validators") }
                    v = try validator(field)
                } else {
                    guard bs == nil else { throw .malformed("two block sizes") }
                    let n = try number(field, "block size")
                    guard n >= 4096, n <= 64 << 20, n & (n - 1) == 0 else {
                        throw .malformed("block size must be a power of two between 4096 and 67108864")
                    }
                    bs = Int(n)
                }
            }
            return .blocks(p, validator: v, blockSize: bs)
        case "CHUNKS":
            let (a, _) = try split(1...2, "CHUNKS PATH [SIZE,MTIME]")
            return .chunks(try path(a[0]), validator: a.count == 2 ? try validator(a[1]) : nil)
        case "MANIFEST":
            let (a, o) = try split(1...1, "MANIFEST PATH [hashes=yes|no] [report=yes|no]",
                                   options: ["hashes": Self.yesNo, "report": Self.yesNo])
            return .manifest(try path(a[0]), hashes: o["hashes"] != "no", report: o["report"] == "yes")
        case "CAPS":
            let (a, _) = try split(1...1, "CAPS NAME[,NAME...]")
            guard let list = Capability.parseList(a[0]) else {
                throw .malformed("CAPS takes names of a-z, 0-9 and - separated by commas")
            }
            return .caps(list)
        case "QUIT":
            _ = try split(0...0, "QUIT")
            return .quit
        default:
            throw .malformed("unknown request '\(f[0].prefix(32))' (try LIST, STAT, GET, HASH, BLOCKS, CHUNKS, MANIFEST, CAPS, QUIT)")
        }
    }
}
