/// Discovery datagrams (PROTOCOL.md section 9) and server names (section 9.4): pure values,
/// no sockets. Parsing is strict because these datagrams arrive unauthenticated from anyone
/// on the network: whatever is not exactly valid is refused with a reason (for debug logs),
/// and the caller ignores it without a reply.

/// A server's name: 1–63 characters from `A–Z a–z 0–9 - _ .` (PROTOCOL.md section 9.4).
/// The alphabet needs no percent-encoding, so a name reads the same on the wire, in a table
/// and in a shell.
public struct ServerName: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let maxLength = 63
    public static let fallback = "ferry"

    public let rawValue: String

    public enum Invalid: Error, Hashable, Sendable, CustomStringConvertible {
        case empty
        case tooLong(name: String, length: Int)
        /// The first character that is not allowed, and its 1-based position.
        case badCharacter(name: String, character: String, position: Int)

        private static let rule = "a server name is 1–\(ServerName.maxLength) characters from A–Z a–z 0–9 - _ ."

        public var description: String {
            switch self {
            case .empty:
                return "the server name is empty; \(Self.rule)"
            case .tooLong(let name, let length):
                return "the server name '\(name.prefix(80))…' is \(length) characters long; \(Self.rule)"
            case .badCharacter(let name, let character, let position):
                let shown: String
                if character == " " {
                    shown = "a space"
                } else if character.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value != 0x7F }) {
                    shown = "'\(character)'"
                } else {
                    shown = character.unicodeScalars.map { "U+" + String($0.value, radix: 16, uppercase: true) }
                        .joined(separator: " ")
                }
                return "the server name '\(name.prefix(80))' contains \(shown) at position \(position); \(Self.rule) (for example 'studio' or 'nas-2.photos')"
            }
        }
    }

    public init(validating text: String) throws(Invalid) {
        if text.isEmpty { throw .empty }
        var position = 0
        for character in text {
            position += 1
            guard character.unicodeScalars.count == 1, let scalar = character.unicodeScalars.first,
                  scalar.isASCII, Self.isAllowed(UInt8(scalar.value)) else {
                throw .badCharacter(name: text, character: String(character), position: position)
            }
        }
        // Every allowed character is one byte, so the byte count is the length.
        if text.utf8.count > Self.maxLength { throw .tooLong(name: text, length: text.utf8.count) }
        self.rawValue = text
    }

    /// The default name for a host: its name cut down to the allowed characters (at most
    /// 63 of them), or `ferry` when nothing remains.
    public static func defaultName(hostname: String) -> ServerName {
        let kept = hostname.utf8.filter(isAllowed).prefix(maxLength)
        if kept.isEmpty { return ServerName(unchecked: fallback) }
        return ServerName(unchecked: String(decoding: kept, as: UTF8.self))
    }

    @inline(__always)
    public static func isAllowed(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
            return true
        default:
            return false
        }
    }

    private init(unchecked: String) { self.rawValue = unchecked }

    public var description: String { rawValue }

    public static func < (a: ServerName, b: ServerName) -> Bool { a.rawValue < b.rawValue }
}

/// One discovery datagram. `encoded` is always valid input for `parse`, and stays far below
/// `FerryLimits.maxDatagram` (an answer is at most `DiscoveryDatagram.maxAnswerBytes`).
public enum DiscoveryDatagram: Hashable, Sendable {
    /// `FERRY-PROBE 1 nonce=<16 hex>`
    case probe(nonce: String)
    /// `FERRY-HERE 1 nonce=<16 hex> name=<name> id=<32 hex> port=<tcp port> version=<version>`
    case answer(nonce: String, server: DiscoveryAdvert)
    /// `FERRY-ANNOUNCE 1 name=<name> id=<32 hex> port=<tcp port> version=<version>`
    case announce(DiscoveryAdvert)
    /// `FERRY-BYE 1 id=<32 hex>`
    case bye(id: String)

    public static let probeKind = "FERRY-PROBE"
    public static let answerKind = "FERRY-HERE"
    public static let announceKind = "FERRY-ANNOUNCE"
    public static let byeKind = "FERRY-BYE"

    public static let nonceLength = 16
    public static let idLength = 32
    public static let maxVersionLength = 24

    /// The smallest valid probe: `FERRY-PROBE 1 nonce=` and 16 hex digits.
    public static let minProbeBytes = 36
    /// The largest answer this codec can produce (63-character name, 24-character version,
    /// 5-digit port, a fingerprint).
    public static let maxAnswerBytes = 220
    /// Probes are padded (`pad=000…`) to this size, and a server answers only a probe at least
    /// as large as its answer: discovery can never amplify traffic. (Clients before the
    /// fingerprint padded to 200 bytes; a server answers them without its fingerprint.)
    public static let paddedProbeBytes = 220
    /// A fingerprint in discovery: the 32 base32 characters (`A–Z 2–7`) without the dashes.
    public static let fingerprintLength = 32

    /// Why a datagram was refused; only ever logged, never answered.
    public enum Invalid: Error, Hashable, Sendable, CustomStringConvertible {
        case empty
        case tooLarge(Int)
        /// Bytes outside printable ASCII (values must be percent-encoded), or stray spaces.
        case badCharacters
        /// Not a ferry datagram at all.
        case foreign
        case unknownKind(String)
        case unsupportedVersion(String)
        case malformedField(String)
        case duplicateField(String)
        case missingField(String)
        case invalidValue(field: String, why: String)

        public var description: String {
            switch self {
            case .empty: return "empty datagram"
            case .tooLarge(let n): return "datagram of \(n) bytes exceeds \(FerryLimits.maxDatagram)"
            case .badCharacters: return "datagram contains bytes outside printable ASCII or empty fields"
            case .foreign: return "not a ferry datagram"
            case .unknownKind(let k): return "unknown datagram kind '\(k.prefix(32))'"
            case .unsupportedVersion(let v): return "unsupported discovery version '\(v.prefix(16))'"
            case .malformedField(let f): return "malformed field '\(f.prefix(32))'"
            case .duplicateField(let f): return "field '\(f)' appears twice"
            case .missingField(let f): return "missing field '\(f)'"
            case .invalidValue(let field, let why): return "invalid \(field): \(why)"
            }
        }
    }

    // MARK: Encoding

    public var text: String {
        switch self {
        case .probe(let nonce):
            let bare = "\(Self.probeKind) 1 nonce=\(nonce) pad="
            return bare + String(repeating: "0", count: max(1, Self.paddedProbeBytes - bare.utf8.count))
        case .answer(let nonce, let server):
            return "\(Self.answerKind) 1 nonce=\(nonce) \(server.fields)"
        case .announce(let server):
            return "\(Self.announceKind) 1 \(server.fields)"
        case .bye(let id):
            return "\(Self.byeKind) 1 id=\(id)"
        }
    }

    public var encoded: [UInt8] { Array(text.utf8) }

    // MARK: Parsing

    /// Parses one datagram. At most one trailing LF (or CR LF) is accepted. Fields may come
    /// in any order; each known field must appear exactly once; unknown `key=value` fields
    /// are ignored so that later versions can add optional ones.
    public static func parse<Bytes: Collection>(_ datagram: Bytes) throws(Invalid) -> DiscoveryDatagram
    where Bytes.Element == UInt8 {
        if datagram.count > FerryLimits.maxDatagram { throw .tooLarge(datagram.count) }
        var bytes = Array(datagram)
        if bytes.last == 0x0A {
            bytes.removeLast()
            if bytes.last == 0x0D { bytes.removeLast() }
        }
        if bytes.isEmpty { throw .empty }
        if !bytes.starts(with: "FERRY-".utf8) { throw .foreign }
        guard bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { throw .badCharacters }
        let fields = bytes.split(separator: 0x20, omittingEmptySubsequences: false)
        guard fields.allSatisfy({ !$0.isEmpty }) else { throw .badCharacters }
        // Printable ASCII throughout, so decoding as UTF-8 is lossless.
        let words = fields.map { String(decoding: $0, as: UTF8.self) }

        let kind = words[0]
        let required: [String]
        var optional: [String] = []
        switch kind {
        case probeKind: required = ["nonce"]
        case answerKind: (required, optional) = (["nonce", "name", "id", "port", "version"], ["fp"])
        case announceKind: (required, optional) = (["name", "id", "port", "version"], ["fp"])
        case byeKind: required = ["id"]
        default: throw .unknownKind(kind)
        }
        guard words.count >= 2 else { throw .missingField("version") }
        guard words[1] == "1" else { throw .unsupportedVersion(words[1]) }

        var values: [String: Substring] = [:]
        for word in words.dropFirst(2) {
            guard let eq = word.firstIndex(of: "=") else { throw .malformedField(word) }
            let key = word[..<eq], value = word[word.index(after: eq)...]
            guard !key.isEmpty, !value.isEmpty,
                  key.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }) else {
                throw .malformedField(word)
            }
            let name = String(key)
            guard required.contains(name) || optional.contains(name) else { continue }
            guard values[name] == nil else { throw .duplicateField(name) }
            values[name] = value
        }
        for name in required where values[name] == nil { throw .missingField(name) }

        func value(_ name: String) -> Substring? { values[name] }

        switch kind {
        case probeKind:
            return .probe(nonce: try parseHex(value("nonce") ?? "", field: "nonce", length: nonceLength))
        case answerKind:
            let nonce = try parseHex(value("nonce") ?? "", field: "nonce", length: nonceLength)
            return .answer(nonce: nonce, server: try parseAdvert(value))
        case announceKind:
            return .announce(try parseAdvert(value))
        default:
            return .bye(id: try parseHex(value("id") ?? "", field: "id", length: idLength))
        }
    }

    private static func parseAdvert(_ optionalValue: (String) -> Substring?) throws(Invalid) -> DiscoveryAdvert {
        func value(_ name: String) -> Substring { optionalValue(name) ?? "" }
        guard let nameBytes = PercentEncoding.decode(value("name")) else {
            throw .invalidValue(field: "name", why: "bad percent-encoding")
        }
        let name: ServerName
        do {
            name = try ServerName(validating: String(decoding: nameBytes, as: UTF8.self))
        } catch {
            throw .invalidValue(field: "name", why: "not a valid server name")
        }
        let id = try parseHex(value("id"), field: "id", length: idLength)
        let portText = value("port")
        guard portText.count <= 5, portText.first != "0",
              portText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let port = Int(portText), (1...65535).contains(port) else {
            throw .invalidValue(field: "port", why: "not a number from 1 to 65535")
        }
        guard let versionBytes = PercentEncoding.decode(value("version")) else {
            throw .invalidValue(field: "version", why: "bad percent-encoding")
        }
        let version = String(decoding: versionBytes, as: UTF8.self)
        guard DiscoveryAdvert.isValidVersion(version) else {
            throw .invalidValue(field: "version", why: "not 1–\(maxVersionLength) characters from A–Z a–z 0–9 . + - _")
        }
        let fingerprint = optionalValue("fp").map(String.init)
        if let fingerprint, !DiscoveryAdvert.isValidFingerprint(fingerprint) {
            throw .invalidValue(field: "fp", why: "not \(fingerprintLength) characters from A–Z 2–7")
        }
        return DiscoveryAdvert(validatedName: name, id: id, port: port, version: version, fingerprint: fingerprint)
    }

    private static func parseHex(_ text: Substring, field: String, length: Int) throws(Invalid) -> String {
        guard isLowercaseHex(text, length: length) else {
            throw .invalidValue(field: field, why: "not \(length) lowercase hex digits")
        }
        return String(text)
    }

    public static func isLowercaseHex<S: StringProtocol>(_ text: S, length: Int) -> Bool {
        text.utf8.count == length
            && text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// A fresh probe nonce: 8 random bytes as 16 lowercase hex digits.
    public static func makeNonce<G: RandomNumberGenerator>(using generator: inout G) -> String {
        let value = generator.next()
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: nonceLength - hex.count) + hex
    }

    public static func makeNonce() -> String {
        var generator = SystemRandomNumberGenerator()
        return makeNonce(using: &generator)
    }
}

/// What a server says about itself in an answer or announcement.
public struct DiscoveryAdvert: Hashable, Sendable {
    public let name: ServerName
    /// 32 lowercase hex digits: the greeting's `id` (PROTOCOL.md section 3).
    public let id: String
    /// The server's TCP port.
    public let port: Int
    public let version: String
    /// The server's fingerprint (`fp=`, 32 base32 characters without dashes); nil from a server
    /// without TLS or before fingerprints. A hint for people: the TLS handshake checks the key.
    public let fingerprint: String?

    public enum Invalid: Error, Hashable, Sendable, CustomStringConvertible {
        case name(ServerName.Invalid)
        case id(String)
        case port(Int)
        case version(String)
        case fingerprint(String)

        public var description: String {
            switch self {
            case .name(let why): return why.description
            case .id(let id): return "server id '\(id.prefix(40))' is not 32 lowercase hex digits"
            case .port(let port): return "TCP port \(port) is not between 1 and 65535"
            case .version(let v):
                return "version '\(v.prefix(40))' is not 1–\(DiscoveryDatagram.maxVersionLength) characters from A–Z a–z 0–9 . + - _"
            case .fingerprint(let f):
                return "fingerprint '\(f.prefix(40))' is not \(DiscoveryDatagram.fingerprintLength) characters from A–Z 2–7"
            }
        }
    }

    public init(name: String, id: String, port: Int, version: String, fingerprint: String? = nil) throws(Invalid) {
        let validName: ServerName
        do { validName = try ServerName(validating: name) } catch { throw .name(error) }
        guard DiscoveryDatagram.isLowercaseHex(id, length: DiscoveryDatagram.idLength) else { throw .id(id) }
        guard (1...65535).contains(port) else { throw .port(port) }
        guard Self.isValidVersion(version) else { throw .version(version) }
        if let fingerprint, !Self.isValidFingerprint(fingerprint) { throw .fingerprint(fingerprint) }
        self.init(validatedName: validName, id: id, port: port, version: version, fingerprint: fingerprint)
    }

    init(validatedName: ServerName, id: String, port: Int, version: String, fingerprint: String?) {
        self.name = validatedName
        self.id = id
        self.port = port
        self.version = version
        self.fingerprint = fingerprint
    }

    /// The same advert without the fingerprint: the answer to a probe too small for it.
    public var withoutFingerprint: DiscoveryAdvert {
        DiscoveryAdvert(validatedName: name, id: id, port: port, version: version, fingerprint: nil)
    }

    static func isValidFingerprint(_ text: String) -> Bool {
        text.utf8.count == DiscoveryDatagram.fingerprintLength
            && text.utf8.allSatisfy { (0x41...0x5A).contains($0) || (0x32...0x37).contains($0) }
    }

    static func isValidVersion(_ version: String) -> Bool {
        !version.isEmpty && version.utf8.count <= DiscoveryDatagram.maxVersionLength
            && version.utf8.allSatisfy { ServerName.isAllowed($0) || $0 == UInt8(ascii: "+") }
    }

    /// `name=… id=… port=… version=… [fp=…]`; these alphabets need no escaping.
    var fields: String {
        "name=\(name.rawValue) id=\(id) port=\(port) version=\(version)" + (fingerprint.map { " fp=\($0)" } ?? "")
    }
}
