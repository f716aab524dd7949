/// A path relative to a served root, kept as raw bytes so that names which are not valid UTF-8
/// survive a round trip. Construction validates the rules of PROTOCOL.md section 2.1, so a
/// `RemotePath` value can never be absolute, contain `..`, `.`, NUL or an empty component.
public struct RemotePath: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Raw bytes, components joined by `/`; empty for the root.
    public let bytes: [UInt8]

    public static let root = RemotePath(uncheckedBytes: [])

    private init(uncheckedBytes: [UInt8]) { self.bytes = uncheckedBytes }

    public enum Invalid: Error, Equatable, Sendable, CustomStringConvertible {
        case badEncoding
        case absolute
        case dotDot
        case dot
        case emptyComponent
        case nul
        case tooLong
        case componentTooLong

        public var description: String {
            switch self {
            case .badEncoding: return "bad percent-encoding"
            case .absolute: return "absolute paths are not allowed"
            case .dotDot: return "'..' is not allowed"
            case .dot: return "'.' is only allowed as the whole path"
            case .emptyComponent: return "empty path component"
            case .nul: return "NUL is not allowed"
            case .tooLong: return "path longer than \(FerryLimits.maxPathBytes) bytes"
            case .componentTooLong: return "name longer than \(FerryLimits.maxComponentBytes) bytes"
            }
        }
    }

    /// Validates raw (decoded) bytes. `.` and the empty path both mean the root.
    public init(validating raw: [UInt8]) throws(Invalid) {
        if raw.isEmpty || raw == [0x2E] { self.bytes = []; return }
        if raw.count > FerryLimits.maxPathBytes { throw .tooLong }
        if raw.first == 0x2F { throw .absolute }
        if raw.contains(0) { throw .nul }
        for component in raw.split(separator: 0x2F, omittingEmptySubsequences: false) {
            if component.isEmpty { throw .emptyComponent }
            if component.elementsEqual([0x2E, 0x2E]) { throw .dotDot }
            if component.elementsEqual([0x2E]) { throw .dot }
            if component.count > FerryLimits.maxComponentBytes { throw .componentTooLong }
        }
        self.bytes = raw
    }

    public init(validating text: String) throws(Invalid) {
        try self.init(validating: Array(text.utf8))
    }

    /// Decodes and validates a percent-encoded wire path.
    public init(wire: Substring) throws(Invalid) {
        guard let raw = PercentEncoding.decode(wire) else { throw .badEncoding }
        // An encoded "/" would smuggle a separator inside a name: refuse it.
        if PercentEncoding.containsEncodedSlash(wire) { throw .badEncoding }
        try self.init(validating: raw)
    }

    public var isRoot: Bool { bytes.isEmpty }

    public var components: [ArraySlice<UInt8>] {
        bytes.isEmpty ? [] : bytes.split(separator: 0x2F, omittingEmptySubsequences: false)
    }

    /// The last component's bytes (empty for the root).
    public var name: [UInt8] {
        guard let last = components.last else { return [] }
        return Array(last)
    }

    public var parent: RemotePath? {
        if isRoot { return nil }
        guard let slash = bytes.lastIndex(of: 0x2F) else { return .root }
        return RemotePath(uncheckedBytes: Array(bytes[..<slash]))
    }

    /// Appends one validated name.
    public func appending(name: [UInt8]) throws(Invalid) -> RemotePath {
        if name.isEmpty || name.contains(0x2F) { throw .emptyComponent }
        if name == [0x2E] { throw .dot }
        return try RemotePath(validating: isRoot ? name : bytes + [0x2F] + name)
    }

    /// Appends a relative path.
    public func appending(_ other: RemotePath) -> RemotePath {
        if other.isRoot { return self }
        if isRoot { return other }
        // Both halves are valid, so the join is valid unless it is too long; a too-long
        // join is still refused by anything that validates before use.
        return RemotePath(uncheckedBytes: bytes + [0x2F] + other.bytes)
    }

    /// Whether `self` equals `ancestor` or lies below it.
    public func hasPrefix(_ ancestor: RemotePath) -> Bool {
        if ancestor.isRoot { return true }
        guard bytes.count >= ancestor.bytes.count, bytes.starts(with: ancestor.bytes) else { return false }
        return bytes.count == ancestor.bytes.count || bytes[ancestor.bytes.count] == 0x2F
    }

    /// Percent-encoded form for the wire; `.` for the root.
    public var wire: String { isRoot ? "." : PercentEncoding.encode(bytes) }

    /// For people: the path as UTF-8 with invalid bytes repaired; `.` for the root.
    public var description: String { isRoot ? "." : String(decoding: bytes, as: UTF8.self) }

    /// Manifest order: raw bytes, with `/` sorting before every other byte so that a
    /// directory's contents follow it directly.
    public static func < (a: RemotePath, b: RemotePath) -> Bool {
        let n = min(a.bytes.count, b.bytes.count)
        var i = 0
        while i < n {
            let x = a.bytes[i], y = b.bytes[i]
            if x != y {
                if x == 0x2F { return true }
                if y == 0x2F { return false }
                return x < y
            }
            i += 1
        }
        return a.bytes.count < b.bytes.count
    }
}

public enum PercentEncoding {
    @inline(__always)
    static func needsEscape(_ b: UInt8) -> Bool { b <= 0x20 || b >= 0x7F || b == 0x25 }

    private static let hex: [UInt8] = Array("0123456789ABCDEF".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        if !bytes.contains(where: needsEscape) { return String(decoding: bytes, as: UTF8.self) }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 16)
        for b in bytes {
            if needsEscape(b) {
                out.append(0x25)
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0x0F)])
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func encode(_ text: String) -> String { encode(Array(text.utf8)) }

    /// Decodes; nil for a malformed escape or a raw byte that should have been escaped.
    public static func decode(_ text: Substring) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        var it = text.utf8.makeIterator()
        while let b = it.next() {
            if b == 0x25 {
                guard let h = it.next().flatMap(hexValue), let l = it.next().flatMap(hexValue) else { return nil }
                out.append(h << 4 | l)
            } else if b <= 0x20 || b == 0x7F {
                return nil
            } else {
                out.append(b)
            }
        }
        return out
    }

    public static func decodeString(_ text: Substring) -> String? {
        decode(text).map { String(decoding: $0, as: UTF8.self) }
    }

    static func containsEncodedSlash(_ text: Substring) -> Bool {
        let u = Array(text.utf8)
        var i = 0
        while i + 2 < u.count {
            if u[i] == 0x25 && u[i + 1] == 0x32 && (u[i + 2] == 0x46 || u[i + 2] == 0x66) { return true }
            i += 1
        }
        return false
    }

    @inline(__always)
    static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case 0x30...0x39: return b - 0x30
        case 0x41...0x46: return b - 0x41 + 10
        case 0x61...0x66: return b - 0x61 + 10
        default: return nil
        }
    }
}
