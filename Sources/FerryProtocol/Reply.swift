/// Error codes of PROTOCOL.md section 4.
public enum ErrorCode: Int, Sendable, Hashable, CaseIterable {
    case malformed = 400
    case authRequired = 401
    case authFailed = 403
    case notFound = 404
    case timeout = 408
    case changed = 409
    case tooLarge = 413
    case badRange = 416
    case pathRefused = 421
    case wrongType = 422
    /// The server may not read the entry (EACCES/EPERM): asking again will not help.
    case permissionDenied = 423
    case tooMany = 429
    case serverError = 500
    /// Reading the entry failed on the server (EIO and the like): it may work another time.
    case readError = 520
    case shuttingDown = 503
}

/// An `ERR code reason` reply.
public struct ErrorReply: Error, Hashable, Sendable, CustomStringConvertible {
    /// The numeric code as received; unknown codes are kept so clients can show them.
    public var code: Int
    public var reason: String

    public init(_ code: ErrorCode, _ reason: String) {
        self.code = code.rawValue
        self.reason = reason
    }

    public init(code: Int, reason: String) {
        self.code = code
        self.reason = reason
    }

    public var knownCode: ErrorCode? { ErrorCode(rawValue: code) }

    /// The reply line; control characters in the reason are replaced so it stays one line.
    public var line: String {
        let clean = String(reason.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? " " : Character($0) })
        return "ERR \(code) \(clean.isEmpty ? "error" : clean)"
    }

    public var description: String { "\(code) \(reason)" }
}

/// A parsed reply status line.
public enum StatusLine: Hashable, Sendable {
    case ok(fields: [Substring])
    case err(ErrorReply)

    public struct Malformed: Error, Hashable, Sendable {
        public let line: String
    }

    public static func parse(_ line: Substring) throws(Malformed) -> StatusLine {
        if line == "OK" { return .ok(fields: []) }
        if line.hasPrefix("OK ") {
            return .ok(fields: line.dropFirst(3).split(separator: " ", omittingEmptySubsequences: false))
        }
        if line.hasPrefix("ERR ") {
            let rest = line.dropFirst(4)
            let codeText = rest.prefix(while: { $0 != " " })
            // Exactly three digits, 100-599 (so every code read back writes the same line).
            guard codeText.utf8.count == 3, codeText.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
                  let code = Int(codeText), (100...599).contains(code) else { throw Malformed(line: String(line.prefix(200))) }
            let reason = rest.dropFirst(codeText.count).drop(while: { $0 == " " })
            return .err(ErrorReply(code: code, reason: String(reason)))
        }
        throw Malformed(line: String(line.prefix(200)))
    }
}

/// The server's first line (PROTOCOL.md section 3).
public struct Greeting: Hashable, Sendable {
    public var version: Int
    public var name: String
    public var id: String
    /// The auth nonce, when the server requires a token.
    public var nonce: [UInt8]?

    public init(version: Int = FerryDefaults.protocolVersion, name: String, id: String, nonce: [UInt8]? = nil) {
        self.version = version
        self.name = name
        self.id = id
        self.nonce = nonce
    }

    public var line: String {
        var s = "FERRY \(version) name=\(PercentEncoding.encode(name)) id=\(id)"
        if let nonce { s += " auth=hmac-sha256 nonce=\(Hex.encode(nonce))" } else { s += " auth=none" }
        return s
    }

    public enum ParseError: Error, Hashable, Sendable {
        case notFerry(String)
        case malformed(String)
    }

    public static func parse(_ line: Substring) throws(ParseError) -> Greeting {
        let f = line.split(separator: " ")
        guard f.count >= 2, f[0] == "FERRY" else { throw .notFerry(String(line.prefix(120))) }
        guard let version = parseWireNumber(f[1]).map({ Int($0) }) else { throw .malformed("bad version") }
        var name: String?
        var id: String?
        var auth: Substring?
        var nonce: [UInt8]?
        for kv in f.dropFirst(2) {
            guard let eq = kv.firstIndex(of: "=") else { continue }
            let key = kv[..<eq], value = kv[kv.index(after: eq)...]
            switch key {
            case "name": name = PercentEncoding.decodeString(value)
            case "id": id = String(value)
            case "auth": auth = value
            case "nonce": nonce = Hex.decode(value)
            default: continue
            }
        }
        guard let name, let id else { throw .malformed("greeting lacks name or id") }
        switch auth {
        case "none"?: nonce = nil
        case "hmac-sha256"?:
            guard let n = nonce, n.count == 32 else { throw .malformed("auth=hmac-sha256 needs a 32-byte nonce") }
        default: throw .malformed("unknown auth scheme")
        }
        return Greeting(version: version, name: name, id: id, nonce: nonce)
    }
}

public enum Hex {
    private static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode<S: StringProtocol>(_ text: S) -> [UInt8]? {
        let u = Array(text.utf8)
        guard u.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let h = PercentEncoding.hexValue(u[i]), let l = PercentEncoding.hexValue(u[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }
}
