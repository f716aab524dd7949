/// The kind of a directory entry, as written in PROTOCOL.md section 5.
public enum EntryType: String, Sendable, Hashable, Codable {
    case file = "f"
    case directory = "d"
    case symlink = "l"
    case other = "o"
}

/// What an entry of type `o` is, as `ls -l` tells it (PROTOCOL.md section 5): sent only to a
/// client that asked with `LIST PATH kinds=yes`, as one extra field after the name.
public enum SpecialKind: UInt8, Sendable, Hashable, CaseIterable {
    case fifo = 0x70       // p
    case socket = 0x73     // s
    case character = 0x63  // c
    case block = 0x62      // b

    /// The letter `ls -l` shows, which is also the wire field.
    public var letter: String { String(UnicodeScalar(rawValue)) }

    /// A word for messages ("FIFO", "socket", ...).
    public var noun: String {
        switch self {
        case .fifo: return "FIFO"
        case .socket: return "socket"
        case .character: return "character device"
        case .block: return "block device"
        }
    }
}

/// One entry of a listing, a stat reply or a manifest.
public struct Entry: Hashable, Sendable {
    public var type: EntryType
    /// Permission bits (`st_mode & 07777`).
    public var mode: UInt32
    public var size: Int64
    public var mtime: Timestamp
    /// A name (in `LIST`) or a path (in `STAT` and manifests).
    public var path: RemotePath
    /// Symlink target bytes exactly as stored.
    public var target: [UInt8]?
    /// SHA-256 hex of a file's content, when known (manifests only).
    public var sha256: String?
    /// What an `o` entry is, when known; written only in `LIST`/`STAT` lines (`kinds=yes`).
    public var special: SpecialKind?

    public init(type: EntryType, mode: UInt32, size: Int64, mtime: Timestamp, path: RemotePath,
                target: [UInt8]? = nil, sha256: String? = nil) {
        self.type = type
        self.mode = mode
        self.size = size
        self.mtime = mtime
        self.path = path
        self.target = target
        self.sha256 = sha256
    }

    /// The identity a client sends back as a validator.
    public var validator: Validator { Validator(size: size, mtime: mtime) }

    /// `type mode size mtime path [target]` (LIST and STAT).
    public var line: String {
        var out: [UInt8] = []
        out.reserveCapacity(64 + path.bytes.count)
        appendLine(to: &out, manifest: false)
        return String(decoding: out, as: UTF8.self)
    }

    /// The manifest form: files carry their SHA-256 (or `-`) after the mtime.
    public var manifestLine: String {
        var out: [UInt8] = []
        out.reserveCapacity(128 + path.bytes.count)
        appendLine(to: &out, manifest: true)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends `line` (or, with `manifest`, `manifestLine`) as UTF-8 bytes, without the LF.
    public func appendLine(to out: inout [UInt8], manifest: Bool) {
        appendLine(to: &out, manifest: manifest, sha256Field: appendSHA256Field)
    }

    /// A manifest line's hash field as `sha256` has it: 64 hex digits, or `-`.
    public func appendSHA256Field(to out: inout [UInt8]) {
        if let sha256 { out.append(contentsOf: sha256.utf8) } else { out.append(0x2D) }
    }

    /// `appendLine(to:manifest:)`, with a file's manifest hash field written by `sha256Field`
    /// (`appendSHA256Field`, or 64 lowercase hex digits): a server that has the digest as bytes
    /// writes it without making a `String` of it per entry.
    public func appendLine(to out: inout [UInt8], manifest: Bool, sha256Field: (inout [UInt8]) -> Void) {
        out.append(type.byte)
        out.append(0x20)
        let m = mode & 0o7777
        out.append(0x30 &+ UInt8(truncatingIfNeeded: m >> 9))
        out.append(0x30 &+ UInt8(truncatingIfNeeded: (m >> 6) & 7))
        out.append(0x30 &+ UInt8(truncatingIfNeeded: (m >> 3) & 7))
        out.append(0x30 &+ UInt8(truncatingIfNeeded: m & 7))
        out.append(0x20)
        if size < 0 { out.append(0x2D) }
        appendDecimal(size.magnitude, to: &out)
        out.append(0x20)
        mtime.appendWire(to: &out)
        out.append(0x20)
        if manifest && type == .file {
            sha256Field(&out)
            out.append(0x20)
        }
        if path.isRoot { out.append(0x2E) } else { PercentEncoding.encode(path.bytes, appendingTo: &out) }
        if let target {
            out.append(0x20)
            PercentEncoding.encode(target, appendingTo: &out)
        }
        if !manifest, type == .other, let special {
            out.append(0x20)
            out.append(special.rawValue)
        }
    }

    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        case malformed(String)
        case badPath(RemotePath.Invalid)

        public var description: String {
            switch self {
            case .malformed(let why): return "malformed entry: \(why)"
            case .badPath(let why): return "refused path: \(why)"
            }
        }
    }

    /// Parses a LIST/STAT entry line.
    public init(line: Substring) throws(ParseError) {
        try self.init(utf8: line, manifest: false)
    }

    /// Parses a manifest entry line.
    public init(manifestLine: Substring) throws(ParseError) {
        try self.init(utf8: manifestLine, manifest: true)
    }

    private init(utf8 line: Substring, manifest: Bool) throws(ParseError) {
        let result: Result<Entry, ParseError> = withUTF8Bytes(line) { b in
            do throws(ParseError) { return .success(try Entry(bytes: b, manifest: manifest)) } catch { return .failure(error) }
        }
        self = try result.get()
    }

    /// Parses a manifest entry line given as UTF-8 bytes (without its LF).
    public init(manifestLineBytes line: UnsafeBufferPointer<UInt8>) throws(ParseError) {
        try self.init(bytes: line, manifest: true)
    }

    /// Parses a LIST/STAT entry line given as UTF-8 bytes (without its LF).
    public init(lineBytes line: UnsafeBufferPointer<UInt8>) throws(ParseError) {
        try self.init(bytes: line, manifest: false)
    }

    /// For error messages: the first characters of a field, as the String parser showed them.
    private static func shown(_ field: UnsafeBufferPointer<UInt8>, _ count: Int) -> Substring {
        String(decoding: field, as: UTF8.self).prefix(count)
    }

    /// The parser: fields are split on single spaces by byte offset and parsed from bytes.
    /// The checks and their order (hence the error reported) are those of PROTOCOL.md
    /// sections 2 and 5: field count and type, mode, size, mtime, hash, path, target, extra
    /// fields, size of a non-file.
    private init(bytes b: UnsafeBufferPointer<UInt8>, manifest: Bool) throws(ParseError) {
        let n = b.count
        var spaces = 0
        for c in b where c == 0x20 { spaces += 1 }
        var cursor = 0
        /// The next field (up to the next space or the end of the line).
        func next() -> UnsafeBufferPointer<UInt8> {
            var end = cursor
            while end < n && b[end] != 0x20 { end += 1 }
            let field = UnsafeBufferPointer(rebasing: b[cursor..<end])
            cursor = end + 1
            return field
        }
        var remaining = spaces + 1
        let typeField = next()
        guard remaining >= 5, typeField.count == 1, let type = EntryType(byte: typeField[0]) else {
            throw .malformed("expected 'type mode size mtime path'")
        }
        if manifest && type == .other { throw .malformed("type 'o' is not allowed in a manifest") }
        let modeField = next()
        guard modeField.count == 4 else { throw .malformed("bad mode '\(Self.shown(modeField, 16))'") }
        var mode: UInt32 = 0
        for c in modeField {
            let d = c &- 0x30
            guard d < 8 else { throw .malformed("bad mode '\(Self.shown(modeField, 16))'") }
            mode = mode << 3 | UInt32(d)
        }
        let sizeField = next()
        guard let size = parseWireNumber(bytes: sizeField) else { throw .malformed("bad size '\(Self.shown(sizeField, 24))'") }
        let mtimeField = next()
        guard let mtime = Timestamp(wireBytes: mtimeField) else { throw .malformed("bad mtime '\(Self.shown(mtimeField, 32))'") }
        remaining -= 4
        var sha: String?
        if manifest && type == .file {
            let h = next()
            remaining -= 1
            if h.count == 1 && h[0] == 0x2D {
                sha = nil
            } else {
                guard isSHA256Hex(bytes: h) else { throw .malformed("bad sha256") }
                sha = String(decoding: h, as: UTF8.self)
            }
        }
        guard remaining > 0 else { throw .malformed("missing path") }
        let pathField = next()
        remaining -= 1
        // An empty field is not the root (`.` is): empty fields are refused (PROTOCOL.md section 2).
        // In a manifest the root check below refuses it (the error manifest readers report).
        guard manifest || !pathField.isEmpty else { throw .malformed("empty path field") }
        let path: RemotePath
        do { path = try RemotePath(wireBytes: pathField) } catch { throw .badPath(error) }
        if manifest && path.isRoot { throw .malformed("the root is not listed in a manifest") }
        var target: [UInt8]?
        if type == .symlink {
            guard remaining > 0, let raw = PercentEncoding.decode(bytes: next()), !raw.isEmpty, !raw.contains(0) else {
                throw .malformed("symlink without a valid target")
            }
            remaining -= 1
            target = raw
        }
        var special: SpecialKind?
        if !manifest && type == .other && remaining == 1 {
            let field = next()
            guard field.count == 1, let kind = SpecialKind(rawValue: field[0]) else {
                throw .malformed("bad kind of special file (expected p, s, c or b)")
            }
            remaining -= 1
            special = kind
        }
        guard remaining == 0 else { throw .malformed("unexpected extra fields") }
        if type != .file && type != .symlink && size != 0 { throw .malformed("non-file with a size") }
        self.init(type: type, mode: mode, size: size, mtime: mtime, path: path, target: target, sha256: sha)
        self.special = special
    }
}

extension EntryType {
    /// The type letter as one byte.
    public var byte: UInt8 {
        switch self {
        case .file: return 0x66
        case .directory: return 0x64
        case .symlink: return 0x6C
        case .other: return 0x6F
        }
    }

    public init?(byte: UInt8) {
        switch byte {
        case 0x66: self = .file
        case 0x64: self = .directory
        case 0x6C: self = .symlink
        case 0x6F: self = .other
        default: return nil
        }
    }
}

/// `isSHA256Hex` over UTF-8 bytes: 64 lowercase hex digits.
public func isSHA256Hex(bytes s: UnsafeBufferPointer<UInt8>) -> Bool { isLowercaseHex(bytes: s, digits: 64) }

public func isSHA256Hex<S: StringProtocol>(_ s: S) -> Bool { isLowercaseHex(s, digits: 64) }

/// Exactly `digits` lowercase hex digits (a SHA-256 has 64, an XXH3-128 32).
public func isLowercaseHex(bytes s: UnsafeBufferPointer<UInt8>, digits: Int) -> Bool {
    guard s.count == digits else { return false }
    for c in s where !((c &- 0x30) < 10 || (c &- 0x61) < 6) { return false }
    return true
}

public func isLowercaseHex<S: StringProtocol>(_ s: S, digits: Int) -> Bool {
    s.utf8.count == digits && withUTF8Bytes(Substring(s)) { isLowercaseHex(bytes: $0, digits: digits) }
}

/// A file's identity as the client last saw it (PROTOCOL.md section 6, `GET`).
public struct Validator: Hashable, Sendable, CustomStringConvertible {
    public var size: Int64
    public var mtime: Timestamp

    public init(size: Int64, mtime: Timestamp) {
        self.size = size
        self.mtime = mtime
    }

    public var description: String { "\(size),\(mtime)" }

    public init?(_ text: Substring) {
        guard let comma = text.utf8.firstIndex(of: 0x2C),
              let size = parseWireNumber(text[..<comma]),
              let mtime = Timestamp(text[text.utf8.index(after: comma)...]) else { return nil }
        self.init(size: size, mtime: mtime)
    }
}
