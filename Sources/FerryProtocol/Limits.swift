/// Constants of protocol version 1; `docs/PROTOCOL.md` section 11 is their normative list.
public enum FerryDefaults {
    public static let protocolVersion = 1
    /// The revision of protocol 1 this build speaks: 1.1 = version 1 with capabilities
    /// (PROTOCOL.md section 3.1). It never appears on the wire; peers of 1.0 keep working.
    public static let protocolRevision = "1.1"
    public static let tcpPort = 7446
    public static let discoveryPort = 7447
    public static let softwareVersion = "0.1.0"
}

public enum FerryLimits {
    /// Room for the longest request: `GET`, a 4096-byte path percent-encoded (up to three times
    /// as long), offset, length and validator.
    public static let maxRequestLine = 16384
    public static let maxReplyLine = 65536
    public static let maxPathBytes = 4096
    public static let maxComponentBytes = 255
    public static let maxChunkRaw = 4 * 1024 * 1024
    public static let chunkWireSlack = 1024
    public static let defaultChunkSize = 256 * 1024
    public static let maxListEntries = 1_000_000
    public static let maxBlockCount = 1_048_576
    /// Chunks in a `CHUNKS` map: a server maps files of up to this many minimum-size chunks
    /// (64 GiB) and answers 413 for larger ones (they keep `BLOCKS`).
    public static let maxChunkCount = 4_194_304
    public static let maxManifestEntries = 10_000_000
    public static let maxDatagram = 512
    /// Parsed requests a server keeps waiting per connection before it stops reading.
    public static let maxPipelined = 64
    /// Inflated manifest text a client accepts.
    public static let maxManifestBytes = 1 << 30
    public static let maxSymlinkHops = 40
}
