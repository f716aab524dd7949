#if canImport(Glibc)
import Glibc
#endif
import FerryTestSupport
import Foundation
import XCTest

/// `ferry sync` through the fault proxy.
final class SyncResumeTests: XCTestCase {
    // An interrupted sync (retries 0) leaves the big file's partial in DEST/.ferry-partial;
    // the next run resumes it rather than fetching it whole.
    func testInterruptedSyncResumesTheBigFile() throws {
        let h = try ResumeHarness("ferry-resume-sync")
        defer { h.close() }
        let size = 24 << 20
        try "small\n".write(to: h.servedFile("a.txt"), atomically: true, encoding: .utf8)
        try Files.writeRandom(h.servedFile("big.bin"), size: size)
        try FileManager.default.createDirectory(at: h.servedFile("sub"), withIntermediateDirectories: true)
        try Files.writeRandom(h.servedFile("sub/z.bin"), size: 100_000)
        let dest = h.local.appendingPathComponent("copy")

        // The manifest connection is far below the cut; the file connection is cut in big.bin.
        let cut = size / 2
        h.proxy.setFaults(.init(cutAfter: cut))
        let first = try h.sync(into: dest, ["--retries", "0"])
        XCTAssertNotEqual(first.status, 0, "\(first)")
        XCTAssertTrue(h.proxy.connections.contains { $0.cut }, "the cut must have happened")
        XCTAssertFalse(Files.exists(dest.appendingPathComponent("big.bin")))

        // README: partials live in DEST/.ferry-partial/, one data file + .meta per file.
        let partialDir = dest.appendingPathComponent(".ferry-partial")
        // (Files whose GET was already pipelined may have an empty one; only big.bin has data.)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: partialDir.path)) ?? []
        let metas = names.filter { $0.hasSuffix(".part") }.compactMap { name -> PartialMeta? in
            XCTAssertTrue(names.contains(name + ".meta"), "\(names)")
            return PartialMeta(dataPath: partialDir.appendingPathComponent(name).path)
        }
        let withData = metas.filter { ($0.verified ?? 0) > 0 }
        XCTAssertEqual(withData.count, 1, "\(metas.map(\.fields))")
        let meta = withData.first
        XCTAssertEqual(meta?.size, size)
        XCTAssertEqual(meta?.fields["file"], "big.bin")
        let kept = meta?.verified ?? 0
        XCTAssertEqual(kept % Wire.chunk, 0)
        XCTAssertGreaterThanOrEqual(kept, cut - Wire.chunk - Wire.overhead, "everything but the chunk in flight is kept")

        h.proxy.setFaults(.none)
        let before = h.proxy.connections.count
        let second = try h.sync(into: dest)
        XCTAssertEqual(second.status, 0, "\(second)")
        XCTAssertEqual(try Files.tree(dest), try Files.tree(h.served))
        XCTAssertFalse(Files.exists(partialDir), "the partial folder is removed once empty")
        let fetched = h.bytesSince(before)
        XCTAssertEqual(second.int("wireBytes"), fetched)
        // The rest of big.bin plus at most one chunk, sub/z.bin (and maybe a.txt), the manifest,
        // and big.bin's chunk map (DEST holds data, so the rest is looked for in it: about 90
        // bytes per 64 KiB, under 0.2% of the file).
        let allowance = (size - cut) + Wire.chunk + Wire.overhead + 100_000 + (second.int("manifestWireBytes") ?? 0) + size / 500
        XCTAssertLessThanOrEqual(fetched, allowance, "the big file must be resumed, not fetched whole")
        print("sync resume: kept \(kept) of \(size), resuming run moved \(fetched) bytes (allowance \(allowance))")
    }

    // `ferry sync --no-resume` fetches an interrupted file from the start.
    func testSyncNoResumeStartsOver() throws {
        let h = try ResumeHarness("ferry-resume-sync-noresume")
        defer { h.close() }
        let size = 8 << 20
        try Files.writeRandom(h.servedFile("big.bin"), size: size)
        let dest = h.local.appendingPathComponent("copy")
        h.proxy.setFaults(.init(cutAfter: size / 2))
        let first = try h.sync(into: dest, ["--retries", "0"])
        XCTAssertNotEqual(first.status, 0, "\(first)")
        let partials = (try? FileManager.default.contentsOfDirectory(atPath: dest.appendingPathComponent(".ferry-partial").path)) ?? []
        XCTAssertEqual(partials.filter { $0.hasSuffix(".part") }.count, 1, "\(partials)")

        h.proxy.setFaults(.none)
        let before = h.proxy.connections.count
        let second = try h.sync(into: dest, ["--no-resume"])
        XCTAssertEqual(second.status, 0, "\(second)")
        XCTAssertGreaterThanOrEqual(h.bytesSince(before), size, "--no-resume must fetch the whole file")
        XCTAssertEqual(try Files.tree(dest), try Files.tree(h.served))
        XCTAssertFalse(Files.exists(dest.appendingPathComponent(".ferry-partial")))
    }

    // (5) With every connection cut every 2 MiB (then every 1 MiB), a sync of 30 files of mixed sizes still
    // completes within the default retry budget, with an identical tree.
    func testSyncCompletesWhileTheConnectionIsCutEveryFewMiB() throws {
        let h = try ResumeHarness("ferry-resume-flaky")
        defer { h.close() }
        var generator = SystemRandomNumberGenerator()
        var sizes: [Int] = []
        for _ in 0..<20 { sizes.append(Int.random(in: 0...64 * 1024, using: &generator)) }
        for _ in 0..<6 { sizes.append(Int.random(in: 300_000...1_500_000, using: &generator)) }
        for _ in 0..<3 { sizes.append(Int.random(in: 3_000_000...5_000_000, using: &generator)) }
        sizes.append(12 << 20)
        let modes = [0o644, 0o600, 0o755, 0o640, 0o444]
        for (i, size) in sizes.enumerated() {
            let dir = h.served.appendingPathComponent("d\(i % 4)/e\(i % 3)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let file = dir.appendingPathComponent("f\(i).bin")
            try Files.writeRandom(file, size: size)
            XCTAssertEqual(chmod(file.path, mode_t(modes[i % modes.count])), 0)
        }
        XCTAssertEqual(chmod(h.served.appendingPathComponent("d1").path, 0o750), 0)
        let total = sizes.reduce(0, +)
        for (round, every) in [2 << 20, (1 << 20) + 777].enumerated() {
            let before = h.proxy.connections.count
            h.proxy.setFaults(.init(cutAfter: every))
            let dest = h.local.appendingPathComponent("copy\(round)")

            let run = try h.sync(into: dest, timeout: 300)
            XCTAssertEqual(run.status, 0, "\(run)")
            XCTAssertEqual(run.int("failures"), 0)
            XCTAssertEqual(run.int("filesFetched"), sizes.count, "\(run)")
            XCTAssertEqual(try Files.tree(dest), try Files.tree(h.served), "the copy must be identical (content and modes)")
            XCTAssertFalse(Files.exists(dest.appendingPathComponent(".ferry-partial")))

            let conns = h.proxy.connections.dropFirst(before)
            let cuts = conns.filter(\.cut).count
            let moved = h.bytesSince(before)
            // Cut connections carry exactly `every` bytes; at most the manifest and each worker's last
            // connection are not cut.
            XCTAssertGreaterThanOrEqual(cuts, total / every - 3, "the proxy must really have cut the connections")
            XCTAssertTrue(conns.allSatisfy { $0.serverToClient <= every })
            XCTAssertEqual(run.int("wireBytes"), moved)
            // A cut costs what the client cannot use of what it received: the chunk in flight,
            // or a one-chunk file's whole reply (the proxy follows the frames to know). Each
            // connection costs a few lines of text besides.
            let unusable = conns.reduce(0) { $0 + $1.unusableAtCut }
            XCTAssertLessThanOrEqual(moved, total + unusable + conns.count * 8 * 1024 + 64 * 1024,
                                     "resumes after cuts refetched more than the cuts made unusable")
            XCTAssertLessThanOrEqual(unusable, cuts * (Wire.chunk + 100), "a cut cost more than one chunk")
            print("flaky sync, cut every \(every) bytes: \(sizes.count) files, \(total) bytes, \(conns.count) connections, \(cuts) cuts, \(moved) bytes moved (\(moved - total) extra, \(unusable) of them unusable at the cuts)")
        }
    }
}
