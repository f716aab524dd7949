/// A client request (PROTOCOL.md section 6). Parsing is strict; serialising produces
/// exactly what `parse` accepts.
public enum Request: Hashable, Sendable {
    case auth(hmacHex: String)
    /// `kinds`: the client wants `o` entries to say what they are (`kinds=yes`).
    case list(RemotePath, kinds: Bool = false)
    case stat(RemotePath)
    case get(RemotePath, offset: Int64, length: Int64?, validator: Validator?)
    case hash(RemotePath, offset: Int64, length: Int64, validator: Validator?)
    case blocks(RemotePath, validator: Validator?, blockSize: Int?)
    /// `report`: also describe what the manifest leaves out (`ManifestNote` lines after the
    /// entries). Servers of protocol 1.0 refuse the argument with `ERR 400`.
    case manifest(RemotePath, hashes: Bool, report: Bool = false)
    case quit

    public var verb: String {
        switch self {
        case .auth: return "AUTH"
        case .list: return "LIST"
        case .stat: return "STAT"
        case .get: return "GET"
        case .hash: return "HASH"
        case .blocks: return "BLOCKS"
        case .manifest: return "MANIFEST"
        case .quit: return "QUIT"
        }
    }

    /// The request line without the trailing LF.
    public var line: String {
        switch self {
        case .auth(let hex): return "AUTH \(hex)"
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
        case .manifest(let p, let hashes, let report):
            return "MANIFEST \(p.wire)" + (hashes ? "" : " hashes=no") + (report ? " report=yes" : "")
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

    public static func parse(_ line: Substring) throws(ParseError) -> Request {
        if line.isEmpty { throw .malformed("empty request") }
        for b in line.utf8 where b < 0x20 || b == 0x7F {
            throw .malformed("control character in request")
        }
        let f = line.split(separator: " ", omittingEmptySubsequences: false)
        if f.contains(where: \.isEmpty) { throw .malformed("fields are separated by exactly one space") }
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
        func arity(_ range: ClosedRange<Int>, _ usage: String) throws(ParseError) {
            guard range.contains(args.count) else { throw .malformed("usage: \(usage)") }
        }

        switch verb {
        case "AUTH":
            try arity(1...1, "AUTH HMAC-HEX")
            guard isSHA256Hex(args[1]) else { throw .malformed("AUTH takes 64 lowercase hex digits") }
            return .auth(hmacHex: String(args[1]))
        case "LIST":
            try arity(1...2, "LIST PATH [kinds=yes|no]")
            var kinds = false
            if args.count == 2 {
                switch args[2] {
                case "kinds=yes": kinds = true
                case "kinds=no": kinds = false
                default: throw .malformed("unknown LIST option '\(args[2].prefix(32))'")
                }
            }
            return .list(try path(args[1]), kinds: kinds)
        case "STAT":
            try arity(1...1, "STAT PATH")
            return .stat(try path(args[1]))
        case "GET":
            try arity(3...4, "GET PATH OFFSET LENGTH|* [SIZE,MTIME]")
            let p = try path(args[1])
            let offset = try number(args[2], "offset")
            let length: Int64? = args[3] == "*" ? nil : try number(args[3], "length")
            let v: Validator? = args.count == 4 ? try validator(args[4]) : nil
            return .get(p, offset: offset, length: length, validator: v)
        case "HASH":
            try arity(3...4, "HASH PATH OFFSET LENGTH [SIZE,MTIME]")
            let p = try path(args[1])
            let offset = try number(args[2], "offset")
            let length = try number(args[3], "length")
            let v: Validator? = args.count == 4 ? try validator(args[4]) : nil
            return .hash(p, offset: offset, length: length, validator: v)
        case "BLOCKS":
            try arity(1...3, "BLOCKS PATH [SIZE,MTIME] [BLOCK-SIZE]")
            let p = try path(args[1])
            var v: Validator?
            var bs: Int?
            for a in args.dropFirst() {
                if a.contains(",") {
                    guard v == nil else { throw .malformed("two validators") }
                    v = try validator(a)
                } else {
                    guard bs == nil else { throw .malformed("two block sizes") }
                    let n = try number(a, "block size")
                    guard n >= 4096, n <= 64 << 20, n & (n - 1) == 0 else {
                        throw .malformed("block size must be a power of two between 4096 and 67108864")
                    }
                    bs = Int(n)
                }
            }
            return .blocks(p, validator: v, blockSize: bs)
        case "MANIFEST":
            try arity(1...3, "MANIFEST PATH [hashes=yes|no] [report=yes|no]")
            var hashes: Bool?
            var report: Bool?
            for option in args.dropFirst() {
                switch option {
                case "hashes=yes", "hashes=no":
                    guard hashes == nil else { throw .malformed("hashes= given twice") }
                    hashes = option == "hashes=yes"
                case "report=yes", "report=no":
                    guard report == nil else { throw .malformed("report= given twice") }
                    report = option == "report=yes"
                default: throw .malformed("unknown MANIFEST option '\(option.prefix(32))'")
                }
            }
            return .manifest(try path(args[1]), hashes: hashes ?? true, report: report ?? false)
        case "QUIT":
            try arity(0...0, "QUIT")
            return .quit
        default:
            throw .malformed("unknown request '\(f[0].prefix(32))' (try LIST, STAT, GET, HASH, BLOCKS, MANIFEST, QUIT)")
        }
    }
}
