/// A modification time with nanosecond precision, written `SECONDS.NANOSECONDS` on the wire
/// so that a quick check (size + mtime) compares exactly what the file system stores.
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

    public init?(_ text: Substring) {
        guard let dot = text.firstIndex(of: ".") else { return nil }
        let secText = text[..<dot]
        let nsText = text[text.index(after: dot)...]
        guard nsText.count == 9, nsText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let ns = Int32(nsText) else { return nil }
        var digits = secText
        if digits.first == "-" { digits = digits.dropFirst() }
        guard !digits.isEmpty, digits.count <= 19, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              let s = Int64(secText) else { return nil }
        self.init(seconds: s, nanoseconds: ns)
    }

    public init?(_ text: String) { self.init(Substring(text)) }
}

/// Parses a protocol number: unsigned decimal, no sign, at most 19 digits, fits in Int64.
@inlinable
public func parseWireNumber(_ text: Substring) -> Int64? {
    guard !text.isEmpty, text.utf8.count <= 19 else { return nil }
    var value: Int64 = 0
    for b in text.utf8 {
        guard b >= 0x30, b <= 0x39 else { return nil }
        let (m, o1) = value.multipliedReportingOverflow(by: 10)
        let (a, o2) = m.addingReportingOverflow(Int64(b - 0x30))
        if o1 || o2 { return nil }
        value = a
    }
    return value
}
