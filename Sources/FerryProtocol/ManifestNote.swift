/// A line of a manifest asked for with `report=yes` that is not an entry: something below the
/// manifest's root that the server could not or would not describe (PROTOCOL.md section 8.4).
/// Paths are relative to the manifest's root, like the entries'.
public enum ManifestNote: Hashable, Sendable {
    /// A directory of the manifest (or `.`, the root) whose contents could not be read
    /// completely: what is in it is unknown, which is not the same as empty.
    case unreadable(RemotePath)
    /// A FIFO, socket or device: never transferred.
    case special(RemotePath)
    /// An entry whose path would be longer than the protocol allows (section 2.1): the directory
    /// holding it and its name.
    case tooLong(parent: RemotePath, name: [UInt8])

    /// The first byte of a note line; entry lines start with a type letter.
    public static let marker: UInt8 = 0x21  // "!"

    /// The path the note is about, as text (for a too-long entry, the path it would have).
    public var displayPath: String {
        switch self {
        case .unreadable(let p), .special(let p): return p.description
        case .tooLong(let parent, let name):
            let n = String(decoding: name, as: UTF8.self)
            return parent.isRoot ? n : parent.description + "/" + n
        }
    }

    /// The note line without its LF: `! unreadable PATH`, `! special PATH`, `! too-long PARENT NAME`.
    public var line: String { String(decoding: bytes, as: UTF8.self) }

    /// `line` as UTF-8 bytes.
    public var bytes: [UInt8] {
        var out: [UInt8] = [Self.marker, 0x20]
        switch self {
        case .unreadable(let p):
            out += Array("unreadable ".utf8)
            Self.appendPath(p, to: &out)
        case .special(let p):
            out += Array("special ".utf8)
            Self.appendPath(p, to: &out)
        case .tooLong(let parent, let name):
            out += Array("too-long ".utf8)
            Self.appendPath(parent, to: &out)
            out.append(0x20)
            PercentEncoding.encode(name, appendingTo: &out)
        }
        return out
    }

    private static func appendPath(_ p: RemotePath, to out: inout [UInt8]) {
        if p.isRoot { out.append(0x2E) } else { PercentEncoding.encode(p.bytes, appendingTo: &out) }
    }

    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        case malformed(String)
        case badPath(RemotePath.Invalid)

        public var description: String {
            switch self {
            case .malformed(let why): return "malformed note: \(why)"
            case .badPath(let why): return "refused path in a note: \(why)"
            }
        }
    }

    /// Parses a note line (without its LF), checking every path as a client must.
    public init(bytes b: UnsafeBufferPointer<UInt8>) throws(ParseError) {
        let fields = b.split(separator: 0x20, omittingEmptySubsequences: false)
        guard fields.count >= 3, fields[0].elementsEqual([Self.marker]) else {
            throw .malformed("expected '! KIND PATH'")
        }
        func path(_ field: Slice<UnsafeBufferPointer<UInt8>>) throws(ParseError) -> RemotePath {
            do { return try RemotePath(wireBytes: UnsafeBufferPointer(rebasing: field)) } catch { throw .badPath(error) }
        }
        let kind = String(decoding: fields[1], as: UTF8.self)
        switch kind {
        case "unreadable", "special":
            guard fields.count == 3 else { throw .malformed("unexpected extra fields") }
            let p = try path(fields[2])
            if kind == "special" {
                guard !p.isRoot else { throw .malformed("the root is not a special file") }
                self = .special(p)
            } else {
                self = .unreadable(p)  // the root too: a listing of it was incomplete
            }
        case "too-long":
            guard fields.count == 4 else { throw .malformed("expected '! too-long PARENT NAME'") }
            let parent = try path(fields[2])
            guard let name = PercentEncoding.decode(bytes: UnsafeBufferPointer(rebasing: fields[3]), refusingSlash: true),
                  !name.isEmpty, name.count <= FerryLimits.maxComponentBytes, !name.contains(0), !name.contains(0x2F),
                  name != [0x2E], name != [0x2E, 0x2E] else {
                throw .malformed("bad name in a too-long note")
            }
            self = .tooLong(parent: parent, name: name)
        default:
            throw .malformed("unknown note kind '\(kind.prefix(16))'")
        }
    }
}
