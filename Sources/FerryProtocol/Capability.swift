/// A named extension of protocol 1 (PROTOCOL.md section 3.1, "protocol 1.1"). A server lists
/// the ones it speaks in its greeting (`caps=`); a client enables the ones it will use with
/// `CAPS`; neither side uses an extension the other did not name. Every later extension (a
/// codec, TLS, a new request, a new block map) is a name here.
public enum Capability: Hashable, Sendable, CustomStringConvertible {
    /// `LIST ... kinds=yes`: `o` entries say what they are.
    case listKinds
    /// `MANIFEST ... report=yes`: the manifest notes what it leaves out.
    case manifestReport
    /// The `zstd` chunk codec.
    case zstd
    /// The `CHUNKS` request: a file's content-defined chunk map.
    case cdc
    /// `GET` trailers carry the XXH3-128 of the reply's chunks (`END <sha256> <xxh128>`).
    case xxh128
    /// A name this build does not know, kept as received (for display; never enabled).
    case unknown(String)

    /// The names this build knows, in the order a server lists them.
    public static let known: [Capability] = [.listKinds, .manifestReport, .zstd, .cdc, .xxh128]

    public init(name: Substring) {
        switch name {
        case "list-kinds": self = .listKinds
        case "manifest-report": self = .manifestReport
        case "zstd": self = .zstd
        case "cdc": self = .cdc
        case "xxh128": self = .xxh128
        default: self = .unknown(String(name))
        }
    }

    public var name: String {
        switch self {
        case .listKinds: return "list-kinds"
        case .manifestReport: return "manifest-report"
        case .zstd: return "zstd"
        case .cdc: return "cdc"
        case .xxh128: return "xxh128"
        case .unknown(let name): return name
        }
    }

    public var description: String { name }

    /// A name is 1 to 32 bytes of `a-z`, `0-9` and `-`.
    public static func isValidName(_ name: Substring) -> Bool {
        (1...32).contains(name.utf8.count)
            && name.utf8.allSatisfy { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2D }
    }

    /// The comma-separated wire form: `list-kinds,manifest-report`.
    public static func encode(_ list: [Capability]) -> String {
        list.map(\.name).joined(separator: ",")
    }

    /// Reads a comma-separated list strictly: nil when a name is empty or has other bytes.
    /// Unknown names come back as `.unknown`; a repeated name is kept once.
    public static func parseList(_ text: Substring) -> [Capability]? {
        var out: [Capability] = []
        for name in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard isValidName(name) else { return nil }
            let capability = Capability(name: name)
            if !out.contains(capability) { out.append(capability) }
        }
        return out
    }

    /// What a connection enables: the server's capabilities that the client asked for, in
    /// the server's order. Names the server does not speak are ignored (a newer client may
    /// ask for more than an older server knows).
    public static func negotiate(server: [Capability], requested: [Capability]) -> [Capability] {
        server.filter { requested.contains($0) }
    }
}
