/// A modification time with nanosecond precision, written `SECONDS.NANOSECONDS` on the wire
/// so that a quick check (size + mtime) compares exactly what the file system stores.
/// The two fields are a `timespec`'s: `seconds` is rounded down (towards the past) and
/// `nanoseconds` (0 through 999,999,999) is added to it, so 100.25 s before the epoch is
/// `seconds: -101, nanoseconds: 750_000_000`, written `-101.750000000` (PROTOCOL.md section 2).
public struct Timestamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var seconds: Int64
    public var nanoseconds: Int32

    public init(seconds: Int64, nanoseconds: Int32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    public static func < (a: Timestamp, b: Timestamp) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }

    public var description: String {
        let ns = String(nanoseconds)
        return "\(seconds)." + String(repeating: "0", count: 9 - ns.count) + ns
    }

    /// Seconds as a floating-point value, for display and JSON.
    public var timeInterval: Double { Double(seconds) + Double(nanoseconds) / 1e9 }

    /// Parses `SECONDS.NANOSECONDS` (see `init?(wireBytes:)`, which holds the rules).
    public init?(_ text: Substring) {
        guard let t = withUTF8Bytes(text, { Timestamp(wireBytes: $0) }) else { return nil }
        self = t
    }

    public init?(_ text: String) { self.init(Substring(text)) }
}

/// Parses a protocol number: unsigned decimal, no sign, at most 19 digits, fits in Int64
/// (see `parseWireNumber(bytes:)`, which holds the rules).
@inlinable
public func parseWireNumber(_ text: Substring) -> Int64? {
    withUTF8Bytes(text) { parseWireNumber(bytes: $0) }
}

/// Runs `body` on the UTF-8 bytes of `text`: in place when they are contiguous (a native
/// string), else on a copy. The String-facing parsers go through it to the byte-level ones.
@inlinable
func withUTF8Bytes<R>(_ text: Substring, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
    if let r = text.utf8.withContiguousStorageIfAvailable(body) { return r }
    return Array(text.utf8).withUnsafeBufferPointer(body)
}

// MARK: - Byte-level forms (manifests: no String, no Character indexing)

extension Timestamp {
    /// Parses `SECONDS.NANOSECONDS` from UTF-8 bytes; the same rules as `init?(_: Substring)`.
    @inlinable
    public init?(wireBytes t: UnsafeBufferPointer<UInt8>) {
        let n = t.count
        var dot = 0
        while dot < n && t[dot] != 0x2E { dot += 1 }
        guard dot < n, n - dot - 1 == 9 else { return nil }
        var ns: Int32 = 0
        for i in (dot + 1)..<n {
            let d = t[i] &- 0x30
            guard d < 10 else { return nil }
            ns = ns &* 10 &+ Int32(d)
        }
        var i = 0
        var negative = false
        if dot > 0 && t[0] == 0x2D { negative = true; i = 1 }
        guard dot - i >= 1, dot - i <= 19 else { return nil }
        var s: Int64 = 0
        while i < dot {
            let d = t[i] &- 0x30
            guard d < 10 else { return nil }
            let (m, o1) = s.multipliedReportingOverflow(by: 10)
            let (a, o2) = negative ? m.subtractingReportingOverflow(Int64(d)) : m.addingReportingOverflow(Int64(d))
            if o1 || o2 { return nil }
            s = a
            i += 1
        }
        // The seconds are `tv_sec`, so `-0` never occurs: -0.5 s is `-1.500000000`. A `-0.5…`
        // would read as +0.5 s, so it is refused rather than silently misread.
        if negative && s == 0 { return nil }
        self.init(seconds: s, nanoseconds: ns)
    }

    /// Appends the wire form (`description`) as UTF-8 bytes.
    @inlinable
    public func appendWire(to out: inout [UInt8]) {
        guard nanoseconds >= 0 && nanoseconds < 1_000_000_000 else {
            out.append(contentsOf: description.utf8)
            return
        }
        if seconds < 0 { out.append(0x2D) }
        appendDecimal(seconds.magnitude, to: &out)
        out.append(0x2E)
        var ns = UInt32(nanoseconds)
        let start = out.count
        for _ in 0..<9 { out.append(0x30) }
        var i = start + 8
        while ns > 0 {
            out[i] = 0x30 &+ UInt8(ns % 10)
            ns /= 10
            i -= 1
        }
    }
}

/// Appends an unsigned decimal number as ASCII digits.
@inlinable
public func appendDecimal(_ value: UInt64, to out: inout [UInt8]) {
    if value < 10 { out.append(0x30 &+ UInt8(value)); return }
    var digits = 0
    var v = value
    while v > 0 { digits += 1; v /= 10 }
    let start = out.count
    for _ in 0..<digits { out.append(0x30) }
    v = value
    var i = start + digits - 1
    while v > 0 {
        out[i] = 0x30 &+ UInt8(v % 10)
        v /= 10
        i -= 1
    }
}

/// `b` cut at single spaces into non-empty fields, as many as `counts` allows; nil for any other
/// shape. For the fast paths that read a usual line straight from its bytes (`Request.quickGet`,
/// `GetHead.quick`): whatever they decline, their general parser reads or words the error for.
func singleSpaceFields(_ b: UnsafeBufferPointer<UInt8>, _ counts: ClosedRange<Int>) -> [UnsafeBufferPointer<UInt8>]? {
    var fields: [UnsafeBufferPointer<UInt8>] = []
    fields.reserveCapacity(counts.upperBound)
    var start = 0
    for i in 0...b.count where i == b.count || b[i] == 0x20 {
        guard i > start, fields.count < counts.upperBound else { return nil }  // an empty field, or one too many
        fields.append(UnsafeBufferPointer(rebasing: b[start..<i]))
        start = i + 1
    }
    return counts.contains(fields.count) ? fields : nil
}

/// `parseWireNumber` over UTF-8 bytes: unsigned decimal, no sign, at most 19 digits, fits in Int64.
@inlinable
public func parseWireNumber(bytes text: UnsafeBufferPointer<UInt8>) -> Int64? {
    guard !text.isEmpty, text.count <= 19 else { return nil }
    var value: Int64 = 0
    for b in text {
        let d = b &- 0x30
        guard d < 10 else { return nil }
        let (m, o1) = value.multipliedReportingOverflow(by: 10)
        let (a, o2) = m.addingReportingOverflow(Int64(d))
        if o1 || o2 { return nil }
        value = a
    }
    return value
}
