/// An `--exclude` pattern. `*` matches within one path component, `**` across components,
/// `?` one character, `[abc]`, `[a-z]` and `[!a-z]` character classes. A pattern without a
/// `/` is matched against the entry's name at any depth (`*.tmp`, `node_modules`); a pattern
/// with a `/` against the whole path relative to the synced root (`build/**`, `docs/*.pdf`).
/// Excluding a directory excludes everything below it.
public struct Glob: Hashable, Sendable, CustomStringConvertible {
    public let pattern: String
    private let tokens: [Token]
    private let anchored: Bool

    enum Token: Hashable, Sendable {
        case literal(UInt8)
        case any          // ?
        case star         // *
        case globstar     // **
        case set([ClosedRange<UInt8>], negated: Bool)
    }

    public struct Invalid: Error, Hashable, Sendable, CustomStringConvertible {
        public let pattern: String
        public let why: String
        public var description: String { "bad --exclude pattern '\(pattern)': \(why)" }
    }

    public init(_ pattern: String) throws(Invalid) {
        guard !pattern.isEmpty else { throw Invalid(pattern: pattern, why: "empty pattern") }
        self.pattern = pattern
        var p = Array(pattern.utf8)
        if p.first == 0x2F { p.removeFirst() }  // a leading "/" just anchors at the root
        while p.last == 0x2F { p.removeLast() }  // "dir/" means the directory "dir"
        anchored = p.contains(0x2F) || pattern.hasPrefix("/")
        var out: [Token] = []
        var i = 0
        while i < p.count {
            let c = p[i]
            switch c {
            case 0x2A:  // *
                if i + 1 < p.count && p[i + 1] == 0x2A {
                    out.append(.globstar)
                    i += 2
                    if i < p.count && p[i] == 0x2F { i += 1 }  // "**/" also matches zero directories
                    continue
                }
                out.append(.star)
            case 0x3F: out.append(.any)
            case 0x5B:  // [
                var j = i + 1
                var negated = false
                if j < p.count && (p[j] == 0x21 || p[j] == 0x5E) { negated = true; j += 1 }
                var ranges: [ClosedRange<UInt8>] = []
                var first = true
                while j < p.count && (p[j] != 0x5D || first) {
                    first = false
                    let lo = p[j]
                    if j + 2 < p.count && p[j + 1] == 0x2D && p[j + 2] != 0x5D {
                        let hi = p[j + 2]
                        guard lo <= hi else { throw Invalid(pattern: pattern, why: "reversed range in [...]") }
                        ranges.append(lo...hi)
                        j += 3
                    } else {
                        ranges.append(lo...lo)
                        j += 1
                    }
                }
                guard j < p.count else { throw Invalid(pattern: pattern, why: "unclosed '['") }
                out.append(.set(ranges, negated: negated))
                i = j
            case 0x5C where i + 1 < p.count:  // backslash escapes the next character
                out.append(.literal(p[i + 1]))
                i += 1
            default:
                out.append(.literal(c))
            }
            i += 1
        }
        tokens = out
    }

    public var description: String { pattern }

    /// Whether the path (relative, `/`-separated bytes) is excluded by this pattern itself
    /// (callers exclude descendants of an excluded directory by not descending).
    public func matches(_ path: [UInt8]) -> Bool {
        if anchored { return Self.match(tokens[...], path[...]) }
        let name = path.lastIndex(of: 0x2F).map { path[(path.index(after: $0))...] } ?? path[...]
        return Self.match(tokens[...], name)
    }

    private static func match(_ t: ArraySlice<Token>, _ s: ArraySlice<UInt8>) -> Bool {
        guard let first = t.first else { return s.isEmpty }
        let rest = t.dropFirst()
        switch first {
        case .literal(let c):
            guard s.first == c else { return false }
            return match(rest, s.dropFirst())
        case .any:
            guard let c = s.first, c != 0x2F else { return false }
            return match(rest, s.dropFirst())
        case .set(let ranges, let negated):
            guard let c = s.first, c != 0x2F else { return false }
            guard ranges.contains(where: { $0.contains(c) }) != negated else { return false }
            return match(rest, s.dropFirst())
        case .star:
            var i = s.startIndex
            while true {
                if match(rest, s[i...]) { return true }
                if i == s.endIndex || s[i] == 0x2F { return false }
                i += 1
            }
        case .globstar:
            var i = s.startIndex
            while true {
                if match(rest, s[i...]) { return true }
                if i == s.endIndex { return false }
                i += 1
            }
        }
    }
}

/// A set of exclude patterns.
public struct ExcludeList: Sendable {
    public let globs: [Glob]
    public init(_ globs: [Glob]) { self.globs = globs }
    public func excludes(_ path: [UInt8]) -> Bool { globs.contains { $0.matches(path) } }
}
