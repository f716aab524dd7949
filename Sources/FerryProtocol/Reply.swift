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
    /// Sent in cleartext by a TLS server to a client that did not start a TLS handshake.
    case tlsRequired = 426
    case tooMany = 429
    case serverError = 500
    /// Reading the entry failed on the server (EIO and the like): it may work another time.
    case readError = 520
    case shuttingDown = 503
}

/// An `ERR code reason` reply (PROTOCOL.md section 4). The reason is free text for people,
/// except where a code defines fields: `409` carries the file's current identity
/// (`ERR 409 changed SIZE,MTIME`), which a client reads as `current`.
public struct ErrorReply: Error, ReplyLine, CustomStringConvertible {
    /// The numeric code as received; unknown codes are kept so clients can show them.
    public var code: Int
    public var reason: String
    /// `409` only: the file's size and mtime now, when the server knew them (not when the file
    /// changed in the middle of a transfer).
    public var current: Validator?

    public init(_ code: ErrorCode, _ reason: String) {
        self.init(code: code.rawValue, reason: reason)
    }

    public init(code: Int, reason: String) {
        self.code = code
        self.reason = reason
        self.current = nil
    }

    /// `ERR 409 changed SIZE,MTIME`: the validator no longer matches; `now` is the file's identity.
    public static func changed(_ now: Validator) -> ErrorReply {
        var reply = ErrorReply(.changed, "changed \(now)")
        reply.current = now
        return reply
    }

    /// `ERR 409 changed during transfer`: the file changed while its chunks were sent.
    public static let changedDuringTransfer = ErrorReply(.changed, "changed during transfer")

    public var knownCode: ErrorCode? { ErrorCode(rawValue: code) }

    /// The reply line; control characters in the reason are replaced by spaces so it stays one
    /// line, and leading spaces dropped so the reason field is never empty.
    public var line: String {
        let clean = String(reason.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? " " : Character($0) })
            .drop(while: { $0 == " " })
        return "ERR \(code) \(clean.isEmpty ? "error" : clean)"
    }

    public var description: String { "\(code) \(reason)" }

    /// Reads an `ERR` line: `ERR`, a three-digit code from 100 to 599, one space and a
    /// non-empty reason (free text: spaces inside it are its own). For `409`, a reason of
    /// exactly `changed SIZE,MTIME` gives `current`.
    public static func parse(_ line: Substring) throws(MalformedReply) -> ErrorReply {
        guard line.hasPrefix("ERR ") else { throw MalformedReply("not an ERR line", line) }
        let rest = line.dropFirst(4)
        let codeText = rest.prefix(while: { $0 != " " })
        // Exactly three digits, 100-599 (so every code read back writes the same line).
        guard codeText.utf8.count == 3, codeText.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
              let code = Int(codeText), (100...599).contains(code) else { throw MalformedReply("bad ERR code", line) }
        let reason = rest.dropFirst(codeText.count + 1)
        guard rest.dropFirst(codeText.count).first == " ", let first = reason.first, first != " " else {
            throw MalformedReply("ERR without a reason", line)
        }
        var reply = ErrorReply(code: code, reason: String(reason))
        if code == ErrorCode.changed.rawValue, reason.hasPrefix("changed ") {
            reply.current = Validator(reason.dropFirst("changed ".count))
        }
        return reply
    }
}

/// A reply line that breaks its grammar: the connection must be dropped.
public struct MalformedReply: Error, Hashable, Sendable, CustomStringConvertible {
    public let why: String
    /// The start of the offending line, for the message.
    public let line: String

    public init(_ why: String, _ line: Substring) {
        self.why = why
        self.line = String(line.prefix(120))
    }

    public var description: String { "\(why): '\(line)'" }
}

/// A reply status line whose `OK` fields are not read yet: for a reader that does not know
/// which request it answers. Clients read typed replies (`Reply`) instead.
public enum StatusLine: Hashable, Sendable {
    case ok(fields: [Substring])
    case err(ErrorReply)

    public static func parse(_ line: Substring) throws(MalformedReply) -> StatusLine {
        if line == "OK" { return .ok(fields: []) }
        if line.hasPrefix("OK ") {
            return .ok(fields: line.dropFirst(3).spaceSeparatedFields())
        }
        return .err(try ErrorReply.parse(line))
    }
}

/// The server's first line (PROTOCOL.md section 3).
public struct Greeting: ReplyLine {
    public var version: Int
    public var name: String
    public var id: String
    /// The auth nonce, when the server requires a token.
    public var nonce: [UInt8]?
    /// Whether the answer must be bound to the TLS channel (`auth=hmac-sha256-tls`): a TLS
    /// server with a token.
    public var channelBound: Bool
    /// What the server speaks beyond protocol 1.0 (`caps=`); nil for a server that sends no
    /// `caps` field (a 1.0 server), with which a client uses no extension.
    public var capabilities: [Capability]?

    public init(version: Int = FerryDefaults.protocolVersion, name: String, id: String, nonce: [UInt8]? = nil,
                channelBound: Bool = false, capabilities: [Capability]? = nil) {
        self.version = version
        self.name = name
        self.id = id
        self.nonce = nonce
        self.channelBound = nonce != nil && channelBound
        self.capabilities = capabilities
    }

    public var line: String {
        var s = "FERRY \(version) name=\(PercentEncoding.encode(name)) id=\(id)"
        if let nonce {
            s += " auth=\(channelBound ? "hmac-sha256-tls" : "hmac-sha256") nonce=\(Hex.encode(nonce))"
        } else {
            s += " auth=none"
        }
        if let capabilities { s += " caps=\(Capability.encode(capabilities))" }
        return s
    }

    public enum ParseError: Error, Hashable, Sendable {
        case notFerry(String)
        case malformed(String)
        /// The server turned the connection away with an `ERR` line instead (429, 503).
        case refused(ErrorReply)
    }

    public static func parse(_ line: Substring) throws(ParseError) -> Greeting {
        if line.hasPrefix("ERR "), let refusal = try? ErrorReply.parse(line) { throw .refused(refusal) }
        let f = line.split(separator: " ")
        guard f.count >= 2, f[0] == "FERRY" else { throw .notFerry(String(line.prefix(120))) }
        guard let version = parseWireNumber(f[1]).map({ Int($0) }) else { throw .malformed("bad version") }
        var name: String?
        var id: String?
        var auth: Substring?
        var nonce: [UInt8]?
        var capabilities: [Capability]?
        for kv in f.dropFirst(2) {
            guard let eq = kv.firstIndex(of: "=") else { continue }
            let key = kv[..<eq], value = kv[kv.index(after: eq)...]
            switch key {
            case "name": name = PercentEncoding.decodeString(value)
            case "id": id = String(value)
            case "auth": auth = value
            case "nonce": nonce = Hex.decode(value)
            // Lenient like the rest of the greeting: a name that is not well formed is skipped.
            case "caps": capabilities = value.split(separator: ",").filter(Capability.isValidName).map(Capability.init(name:))
            default: continue
            }
        }
        guard let name, let id else { throw .malformed("greeting lacks name or id") }
        switch auth {
        case "none"?: nonce = nil
        case "hmac-sha256"?, "hmac-sha256-tls"?:
            guard let n = nonce, n.count == 32 else { throw .malformed("auth=\(auth ?? "") needs a 32-byte nonce") }
        default: throw .malformed("unknown auth scheme")
        }
        return Greeting(version: version, name: name, id: id, nonce: nonce, channelBound: auth == "hmac-sha256-tls",
                        capabilities: capabilities)
    }
}

extension Substring {
    /// The fields of a protocol line, split at every space byte (empty fields kept, for the
    /// parser to refuse). Byte-wise: a line is ASCII apart from its percent-encoded parts, and
    /// splitting by `Character` runs grapheme breaking over every byte of every reply.
    public func spaceSeparatedFields() -> [Substring] {
        utf8.split(separator: 0x20, omittingEmptySubsequences: false).map { Substring($0) }
    }
}

public enum Hex {
    /// The lowercase digit of a value 0...15 (arithmetic, not a table: a global table costs a
    /// `swift_once` check per digit, and hex runs for every hash of a manifest).
    @inline(__always) @usableFromInline
    static func digit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? 0x30 + nibble : 0x57 + nibble }

    /// Inlinable so each caller gets it specialised for its collection: unspecialised, every
    /// byte went through the generic iterator's witness table (1% of the server's CPU for small
    /// files, where each reply's hashes are written out).
    @inlinable
    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        let count = bytes.count * 2
        return String(unsafeUninitializedCapacity: count) { out in
            var i = 0
            for b in bytes {
                out[i] = digit(b >> 4)
                out[i + 1] = digit(b & 0xF)
                i += 2
            }
            return count
        }
    }

    /// Appends `word` as 16 lowercase hex digits, most significant first.
    public static func append(_ word: UInt64, to out: inout [UInt8]) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 16) { digits in
            for i in 0..<16 { digits[i] = digit(UInt8(truncatingIfNeeded: word >> UInt64(60 - 4 * i)) & 0xF) }
            out.append(contentsOf: digits)
        }
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
