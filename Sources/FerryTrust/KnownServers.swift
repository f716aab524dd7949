/// The servers a client trusts (`$XDG_CONFIG_HOME/ferry/known-servers`, like ssh's
/// known_hosts): one server per line, its fingerprint first, then the name and the address it
/// was met under as hints for finding it again:
///
///     # ferry known servers
///     MFRG-GZDF-MZTW-Q2LK-NNWG-23TP-OBYX-E4ZT name=studio address=192.168.1.20:7446
///
/// Blank lines and lines starting with `#` are kept as they are. A line ferry cannot read
/// makes the whole file an error (it is not guessed around): the person fixes or removes it.
public struct KnownServers: Sendable, Equatable {
    public struct Entry: Sendable, Hashable {
        public var fingerprint: Fingerprint
        public var name: String?
        public var address: String?

        public init(fingerprint: Fingerprint, name: String?, address: String?) {
            self.fingerprint = fingerprint
            self.name = name
            self.address = address
        }

        var line: String {
            var s = fingerprint.description
            if let name { s += " name=\(name)" }
            if let address { s += " address=\(address)" }
            return s
        }
    }

    private enum Line: Sendable, Equatable {
        case entry(Entry)
        case other(String)
    }

    private var lines: [Line]
    public let path: String

    public var entries: [Entry] {
        lines.compactMap { if case .entry(let e) = $0 { return e } else { return nil } }
    }

    /// The file's place: `$XDG_CONFIG_HOME/ferry/known-servers`, else `~/.config/ferry/known-servers`.
    public static func defaultPath(environment: [String: String]) -> String {
        if let xdg = environment["XDG_CONFIG_HOME"], xdg.hasPrefix("/") { return xdg + "/ferry/known-servers" }
        return (environment["HOME"] ?? "/tmp") + "/.config/ferry/known-servers"
    }

    static let header = "# ferry known servers: FINGERPRINT name=NAME address=HOST:PORT"
    static let advice = "fix or remove that line, or move the file away (ferry then asks again about every server)"

    /// Reads the file; a missing file is an empty list.
    public static func load(from path: String) throws(TrustFileError) -> KnownServers {
        guard let (bytes, _) = try PrivateFile.read(path, advice: "check its permissions, or move it away") else {
            return KnownServers(lines: [], path: path)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw TrustFileError(path: path, problem: "not UTF-8 text", advice: advice)
        }
        var lines: [Line] = []
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = raw.drop(while: { $0 == " " || $0 == "\t" })
            if trimmed.isEmpty { continue }
            if trimmed.hasPrefix("#") {
                if raw != Substring(Self.header) { lines.append(.other(String(raw))) }
                continue
            }
            let fields = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let fingerprint = Fingerprint(String(fields[0])) else {
                throw TrustFileError(path: path, problem: "line \(number + 1) does not start with a fingerprint", advice: advice)
            }
            var entry = Entry(fingerprint: fingerprint, name: nil, address: nil)
            for field in fields.dropFirst() {
                if field.hasPrefix("name=") { entry.name = String(field.dropFirst(5)) }
                else if field.hasPrefix("address=") { entry.address = String(field.dropFirst(8)) }
                else { throw TrustFileError(path: path, problem: "line \(number + 1) has an unknown field '\(field.prefix(40))'", advice: advice) }
            }
            lines.append(.entry(entry))
        }
        return KnownServers(lines: lines, path: path)
    }

    private init(lines: [Line], path: String) {
        self.lines = lines
        self.path = path
    }

    /// The entries that name this server: by the name it was asked for (when given by name),
    /// else by its address.
    public func pinned(name: String?, address: String) -> [Entry] {
        if let name {
            let byName = entries.filter { $0.name?.lowercased() == name.lowercased() }
            if !byName.isEmpty { return byName }
        }
        return entries.filter { $0.address == address }
    }

    /// Whether a server asked for as `name` (nil: by address) that presents a key of `sameKey`
    /// (entries with that fingerprint) is that trusted server: yes when it was asked for by
    /// address, or an entry has no name or this name. Returns how it is known ("known as
    /// 'studio'", "known at 10.0.0.2:7446"), nil when the key is known only under other names.
    public static func hintFor(name: String?, sameKey: [Entry]) -> String? {
        let fitting = sameKey.filter { e in name == nil || e.name == nil || e.name?.lowercased() == name?.lowercased() }
        guard let entry = fitting.first else { return nil }
        if let n = entry.name { return "known as '\(n)'" }
        return "known at \(entry.address ?? "another address")"
    }

    /// Remembers `entry`, replacing entries with the same name or address (a server trusted
    /// anew under them). With `keepingOthers`, only an identical line is replaced: the entry is
    /// one more hint for a key already trusted.
    public mutating func trust(_ entry: Entry, keepingOthers: Bool = false) {
        if keepingOthers {
            lines.removeAll { $0 == .entry(entry) }
            lines.append(.entry(entry))
            return
        }
        lines.removeAll {
            guard case .entry(let e) = $0 else { return false }
            return (entry.name != nil && e.name?.lowercased() == entry.name?.lowercased())
                || (entry.address != nil && e.address == entry.address)
        }
        lines.append(.entry(entry))
    }

    /// Forgets the entries with this fingerprint, name or address; returns them.
    public mutating func forget(_ what: String) -> [Entry] {
        let fingerprint = Fingerprint(what)
        let matches: (Entry) -> Bool = { e in
            e.fingerprint == fingerprint || e.name?.lowercased() == what.lowercased() || e.address == what
        }
        let gone = entries.filter(matches)
        lines.removeAll { if case .entry(let e) = $0 { return matches(e) } else { return false } }
        return gone
    }

    /// Writes the list atomically (a temporary file renamed into place), mode 600.
    public func save() throws(TrustFileError) {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        if let problem = PrivateFile.makeDirectories(directory) {
            throw TrustFileError(path: directory, problem: "cannot create the folder: \(problem)", advice: "check its permissions, or set XDG_CONFIG_HOME")
        }
        var text = Self.header + "\n"
        for line in lines {
            switch line {
            case .entry(let e): text += e.line + "\n"
            case .other(let o): text += o + "\n"
            }
        }
        try PrivateFile.write(Array(text.utf8), to: path, replacing: true, advice: "check the folder's permissions and free space")
    }
}
