#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// Issue 17, part 1: anyone who can write in the served tree can swap a file for a FIFO
/// between the server's `lstat` ("regular file") and its `open`. A blocking open of a FIFO never
/// returns, so before the fix both worker threads hung there, the server never answered again
/// and ignored SIGTERM. Now the open is non-blocking and the type is checked on the descriptor.
final class ServedTreeRaceTests: XCTestCase {
    var work: URL!
    var served: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-race")
        served = work.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: served.appendingPathComponent("flip"), withIntermediateDirectories: true)
        try Data("hello\n".utf8).write(to: served.appendingPathComponent("a.txt"))
    }

    override func tearDown() {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    /// The opened-descriptor check itself, without a server: a FIFO (with no writer, so a
    /// blocking open would wait for ever), a directory and a socket are refused at once.
    func testOpenOwnedRefusesWhatIsNotARegularFileWithoutBlocking() throws {
        let dir = served.appendingPathComponent("flip")
        XCTAssertEqual(mkfifo(dir.appendingPathComponent("fifo").path, 0o644), 0)
        let dirFD = open(dir.path, O_RDONLY | O_DIRECTORY)
        XCTAssertGreaterThanOrEqual(dirFD, 0)
        defer { close(dirFD) }
        let started = Date()
        XCTAssertThrowsError(try FerryFiles.FileHandle.openOwned(dirFD, Array("fifo".utf8), allowDirectory: false, display: "flip/fifo")) { error in
            XCTAssertEqual((error as? SystemError)?.errno, EINVAL)
            XCTAssertTrue("\(error)".contains("FIFO"), "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 2, "the open blocked")
        XCTAssertEqual(mkdir(dir.appendingPathComponent("d").path, 0o755), 0)
        XCTAssertThrowsError(try FerryFiles.FileHandle.openOwned(dirFD, Array("d".utf8), allowDirectory: false, display: "flip/d"))
        XCTAssertNoThrow(try FerryFiles.FileHandle.openOwned(dirFD, Array("d".utf8), allowDirectory: true, display: "flip/d"))
        // The server-side entry point maps it to "not a regular file" (ERR 422), not an I/O error.
        let root = try ServedRoot(path: served.path)
        XCTAssertThrowsError(try root.openFile(RemotePath(wire: "flip/fifo")))
    }

    /// Two clients fetch `flip/x.bin` (and manifests of `flip` with hashes) for four seconds while
    /// another thread keeps swapping it between a regular file and a FIFO. Every reply is a
    /// complete reply (the file, or an ERR for that request); afterwards a fresh client is
    /// answered at once and SIGTERM stops the server within 5 s.
    func testSwappingAServedFileForAFIFONeverHangsTheServer() throws {
        let flip = served.appendingPathComponent("flip")
        let target = flip.appendingPathComponent("x.bin").path
        let content = Data(repeating: 0x61, count: 64 << 10)
        try content.write(to: URL(fileURLWithPath: target))
        let server = try ServerProcess(serving: served, tls: false, arguments: ["--bind", "127.0.0.1", "--no-discovery", "--compress", "off"])
        defer { server.stop() }

        let stop = Flag()
        let swapper = Thread {
            // Bounded: at most 4 s or 200,000 swaps. Both replacements go through rename(2), so
            // `x.bin` is always either a complete regular file or a FIFO.
            let fifoTemp = flip.appendingPathComponent(".fifo").path, fileTemp = flip.appendingPathComponent(".file").path
            var swaps = 0
            while !stop.isSet && swaps < 200_000 {
                _ = mkfifo(fifoTemp, 0o644)
                _ = rename(fifoTemp, target)
                _ = FileManager.default.createFile(atPath: fileTemp, contents: content)
                _ = rename(fileTemp, target)
                swaps += 1
            }
            stop.set()
        }
        swapper.start()
        // Each client stops when the flag is set; a hung reply ends by its 10 s receive timeout.
        let clients = (0..<2).map { _ in
            Background.run { () throws -> Int in
                let client = try RawClient(port: server.port, timeout: 10)
                _ = try client.readLine()
                var request = 0
                while !stop.isSet && request < 5_000 {
                    let line = request % 4 == 3 ? "MANIFEST flip\n" : "GET flip/x.bin 0 *\n"
                    try client.send(line)
                    try Self.readWholeReply(client, for: line)
                    request += 1
                }
                return request
            }
        }
        Thread.sleep(forTimeInterval: 4)
        stop.set()
        var requests = 0
        for (index, client) in clients.enumerated() {
            do { requests += try client.value() } catch { XCTFail("client \(index): a reply never came or was cut: \(error)") }
        }
        XCTAssertGreaterThan(requests, 20, "too few requests to have raced anything")

        let fresh = try RawClient(port: server.port, timeout: 5)
        XCTAssertNotNil(try fresh.readLine())
        try fresh.send("STAT a.txt\n")
        XCTAssertTrue(try fresh.readLine()?.hasPrefix("OK f ") ?? false, "the server no longer answers")

        XCTAssertTrue(server.stopsOnSIGTERM(within: 5), "the server ignored SIGTERM for 5 s")
    }

    /// Reads one reply to its end: a status line, then (for an `OK` of GET or MANIFEST) chunks
    /// up to `END` or `ERR`. Throws when the connection closes or times out mid-reply.
    static func readWholeReply(_ client: RawClient, for request: String) throws {
        guard let status = try client.readLine() else { throw RawClient.Failure(description: "EOF after \(request)") }
        if status.hasPrefix("ERR ") { return }
        guard status.hasPrefix("OK") else { throw RawClient.Failure(description: "unexpected '\(status)' for \(request)") }
        while true {
            guard let line = try client.readLine() else { throw RawClient.Failure(description: "EOF inside the reply to \(request)") }
            if line.hasPrefix("END ") || line.hasPrefix("ERR ") { return }
            let header = try ChunkHeader.parse(Substring(line))
            _ = try client.readBytes(header.wireLength)
        }
    }

    final class Flag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        var isSet: Bool { lock.withLock { value } }
        func set() { lock.withLock { value = true } }
    }
}
