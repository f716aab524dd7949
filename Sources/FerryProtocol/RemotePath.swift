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
        try raw.withUnsafeBufferPointer { b throws(Invalid) in try Self.check(b) }
        self.bytes = raw
    }

    /// The checks of `init(validating:)` on a non-root path, in the same order (so the same
    /// error wins): length, absolute, NUL, then each component in turn.
    @usableFromInline
    static func check(_ b: UnsafeBufferPointer<UInt8>) throws(Invalid) {
        let n = b.count
        if n > FerryLimits.maxPathBytes { throw .tooLong }
        if b[0] == 0x2F { throw .absolute }
        var nul = false
        var componentError: Invalid?
        var start = 0
        var i = 0
        while i <= n {
            if i == n || b[i] == 0x2F {
                if componentError == nil {
                    let length = i - start
                    if length == 0 {
                        componentError = .emptyComponent
                    } else if b[start] == 0x2E && (length == 1 || (length == 2 && b[start + 1] == 0x2E)) {
                        componentError = length == 2 ? .dotDot : .dot
                    } else if length > FerryLimits.maxComponentBytes {
                        componentError = .componentTooLong
                    }
                }
                start = i + 1
            } else if b[i] == 0 {
                nul = true
            }
            i += 1
        }
        if nul { throw .nul }
        if let componentError { throw componentError }
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

    /// Decodes and validates a percent-encoded wire path given as UTF-8 bytes: the same rules
    /// and errors as `init(wire:)`, in one pass and without a String. Raw bytes above 0x7F are
    /// accepted only as valid UTF-8 (a line must be valid UTF-8, PROTOCOL.md section 2).
    public init(wireBytes w: UnsafeBufferPointer<UInt8>) throws(Invalid) {
        guard let raw = PercentEncoding.decode(bytes: w, refusingSlash: true) else { throw .badEncoding }
        if raw.isEmpty || (raw.count == 1 && raw[0] == 0x2E) { self.bytes = []; return }
        try raw.withUnsafeBufferPointer { b throws(Invalid) in try Self.check(b) }
        self.bytes = raw
    }

    public var isRoot: Bool { bytes.isEmpty }

    public var components: [ArraySlice<UInt8>] {
        if bytes.isEmpty { return [] }
        if !bytes.contains(0x2F) { return [bytes[...]] }
        return bytes.split(separator: 0x2F, omittingEmptySubsequences: false)
    }

    /// The last component's bytes (empty for the root).
    public var name: [UInt8] { Array(nameBytes) }

    /// `name` in place, without a copy (for checks made on every entry of a tree).
    public var nameBytes: ArraySlice<UInt8> {
        guard let slash = bytes.lastIndex(of: 0x2F) else { return bytes[...] }
        return bytes[(slash + 1)...]
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
        // `self` is valid, so only the new component and the total length need checking, in
        // the order `init(validating:)` checks them.
        let total = isRoot ? name.count : bytes.count + 1 + name.count
        if total > FerryLimits.maxPathBytes { throw .tooLong }
        if name.contains(0) { throw .nul }
        if name == [0x2E, 0x2E] { throw .dotDot }
        if name.count > FerryLimits.maxComponentBytes { throw .componentTooLong }
        if isRoot { return RemotePath(uncheckedBytes: name) }
        var joined: [UInt8] = []
        joined.reserveCapacity(total)
        joined.append(contentsOf: bytes)
        joined.append(0x2F)
        joined.append(contentsOf: name)
        return RemotePath(uncheckedBytes: joined)
    }

    /// Appends a relative path.
    public func appending(_ other: RemotePath) -> RemotePath {
        if other.isRoot { return self }
        if isRoot { return other }
        // Both halves are valid, so the join is valid unless it is too long; a too-long
        // join is still refused by anything that validates before use.
        var joined: [UInt8] = []
        joined.reserveCapacity(bytes.count + 1 + other.bytes.count)
        joined.append(contentsOf: bytes)
        joined.append(0x2F)
        joined.append(contentsOf: other.bytes)
        return RemotePath(uncheckedBytes: joined)
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
        a.bytes.withUnsafeBufferPointer { x in b.bytes.withUnsafeBufferPointer { y in manifestOrder(x, y) < 0 } }
    }

    /// Compares two raw paths in manifest order: negative, zero or positive.
    @inlinable
    public static func manifestOrder(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Int {
        let n = min(a.count, b.count)
        var i = 0
        while i < n {
            let x = a[i], y = b[i]
            if x != y {
                if x == 0x2F { return -1 }
                if y == 0x2F { return 1 }
                return x < y ? -1 : 1
            }
            i += 1
        }
        return a.count - b.count
    }

    /// Hashes the bytes in one go (the synthesized form feeds the hasher byte by byte).
    public func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    public static func == (a: RemotePath, b: RemotePath) -> Bool { a.bytes == b.bytes }
}

public enum PercentEncoding {
    @inlinable @inline(__always)
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

    /// Appends the percent-encoded form of `bytes` to `out`.
    @inlinable
    public static func encode(_ bytes: [UInt8], appendingTo out: inout [UInt8]) {
        bytes.withUnsafeBufferPointer { b in
            var plain = 0
            while plain < b.count && !needsEscape(b[plain]) { plain += 1 }
            if plain == b.count { out.append(contentsOf: b); return }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: b[0..<plain]))
            for i in plain..<b.count {
                let c = b[i]
                if needsEscape(c) {
                    out.append(0x25)
                    out.append(hexDigit(c >> 4))
                    out.append(hexDigit(c & 0x0F))
                } else {
                    out.append(c)
                }
            }
        }
    }

    @inlinable
    static func hexDigit(_ v: UInt8) -> UInt8 { v < 10 ? 0x30 &+ v : 0x37 &+ v }

    /// Decodes UTF-8 bytes: nil for a malformed escape, a raw byte that should have been
    /// escaped, raw bytes above 0x7F that are not valid UTF-8, or (with `refusingSlash`) an
    /// encoded `/`.
    public static func decode(bytes w: UnsafeBufferPointer<UInt8>, refusingSlash: Bool = false) -> [UInt8]? {
        let n = w.count
        var i = 0
        var high = false
        // Fast path: nothing to unescape.
        while i < n {
            let b = w[i]
            if b == 0x25 || b <= 0x20 || b == 0x7F { break }
            if b >= 0x80 { high = true }
            i += 1
        }
        var out: [UInt8]
        if i == n {
            out = Array(w)
        } else {
            out = []
            out.reserveCapacity(n)
            out.append(contentsOf: UnsafeBufferPointer(rebasing: w[0..<i]))
            while i < n {
                let b = w[i]
                if b == 0x25 {
                    guard i + 2 < n, let h = hexValue(w[i + 1]), let l = hexValue(w[i + 2]) else { return nil }
                    let v = h << 4 | l
                    if refusingSlash && v == 0x2F { return nil }
                    out.append(v)
                    i += 3
                    continue
                } else if b <= 0x20 || b == 0x7F {
                    return nil
                }
                if b >= 0x80 { high = true }
                out.append(b)
                i += 1
            }
        }
        if high && !isValidUTF8(w) { return nil }
        return out
    }

    /// Whether `bytes` is well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF).
    public static func isValidUTF8(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var it = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    /// Decodes; nil for a malformed escape or a raw byte that should have been escaped.
    public static func decode(_ text: Substring) -> [UInt8]? {
        withUTF8Bytes(text) { decode(bytes: $0) }
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

    @inlinable @inline(__always)
    static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case 0x30...0x39: return b - 0x30
        case 0x41...0x46: return b - 0x41 + 10
        case 0x61...0x66: return b - 0x61 + 10
        default: return nil
        }
    }
}
