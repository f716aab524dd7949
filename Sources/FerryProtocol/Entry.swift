/// The kind of a directory entry, as written in PROTOCOL.md section 5.
public enum EntryType: String, Sendable, Hashable, Codable {
    case file = "f"
    case directory = "d"
    case symlink = "l"
    case other = "o"
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

    static func octal(_ mode: UInt32) -> String {
        let s = String(mode & 0o7777, radix: 8)
        return String(repeating: "0", count: max(0, 4 - s.count)) + s
    }

    /// `type mode size mtime path [target]` (LIST and STAT).
    public var line: String {
        var s = "\(type.rawValue) \(Entry.octal(mode)) \(size) \(mtime) \(path.wire)"
        if let target { s += " " + PercentEncoding.encode(target) }
        return s
    }

    /// The manifest form: files carry their SHA-256 (or `-`) after the mtime.
    public var manifestLine: String {
        switch type {
        case .file:
            return "f \(Entry.octal(mode)) \(size) \(mtime) \(sha256 ?? "-") \(path.wire)"
        default:
            return line
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
        try self.init(fields: line.split(separator: " ", omittingEmptySubsequences: false), manifest: false)
    }

    /// Parses a manifest entry line.
    public init(manifestLine: Substring) throws(ParseError) {
        try self.init(fields: manifestLine.split(separator: " ", omittingEmptySubsequences: false), manifest: true)
    }

    private init(fields f: [Substring], manifest: Bool) throws(ParseError) {
        guard f.count >= 5, let type = EntryType(rawValue: String(f[0])) else {
            throw .malformed("expected 'type mode size mtime path'")
        }
        if manifest && type == .other { throw .malformed("type 'o' is not allowed in a manifest") }
        guard f[1].utf8.count == 4, f[1].utf8.allSatisfy({ (0x30...0x37).contains($0) }),
              let mode = UInt32(f[1], radix: 8), mode <= 0o7777 else {
            throw .malformed("bad mode '\(f[1].prefix(16))'")
        }
        guard let size = parseWireNumber(f[2]) else { throw .malformed("bad size '\(f[2].prefix(24))'") }
        guard let mtime = Timestamp(f[3]) else { throw .malformed("bad mtime '\(f[3].prefix(32))'") }
        var rest = f[4...]
        var sha: String?
        if manifest && type == .file {
            guard let h = rest.popFirst(), h == "-" || isSHA256Hex(h) else { throw .malformed("bad sha256") }
            sha = h == "-" ? nil : String(h)
        }
        guard let pathField = rest.popFirst() else { throw .malformed("missing path") }
        let path: RemotePath
        do { path = try RemotePath(wire: pathField) } catch { throw .badPath(error) }
        if manifest && path.isRoot { throw .malformed("the root is not listed in a manifest") }
        var target: [UInt8]?
        if type == .symlink {
            guard let t = rest.popFirst(), let raw = PercentEncoding.decode(t), !raw.isEmpty, !raw.contains(0) else {
                throw .malformed("symlink without a valid target")
            }
            target = raw
        }
        guard rest.isEmpty else { throw .malformed("unexpected extra fields") }
        if type != .file && type != .symlink && size != 0 { throw .malformed("non-file with a size") }
        self.init(type: type, mode: mode, size: size, mtime: mtime, path: path, target: target, sha256: sha)
    }
}

public func isSHA256Hex<S: StringProtocol>(_ s: S) -> Bool {
    s.utf8.count == 64 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
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
        guard let comma = text.firstIndex(of: ","),
              let size = parseWireNumber(text[..<comma]),
              let mtime = Timestamp(text[text.index(after: comma)...]) else { return nil }
        self.init(size: size, mtime: mtime)
    }
}
