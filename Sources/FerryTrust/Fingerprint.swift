import Crypto
import FerryProtocol

/// A server's identity: the first 160 bits of the SHA-256 of its public key (the DER
/// SubjectPublicKeyInfo), shown as 32 base32 letters and digits in groups of four,
/// `MFRG-GZDF-MZTW-Q2LK-NNWG-23TP-OBYX-E4ZT`, so a person can read it aloud and compare it.
/// The key, not the certificate, is hashed: a server that renews its certificate keeps its
/// fingerprint. 160 bits leave a forger 2^160 tries to find another key with the same one.
public struct Fingerprint: Hashable, Sendable, CustomStringConvertible {
    /// The 20 bytes.
    public let bytes: [UInt8]

    static let byteCount = 20
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    /// The fingerprint of a public key given as DER SubjectPublicKeyInfo.
    public init(publicKeyDER: [UInt8]) {
        bytes = Array(SHA256.hash(data: publicKeyDER).prefix(Self.byteCount))
    }

    /// Reads a fingerprint as a person types it: the grouped form in any case, with or without
    /// the dashes (spaces and colons are ignored too), or the 40 hexadecimal digits that
    /// `openssl dgst -sha256` prints first. Nil when it is neither.
    public init?(_ text: String) {
        let compact = text.uppercased().utf8.filter { $0 != UInt8(ascii: "-") && $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: ":") }
        if compact.count == 2 * Self.byteCount, let hex = Hex.decode(String(decoding: compact, as: UTF8.self).lowercased()) {
            bytes = hex
            return
        }
        guard compact.count == Self.byteCount * 8 / 5 else { return nil }
        var out = [UInt8](), buffer = 0, bits = 0
        for c in compact {
            guard let value = Self.alphabet.firstIndex(of: c) else { return nil }
            buffer = buffer << 5 | value
            bits += 5
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> bits))
                buffer &= (1 << bits) - 1
            }
        }
        bytes = out
    }

    /// The grouped base32 form.
    public var description: String {
        var letters = [UInt8](), buffer = 0, bits = 0
        for b in bytes {
            buffer = buffer << 8 | Int(b)
            bits += 8
            while bits >= 5 {
                bits -= 5
                letters.append(Self.alphabet[(buffer >> bits) & 31])
            }
            buffer &= (1 << bits) - 1
        }
        var grouped = [UInt8]()
        for (i, c) in letters.enumerated() {
            if i > 0 && i % 4 == 0 { grouped.append(UInt8(ascii: "-")) }
            grouped.append(c)
        }
        return String(decoding: grouped, as: UTF8.self)
    }

    /// The grouped form without its dashes (discovery datagrams carry this).
    public var compact: String { String(description.filter { $0 != "-" }) }

    /// The same 20 bytes in hexadecimal: the start of what
    /// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256` prints.
    public var hex: String { Hex.encode(bytes) }
}
