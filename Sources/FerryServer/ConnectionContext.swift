import FerryFiles
import FerryProtocol
import Logging

/// What a connection's handler (and the `FileSender`/`ManifestSender` it runs) needs of the
/// server, and nothing more: the served root and its hash cache, the limits and policies set by
/// `ferry serve`, authentication, and the server's logger. Handlers never see `FerryServer`
/// itself, so they cannot reach its connection registry, listener or shutdown.
struct ConnectionContext: Sendable {
    let root: ServedRoot
    let hashCache: HashCache
    let logger: Logger
    /// `--compress`.
    let compression: CompressionMode
    /// What `auto` compression has learned about the links so far, shared by all connections.
    let compressionMemory: CompressionMemory
    let chunkSize: Int
    /// The HMAC token; nil when the server is open.
    let token: [UInt8]?
    /// The SHA-256 of the server's public key on a TLS server, which `AUTH` answers are then
    /// bound to (`auth=hmac-sha256-tls`); nil on a cleartext server.
    let keyHash: [UInt8]?
    let authThrottle: AuthThrottle
    let name: String
    let id: String
    /// What the greeting offers beyond protocol 1.0 (`caps=`), in this order.
    let capabilities: [Capability]
    /// Hashing of ranges and block maps, off the cooperative threads.
    let heavyWork: HeavyWork
    /// How many chunks each running stream may hold ahead of its socket.
    let streamBudget: StreamBudget
    /// Where a manifest too large to hold in memory is spooled (the state folder, or the
    /// temporary folder when the server keeps no state); never inside the served tree.
    let spoolDirectory: String
    /// Tree walks running at once, server-wide.
    let walkTurns: WalkTurns

    /// The greeting every connection starts with.
    func greeting(nonce: [UInt8]?) -> Greeting {
        Greeting(name: name, id: id, nonce: nonce, channelBound: keyHash != nil, capabilities: capabilities)
    }

    /// The policy that turns `--compress` into each chunk's decision for a peer that decodes
    /// `peerCodecs` (and is on this machine when `localPeer`).
    func compressionPolicy(peerCodecs: Set<ChunkCodec>, localPeer: Bool) -> ChunkCompressionPolicy {
        ChunkCompressionPolicy(mode: compression, peerCodecs: peerCodecs, localPeer: localPeer)
    }

    /// Persists the hash cache (after a manifest, which may have hashed many files).
    func saveCache() {
        do { try hashCache.save() } catch { logger.warning("could not save the hash cache: \(error)") }
    }
}
