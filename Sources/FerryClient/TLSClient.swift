#if canImport(Glibc)
import Glibc
#endif
import FerryTrust
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS

/// How a connection is protected.
public enum ClientSecurity: Sendable, Hashable {
    /// Cleartext, only when the person asked for it (`--plaintext`); never chosen by ferry itself.
    case plaintext
    /// TLS 1.3. With `expect`, the server's key must have exactly that fingerprint; without,
    /// any key is accepted and the caller decides from `FerryConnection.serverFingerprint`
    /// (first contact, or a server that proves it knows the token).
    case tls(expect: Fingerprint?)
}

/// Why the TLS side of a connection failed, worded for a person.
public enum SecurityProblem: Sendable, Hashable, CustomStringConvertible {
    /// The server greeted in cleartext (it runs with `--plaintext`).
    case serverSpeaksCleartext(firstLine: String)
    /// The server's key is not the one expected.
    case unexpectedKey(expected: Fingerprint, presented: Fingerprint)
    case expiredCertificate(presented: Fingerprint)
    case badCertificate(String)
    case handshakeFailed(String)
    case handshakeTimeout(TimeAmount)
    /// With a token and no pinned key, the server did not prove that it knows the token.
    case noTokenProof(String)

    public var description: String {
        switch self {
        case .serverSpeaksCleartext(let line):
            return "the server speaks cleartext (it said '\(line.prefix(60))'); ferry never falls back to cleartext on its own: "
                + "if the network is trusted, pass --plaintext (the server must run with --plaintext too), or ask for the server to run without it"
        case .unexpectedKey(let expected, let presented):
            return "WARNING: the server's key is not the one ferry trusts for it — expected \(expected), it presented \(presented). "
                + "Someone may be intercepting the connection, or the server has a new identity (its state folder was lost). "
                + "Nothing was sent. Compare \(presented) with what the server prints (`ferry serve DIR --show-fingerprint`); "
                + "only if it is right, run `ferry forget \(expected)` and connect again, or pass --fingerprint \(presented)"
        case .expiredCertificate(let presented):
            return "the server's certificate (key \(presented)) has expired; restarting `ferry serve` renews it with the same key"
        case .badCertificate(let why):
            return "the server sent a certificate ferry cannot use (\(why))"
        case .handshakeFailed(let why):
            return "the TLS handshake failed (\(why))"
        case .handshakeTimeout(let limit):
            return "the TLS handshake did not finish within \(limit.nanoseconds / 1_000_000) ms"
        case .noTokenProof(let why):
            return "the server did not prove that it knows the token (\(why)); it may be an impostor, so nothing was asked of it"
        }
    }
}

/// What the certificate check saw on one connection: the server's fingerprint, and why it was
/// refused, if it was.
final class ServerKeyCheck: Sendable {
    private struct Seen {
        var fingerprint: Fingerprint?
        var keyHash: [UInt8]?
        var problem: SecurityProblem?
    }
    private let seen = NIOLockedValueBox(Seen())
    let expected: Fingerprint?

    init(expected: Fingerprint?) {
        self.expected = expected
    }

    var fingerprint: Fingerprint? { seen.withLockedValue { $0.fingerprint } }
    /// The whole SHA-256 of the server's public key (what a channel-bound `AUTH` covers).
    var keyHash: [UInt8]? { seen.withLockedValue { $0.keyHash } }
    var problem: SecurityProblem? { seen.withLockedValue { $0.problem } }

    func record(_ problem: SecurityProblem) {
        seen.withLockedValue { if $0.problem == nil { $0.problem = problem } }
    }

    /// The custom verification: the leaf's public key must be the expected one (when one is),
    /// and the certificate must not have expired. Chains and names play no part: the key is
    /// the identity.
    func verify(_ certificates: [NIOSSLCertificate], _ promise: EventLoopPromise<NIOSSLVerificationResult>) {
        guard let leaf = certificates.first, let publicKey = try? leaf.extractPublicKey().toSPKIBytes() else {
            record(.badCertificate(certificates.isEmpty ? "no certificate" : "no readable public key"))
            promise.succeed(.failed)
            return
        }
        let presented = Fingerprint(publicKeyDER: publicKey)
        seen.withLockedValue {
            $0.fingerprint = presented
            $0.keyHash = Fingerprint.keyHash(publicKeyDER: publicKey)
        }
        if let expected, expected != presented {
            record(.unexpectedKey(expected: expected, presented: presented))
            promise.succeed(.failed)
        } else if leaf.notValidAfter < time(nil) {
            record(.expiredCertificate(presented: presented))
            promise.succeed(.failed)
        } else {
            promise.succeed(.certificateVerified)
        }
    }
}

enum ClientTLS {
    /// One context for the process: TLS 1.3 only, ALPN `ferry/1`, no trust store (the custom
    /// verification decides).
    static let context: Result<NIOSSLContext, Error> = Result {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        configuration.certificateVerification = .noHostnameVerification
        configuration.trustRoots = .certificates([])
        configuration.applicationProtocols = [FerryTLS.applicationProtocol]
        return try NIOSSLContext(configuration: configuration)
    }
}

/// The first handler of a client's TLS connection, in front of the `NIOSSLClientHandler`:
/// - if the server's first bytes are not a TLS record but a cleartext line (a `--plaintext`
///   server's greeting, or its `ERR`), the connection fails with `serverSpeaksCleartext`
///   instead of a TLS alert;
/// - a handshake not completed within `limit` of connecting fails with `handshakeTimeout`.
final class ClientTLSGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let limit: TimeAmount
    private let check: ServerKeyCheck
    private var decided = false
    private var cleartext: ByteBuffer?
    private var timer: Scheduled<Void>?

    init(limit: TimeAmount, check: ServerKeyCheck) {
        self.limit = limit
        self.check = check
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startClock(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        startClock(context)
        context.fireChannelActive()
    }

    private func startClock(_ context: ChannelHandlerContext) {
        guard timer == nil else { return }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: limit) { [check, limit] in
            check.record(.handshakeTimeout(limit))
            loopBound.value.fireErrorCaught(ClientTLSFailure())
            loopBound.value.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if decided && cleartext == nil {
            context.fireChannelRead(data)
            return
        }
        var bytes = unwrapInboundIn(data)
        if !decided {
            decided = true
            // TLS records start with a content type of 20-23.
            if let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self), (0x14...0x17).contains(first) {
                context.fireChannelRead(data)
                return
            }
            cleartext = context.channel.allocator.buffer(capacity: 256)
        }
        cleartext?.writeBuffer(&bytes)
        if let text = cleartext, text.readableBytesView.contains(0x0A) || text.readableBytes >= 200 {
            report(context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        if cleartext != nil { report(context) }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted? = event as? TLSUserEvent {
            timer?.cancel()
            timer = nil
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func report(_ context: ChannelHandlerContext) {
        guard let text = cleartext else { return }
        cleartext = nil
        let line = String(decoding: text.readableBytesView.prefix(while: { $0 != 0x0A && $0 != 0x0D }), as: UTF8.self)
        check.record(.serverSpeaksCleartext(firstLine: line))
        context.fireErrorCaught(ClientTLSFailure())
        context.close(promise: nil)
    }
}

/// Marks a connection failed for the reason in its `ServerKeyCheck`.
struct ClientTLSFailure: Error {}
