import FerryFiles
import FerryProtocol

extension FerryConnection {
    /// What a `CHUNKS` request gave.
    public enum ChunkMapAnswer: Sendable {
        case map(head: ChunksHead, chunks: [ChunkRecord], sha256: String)
        /// The map broke the protocol's rules (`ChunkMapReader`) or was cut with other
        /// parameters; its reply was read to its end, so the connection stays usable.
        case refused(String)
    }

    /// The content-defined chunk map of a file (capability `cdc`). An `ERR` status is thrown as
    /// `ClientError.server`; an `ERR` line after the head (the server could not read the file)
    /// too. A map that does not end within the protocol's limits breaks the connection.
    public func chunkMap(_ path: RemotePath, validator: Validator?) async throws -> ChunkMapAnswer {
        try await send(.chunks(path, validator: validator))
        return try await readChunkMap(path)
    }

    /// Reads the reply to a `CHUNKS` request sent before (see `chunkMap`).
    public func readChunkMap(_ path: RemotePath) async throws -> ChunkMapAnswer {
        let head = try await expect(ChunksHead.self, for: "CHUNKS \(path)")
        var reader = ChunkMapReader(head: head)
        var refusal: String? = head.parameters == ContentChunker.parameters
            ? nil : "cut with chunk sizes \(head.parameters), not \(ContentChunker.parameters)"
        var chunks: [ChunkRecord] = []
        var lines = 0
        while true {
            let line = Substring(try await readLine())
            lines += 1
            let ends = line.hasPrefix("END ") || line.hasPrefix("ERR ")
            if refusal == nil {
                let item: ChunkMapReader.Item
                do throws(MalformedReply) { item = try reader.read(line) } catch {
                    refusal = error.description
                    chunks = []
                    if ends { return .refused(error.description) }
                    continue
                }
                switch item {
                case .chunk(let c): chunks.append(c)
                case .end(let sha): return .map(head: head, chunks: chunks, sha256: sha)
                case .error(let reply): throw ClientError.server(endpoint: endpoint.description, request: "CHUNKS \(path)", reply)
                }
            }
            if refusal != nil {
                // Read the rest of the refused map (bounded), so the next reply can be read.
                if let refusal, ends { return .refused(refusal) }
                guard lines <= FerryLimits.maxChunkCount + 1 else { throw violation("the chunk map of \(path) does not end") }
            }
        }
    }
}

/// How a file is built from a chunk map: chunks found in DEST (each read, hashed and compared
/// with the map's hash before it is used) and ranges fetched with ranged `GET`s (neighbouring
/// missing chunks coalesced into one range).
public struct ReusePlan: Sendable, Equatable {
    public enum Run: Sendable, Equatable {
        /// A chunk that DEST may hold at one of `candidates`.
        case local(ChunkRecord, candidates: [LocalChunkIndex.Location])
        /// Bytes `[start, end)` to fetch.
        case remote(start: Int64, end: Int64)
    }

    public var runs: [Run]

    /// The plan for the bytes of a file from `from` (what a partial already holds) on.
    public static func make(_ chunks: [ChunkRecord], from: Int64, index: LocalChunkIndex) -> ReusePlan {
        var runs: [Run] = []
        func fetch(_ start: Int64, _ end: Int64) {
            if case .remote(let s, let e)? = runs.last, e == start {
                runs[runs.count - 1] = .remote(start: s, end: end)
            } else {
                runs.append(.remote(start: start, end: end))
            }
        }
        for c in chunks {
            let end = c.offset + Int64(c.length)
            guard end > from else { continue }
            if c.offset < from {
                fetch(from, end)  // the rest of a chunk the partial holds the start of
                continue
            }
            let places = index.locations(of: c.digest, length: c.length)
            if places.isEmpty { fetch(c.offset, end) } else { runs.append(.local(c, candidates: places)) }
        }
        return ReusePlan(runs: runs)
    }

    public var remoteRanges: [(start: Int64, end: Int64)] {
        runs.compactMap { if case .remote(let s, let e) = $0 { (s, e) } else { nil } }
    }

    public var localBytes: Int64 {
        runs.reduce(0) { if case .local(let c, _) = $1 { $0 + Int64(c.length) } else { $0 } }
    }
}
