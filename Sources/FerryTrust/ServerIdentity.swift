#if canImport(Glibc)
import Glibc
#endif
import Crypto
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOSSL
import SwiftASN1
import X509

/// The server's long-lived identity: a P-256 key and a self-signed certificate for it, kept
/// together in `identity.pem` in the server's state folder (mode 600). The key is made on first
/// start and kept; the certificate is made again from the same key when it is missing, damaged
/// or within 30 days of expiring, so the fingerprint stays the same.
public struct ServerIdentity: Sendable {
    public static let fileName = "identity.pem"
    /// How long a certificate made here is valid.
    static let validity: TimeInterval = 10 * 365 * 86_400
    /// A certificate with less than this left is made again at start.
    static let renewBefore: TimeInterval = 30 * 86_400

    public let fingerprint: Fingerprint
    /// The whole SHA-256 of the public key, which a channel-bound `AUTH` covers.
    public let keyHash: [UInt8]
    /// The certificate, PEM.
    public let certificatePEM: String
    let privateKeyPEM: String
    /// What happened at load: made now, certificate renewed, or loaded as it was.
    public let origin: Origin

    public enum Origin: Sendable, Hashable {
        case created
        case certificateRenewed
        case loaded
    }

    /// Loads the identity from `directory`, making it when there is none. Refuses a file that
    /// others may read or write, or whose key is damaged.
    public static func loadOrCreate(in directory: String, now: Date = Date()) throws(TrustFileError) -> ServerIdentity {
        let path = directory + "/" + fileName
        let advice = "move it away to make a new identity; clients that trusted this server will then see a changed key"
        if let problem = PrivateFile.makeDirectories(directory) {
            throw TrustFileError(path: directory, problem: "cannot create the state folder: \(problem)",
                                 advice: "pass --state-dir with a folder ferry may write, or --plaintext")
        }
        for _ in 0..<2 {
            if let (bytes, mode) = try PrivateFile.read(path, advice: advice) {
                guard mode & 0o077 == 0 else {
                    throw TrustFileError(path: path, problem: "the server's private key is readable or writable by others (mode \(String(mode, radix: 8)))",
                                         advice: "run `chmod 600 \(path)`; if others may have read it, move it away to make a new identity")
                }
                return try load(String(decoding: bytes, as: UTF8.self), path: path, now: now, advice: advice)
            }
            let key = P256.Signing.PrivateKey()
            let identity = try make(key: key, origin: .created, now: now, path: path)
            do throws(TrustFileError) {
                try PrivateFile.write(Array(identity.fileText.utf8), to: path, replacing: false, advice: advice)
                return identity
            } catch where error.problem == "exists" {
                continue  // another server started at the same moment made it: use that one
            }
        }
        throw TrustFileError(path: path, problem: "appeared and vanished while starting", advice: advice)
    }

    private static func load(_ text: String, path: String, now: Date, advice: String) throws(TrustFileError) -> ServerIdentity {
        let key: P256.Signing.PrivateKey
        do {
            guard let block = pemBlock("PRIVATE KEY", in: text) else { throw TrustFileError(path: path, problem: "", advice: "") }
            key = try P256.Signing.PrivateKey(pemRepresentation: block)
        } catch {
            throw TrustFileError(path: path, problem: "the private key is missing or damaged", advice: advice)
        }
        if let block = pemBlock("CERTIFICATE", in: text), let certificate = try? Certificate(pemEncoded: block),
           certificate.publicKey == Certificate.PublicKey(key.publicKey),
           certificate.notValidAfter.timeIntervalSince(now) > renewBefore, certificate.notValidBefore <= now {
            return ServerIdentity(key: key, certificatePEM: block, origin: .loaded)
        }
        let renewed = try make(key: key, origin: .certificateRenewed, now: now, path: path)
        try PrivateFile.write(Array(renewed.fileText.utf8), to: path, replacing: true, advice: advice)
        return renewed
    }

    private static func make(key: P256.Signing.PrivateKey, origin: Origin, now: Date, path: String) throws(TrustFileError) -> ServerIdentity {
        do {
            let name = try DistinguishedName { CommonName("ferry server") }
            let certificate = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
                notValidBefore: now.addingTimeInterval(-86_400), notValidAfter: now.addingTimeInterval(validity),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.serverAuth])
                },
                issuerPrivateKey: .init(key))
            return ServerIdentity(key: key, certificatePEM: try certificate.serializeAsPEM().pemString, origin: origin)
        } catch {
            throw TrustFileError(path: path, problem: "cannot make a certificate: \(error)", advice: "report this as a bug")
        }
    }

    private init(key: P256.Signing.PrivateKey, certificatePEM: String, origin: Origin) {
        let publicKey = Array(key.publicKey.derRepresentation)
        fingerprint = Fingerprint(publicKeyDER: publicKey)
        keyHash = Fingerprint.keyHash(publicKeyDER: publicKey)
        self.certificatePEM = certificatePEM
        privateKeyPEM = key.pemRepresentation
        self.origin = origin
    }

    private var fileText: String { privateKeyPEM + "\n" + certificatePEM + "\n" }

    /// The first `-----BEGIN LABEL-----` … `-----END LABEL-----` block in `text`.
    static func pemBlock(_ label: String, in text: String) -> String? {
        let begin = "-----BEGIN \(label)-----", end = "-----END \(label)-----"
        var block: [Substring]?
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let trimmed = line.hasSuffix("\r") ? line.dropLast() : line
            if trimmed == begin { block = [trimmed]; continue }
            guard block != nil else { continue }
            block?.append(trimmed)
            if trimmed == end { return (block ?? []).joined(separator: "\n") + "\n" }
        }
        return nil
    }

    /// TLS 1.3 only, with this identity's certificate and key.
    public func serverTLSConfiguration() throws -> TLSConfiguration {
        let certificate = try NIOSSLCertificate(bytes: Array(certificatePEM.utf8), format: .pem)
        let key = try NIOSSLPrivateKey(bytes: Array(privateKeyPEM.utf8), format: .pem)
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: [.certificate(certificate)],
                                                                     privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        configuration.applicationProtocols = [FerryTLS.applicationProtocol]
        return configuration
    }
}

/// What both sides agree on for TLS.
public enum FerryTLS {
    /// The ALPN protocol name.
    public static let applicationProtocol = "ferry/1"

}
