import Crypto

/// The token answer bound to the TLS channel (PROTOCOL.md section 3, "Channel-bound AUTH").
///
/// swift-nio-ssl has no TLS exporter (RFC 5705/9266) to bind to, so the binding is to what
/// both ends know of this channel without one, in the style of RFC 5929's
/// tls-server-end-point: the SHA-256 of the server's public key as the client saw it in the
/// handshake, and a fresh nonce from each side. The client proves it knows the token with
///
///     HMAC-SHA256(token, "ferry auth client v1" 0x00 ‖ server nonce ‖ client nonce ‖ key hash)
///
/// and the server answers with the same over `"ferry auth server v1"`. A relay that shows the
/// client another key gets an answer over that key, which the real server (hashing its own)
/// refuses; and it cannot make the server's proof for its own key without the token.
public enum TokenBinding {
    static let clientLabel = Array("ferry auth client v1".utf8) + [0]
    static let serverLabel = Array("ferry auth server v1".utf8) + [0]

    /// What the client sends (`AUTH HMAC CLIENT-NONCE`).
    public static func clientProof(token: [UInt8], serverNonce: [UInt8], clientNonce: [UInt8], serverKeyHash: [UInt8]) -> [UInt8] {
        mac(clientLabel, token, serverNonce, clientNonce, serverKeyHash)
    }

    /// What the server answers (`OK auth PROOF`).
    public static func serverProof(token: [UInt8], serverNonce: [UInt8], clientNonce: [UInt8], serverKeyHash: [UInt8]) -> [UInt8] {
        mac(serverLabel, token, serverNonce, clientNonce, serverKeyHash)
    }

    /// 32 fresh random bytes, a client nonce.
    public static func makeNonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// Compares in constant time.
    public static func matches(_ given: [UInt8], _ expected: [UInt8]) -> Bool {
        guard given.count == expected.count else { return false }
        return zip(given, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    private static func mac(_ label: [UInt8], _ token: [UInt8], _ serverNonce: [UInt8], _ clientNonce: [UInt8],
                            _ keyHash: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: label + serverNonce + clientNonce + keyHash, using: SymmetricKey(data: token)))
    }
}

extension Fingerprint {
    /// The whole SHA-256 of a public key (DER SubjectPublicKeyInfo), which channel-bound `AUTH`
    /// covers.
    public static func keyHash(publicKeyDER: [UInt8]) -> [UInt8] {
        Array(SHA256.hash(data: publicKeyDER))
    }
}
