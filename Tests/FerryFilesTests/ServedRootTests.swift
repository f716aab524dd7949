@testable import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

final class ServedRootTests: XCTestCase {
    private var scratch: URL!
    private var sample: URL!
    private var root: ServedRoot!

    override func setUpWithError() throws {
        scratch = try TestSupport.makeTemporaryDirectory("ferry-root")
        sample = try TestSupport.materializeFixtures(in: scratch)
        root = try ServedRoot(path: sample.path)
    }

    override func tearDown() {
        root = nil
        if let scratch { TestSupport.removeTemporaryDirectory(scratch) }
    }

    // MARK: Helpers

    private func p(_ text: String) throws -> RemotePath { try RemotePath(validating: text) }

    private func serveError<T>(_ body: () throws(ServeError) -> T) -> ServeError? {
        do {
            let value = try body()
            XCTFail("expected an error, got \(value)")
            return nil
        } catch {
            return error
        }
    }

    private func assertRefused<T>(_ body: () throws(ServeError) -> T, file: StaticString = #filePath, line: UInt = #line) {
        guard let error = serveError(body) else { return }
        guard case .refused = error else { return XCTFail("expected .refused, got \(error)", file: file, line: line) }
        XCTAssertEqual(error.reply.code, 421, file: file, line: line)
    }

    private func assertNotFound<T>(_ body: () throws(ServeError) -> T, file: StaticString = #filePath, line: UInt = #line) {
        guard let error = serveError(body) else { return }
        guard case .notFound = error else { return XCTFail("expected .notFound, got \(error)", file: file, line: line) }
        XCTAssertEqual(error.reply.code, 404, file: file, line: line)
    }

    private func assertWrongType<T>(_ body: () throws(ServeError) -> T, file: StaticString = #filePath, line: UInt = #line) {
        guard let error = serveError(body) else { return }
        guard case .wrongType = error else { return XCTFail("expected .wrongType, got \(error)", file: file, line: line) }
        XCTAssertEqual(error.reply.code, 422, file: file, line: line)
    }

    private func names(_ entries: [Entry]) -> [String] { entries.map(\.path.description) }

    private func contents(_ path: RemotePath, in served: ServedRoot? = nil) throws -> [UInt8] {
        let (handle, info) = try (served ?? root).openFile(path)
        var out = [UInt8](repeating: 0, count: Int(info.size))
        let n = try out.withUnsafeMutableBytes { try handle.read(into: $0, at: 0) }
        XCTAssertEqual(n, out.count)
        return out
    }

    private func symlink(_ name: String, to target: String, in dir: URL? = nil) throws {
        try FileManager.default.createSymbolicLink(atPath: (dir ?? sample).appendingPathComponent(name).path,
                                                   withDestinationPath: target)
    }

    /// Creates a file whose name is raw bytes (possibly not UTF-8).
    private func createFile(rawName: [UInt8], contents: [UInt8], in dir: URL) {
        let path = Array(dir.path.utf8) + [0x2F] + rawName + [0]
        let fd = path.withUnsafeBufferPointer { buf in
            buf.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_WRONLY | O_CREAT | O_EXCL, 0o644) }
        }
        XCTAssertGreaterThanOrEqual(fd, 0)
        contents.withUnsafeBytes { _ = write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// `scratch/x/data` (served) beside `scratch/x/data2` (not served), as in the string-prefix trap.
    private func siblingLayout() throws -> (ServedRoot, URL) {
        let x = scratch.appendingPathComponent("x")
        let data = x.appendingPathComponent("data"), data2 = x.appendingPathComponent("data2")
        try FileManager.default.createDirectory(at: data.appendingPathComponent("sub"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: data2, withIntermediateDirectories: true)
        try Data("secret".utf8).write(to: data2.appendingPathComponent("secret.txt"))
        try Data("inside".utf8).write(to: data.appendingPathComponent("file.txt"))
        try Data("top".utf8).write(to: x.appendingPathComponent("top.txt"))
        return (try ServedRoot(path: data.path), data)
    }

    // MARK: Paths that cannot even be asked for

    func testDotDotCannotBeConstructed() {
        for text in ["..", "../data2", "a/../../etc", "docs/../..", "/etc/passwd"] {
            XCTAssertThrowsError(try RemotePath(validating: text), text)
        }
        XCTAssertThrowsError(try RemotePath(wire: "%2E%2E/etc"))
        XCTAssertThrowsError(try RemotePath(wire: "..%2Fetc"))
    }

    // MARK: Listing

    func testListRootIsSortedByRawBytes() throws {
        let entries = try root.list(.root)
        XCTAssertEqual(names(entries), ["café.txt", "docs", "empty-dir", "empty.txt", "hello world.txt", "photos"])
        let raw = entries.map(\.path.bytes)
        XCTAssertEqual(raw, raw.sorted { $0.lexicographicallyPrecedes($1) })
        let byName = Dictionary(uniqueKeysWithValues: entries.map { ($0.path.description, $0) })
        XCTAssertEqual(byName["docs"]?.type, .directory)
        XCTAssertEqual(byName["docs"]?.size, 0)
        XCTAssertEqual(byName["empty.txt"]?.type, .file)
        XCTAssertEqual(byName["empty.txt"]?.size, 0)
        XCTAssertEqual(byName["empty-dir"]?.type, .directory)
        XCTAssertEqual(byName["hello world.txt"]?.size,
                       Int64(try Data(contentsOf: sample.appendingPathComponent("hello world.txt")).count))
        XCTAssertEqual(byName["café.txt"]?.path.wire, "caf%C3%A9.txt")
        // Every listed entry survives the wire.
        for e in entries { XCTAssertEqual(try Entry(line: Substring(e.line)), e, e.line) }
    }

    func testListSubdirectoryShowsSymlinksAsLinks() throws {
        let entries = try root.list(try p("docs"))
        XCTAssertEqual(names(entries), ["build.sh", "guides", "hello-link", "server.log"])
        let link = try XCTUnwrap(entries.first { $0.path.description == "hello-link" })
        XCTAssertEqual(link.type, .symlink)
        XCTAssertEqual(link.target, Array("../hello world.txt".utf8))
        XCTAssertEqual(link.size, 18, "a symlink's size is its target's length")
        XCTAssertEqual(link.line.split(separator: " ").last, "../hello%20world.txt")
        XCTAssertEqual(entries.first { $0.path.description == "build.sh" }?.mode, 0o755)
        XCTAssertEqual(entries.first { $0.path.description == "server.log" }?.mode, 0o644)
    }

    func testListSortsAWiderSetOfNames() throws {
        let dir = sample.appendingPathComponent("empty-dir")
        for name in ["b", "a-b", "a", "B", "a.b", "ab", "_", "~", "é", "a b"] {
            try Data().write(to: dir.appendingPathComponent(name))
        }
        createFile(rawName: [0x61, 0xFF], contents: [], in: dir)
        let raw = try root.list(try p("empty-dir")).map(\.path.bytes)
        XCTAssertEqual(raw.count, 11)
        XCTAssertEqual(raw, raw.sorted { $0.lexicographicallyPrecedes($1) })
        XCTAssertEqual(raw.first, Array("B".utf8))
        XCTAssertEqual(raw.last, Array("é".utf8))
    }

    func testListEmptyDirectory() throws {
        XCTAssertEqual(try root.list(try p("empty-dir")), [])
    }

    func testListOfAFileIsWrongType() throws {
        let path = try p("hello world.txt")
        assertWrongType { () throws(ServeError) in try root.list(path) }
    }

    // MARK: Stat

    func testStatFile() throws {
        let e = try root.stat(try p("hello world.txt"))
        let info = try POSIX.lstat(sample.appendingPathComponent("hello world.txt").path)
        XCTAssertEqual(e.type, .file)
        XCTAssertEqual(e.size, info.size)
        XCTAssertEqual(e.mtime, info.mtime)
        XCTAssertEqual(e.mode, info.mode)
        XCTAssertEqual(e.path, try p("hello world.txt"))
        XCTAssertNil(e.target)
        XCTAssertEqual(try root.stat(try p("docs/build.sh")).mode, 0o755)
        XCTAssertEqual(try root.stat(try p("docs/guides/README.md")).path.description, "docs/guides/README.md",
                       "STAT carries the path from the root")
    }

    func testStatOfSymlinkDescribesTheLink() throws {
        let e = try root.stat(try p("docs/hello-link"))
        XCTAssertEqual(e.type, .symlink)
        XCTAssertEqual(e.target, Array("../hello world.txt".utf8))
        XCTAssertEqual(e.size, 18)
        XCTAssertEqual(e.path.description, "docs/hello-link")
    }

    func testStatRootAndDirectories() throws {
        XCTAssertEqual(try root.stat(.root).type, .directory)
        XCTAssertEqual(try root.stat(.root).size, 0)
        XCTAssertEqual(try root.stat(try p("docs")).type, .directory)
    }

    // MARK: Missing versus empty

    func testMissingIsDistinctFromEmpty() throws {
        let (handle, info) = try root.openFile(try p("empty.txt"))
        XCTAssertEqual(info.type, .file)
        XCTAssertEqual(info.size, 0)
        var byte: UInt8 = 0
        XCTAssertEqual(try withUnsafeMutableBytes(of: &byte) { try handle.read(into: $0, at: 0) }, 0)
        XCTAssertEqual(try root.stat(try p("empty.txt")).size, 0)

        for missing in ["missing.txt", "nodir/file", "docs/missing", "empty.txt/x", "docs/build.sh/x", "empty-dir/x"] {
            let path = try p(missing)
            assertNotFound { () throws(ServeError) in try root.openFile(path) }
            assertNotFound { () throws(ServeError) in try root.stat(path) }
            assertNotFound { () throws(ServeError) in try root.list(path) }
        }
        let error = serveError { () throws(ServeError) in try root.openFile(try! RemotePath(validating: "nothing-here")) }
        XCTAssertEqual(error?.reply.line, "ERR 404 not found: nothing-here", "as in the spec transcript")
    }

    // MARK: Types

    func testOpenFileOnADirectoryIsWrongType() throws {
        for dir in ["docs", "empty-dir", "photos/2024"] {
            let path = try p(dir)
            assertWrongType { () throws(ServeError) in try root.openFile(path) }
        }
        assertWrongType { () throws(ServeError) in try root.openFile(.root) }
        try symlink("docs-link", to: "docs")
        let link = try p("docs-link")
        assertWrongType { () throws(ServeError) in try root.openFile(link) }
    }

    func testFIFOIsListedButNeverOpened() throws {
        XCTAssertEqual(mkfifo(sample.appendingPathComponent("pipe").path, 0o644), 0)
        let e = try root.stat(try p("pipe"))
        XCTAssertEqual(e.type, .other)
        XCTAssertEqual(e.size, 0)
        XCTAssertTrue(try root.list(.root).contains { $0.path.description == "pipe" && $0.type == .other })
        let path = try p("pipe")
        // Must fail at once rather than block in open(2) waiting for a writer.
        assertWrongType { () throws(ServeError) in try root.openFile(path) }
        assertWrongType { () throws(ServeError) in try root.list(path) }
    }

    // MARK: Symlinks inside the tree

    func testInTreeSymlinkIsFollowed() throws {
        let expected = [UInt8](try Data(contentsOf: sample.appendingPathComponent("hello world.txt")))
        XCTAssertEqual(try contents(try p("docs/hello-link")), expected)
        let resolved = try root.resolve(try p("docs/hello-link"), followFinal: true)
        XCTAssertEqual(resolved.canonical, try p("hello world.txt"))
        XCTAssertEqual(resolved.info.type, .file)
        let unfollowed = try root.resolve(try p("docs/hello-link"), followFinal: false)
        XCTAssertEqual(unfollowed.info.type, .symlink)
        XCTAssertEqual(unfollowed.canonical, try p("docs/hello-link"))
    }

    func testSymlinkToDirectoryInTheMiddleOfAPath() throws {
        try symlink("guides-link", to: "docs/guides")
        try symlink("up", to: "..", in: sample.appendingPathComponent("docs"))
        try symlink("dotted", to: "./docs//guides/", in: sample)
        let readme = [UInt8](try Data(contentsOf: sample.appendingPathComponent("docs/guides/README.md")))
        XCTAssertEqual(try contents(try p("guides-link/README.md")), readme)
        XCTAssertEqual(try contents(try p("dotted/README.md")), readme)
        XCTAssertEqual(names(try root.list(try p("guides-link"))), ["README.md"])
        XCTAssertEqual(try root.openDirectory(try p("guides-link")).1, try p("docs/guides"))
        // "docs/up" is ".." of docs: the root itself, still inside.
        XCTAssertEqual(try root.openDirectory(try p("docs/up")).1, .root)
        XCTAssertEqual(try contents(try p("docs/up/empty.txt")), [])
        XCTAssertEqual(try contents(try p("docs/up/docs/hello-link")),
                       [UInt8](try Data(contentsOf: sample.appendingPathComponent("hello world.txt"))))
    }

    /// Deep paths resolve the same whether the parent directory opens with one `openat2` or
    /// one component at a time (the fallback for kernels without it): the same contents, the
    /// same refusals, the same "not found".
    func testDeepPathsResolveTheSameWithAndWithoutOpenat2() throws {
        let deep = sample.appendingPathComponent("a/b/c/d")
        try FileManager.default.createDirectory(at: deep, withIntermediateDirectories: true)
        try Data("deep".utf8).write(to: deep.appendingPathComponent("file"))
        try Data("in the way".utf8).write(to: sample.appendingPathComponent("a/b/plain"))
        try symlink("c-link", to: "c", in: sample.appendingPathComponent("a/b"))
        try symlink("out", to: "../../..", in: sample.appendingPathComponent("a/b"))
        defer { ServedRoot.beneathMissing.withLockedValue { $0 = false } }
        for componentWalk in [false, true] {
            ServedRoot.beneathMissing.withLockedValue { $0 = componentWalk }
            let how = componentWalk ? "component walk" : "openat2"
            XCTAssertEqual(try contents(try p("a/b/c/d/file")), Array("deep".utf8), how)
            XCTAssertEqual(try root.resolve(try p("a/b/c/d/file"), followFinal: true).canonical, try p("a/b/c/d/file"), how)
            // A symlink on the way is followed inside the tree and named by its canonical path.
            XCTAssertEqual(try contents(try p("a/b/c-link/d/file")), Array("deep".utf8), how)
            XCTAssertEqual(try root.resolve(try p("a/b/c-link/d/file"), followFinal: true).canonical, try p("a/b/c/d/file"), how)
            for missing in ["a/x/c/d/file", "a/b/c/d/nothing", "a/b/plain/d/file", "a/b/c/d/file/more"] {
                let path = try p(missing)
                assertNotFound { () throws(ServeError) in try root.openFile(path) }
            }
            let escape = try p("a/b/out/x/file")
            assertRefused { () throws(ServeError) in try root.openFile(escape) }
            let directory = try p("a/b/c")
            assertWrongType { () throws(ServeError) in try root.openFile(directory) }
            if !componentWalk && Self.kernelHasOpenat2 {
                XCTAssertFalse(ServedRoot.beneathMissing.withLockedValue { $0 },
                               "this kernel has openat2 (Linux 5.6 or later): the fast path must have been used")
            }
        }
    }

    /// Linux 5.6 or later (where a container's seccomp filter could still refuse the call).
    private static var kernelHasOpenat2: Bool {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard parts.count == 2 else { return false }
        return (parts[0], parts[1]) >= (5, 6)
    }

    func testChainOfSymlinksIsFollowed() throws {
        try symlink("l1", to: "l2")
        try symlink("l2", to: "docs/hello-link")
        XCTAssertEqual(try root.resolve(try p("l1"), followFinal: true).canonical, try p("hello world.txt"))
    }

    func testDanglingSymlinkIsNotFound() throws {
        try symlink("dangling", to: "nothing-here")
        let path = try p("dangling")
        assertNotFound { () throws(ServeError) in try root.openFile(path) }
        XCTAssertEqual(try root.stat(path).type, .symlink, "STAT still describes the link itself")
    }

    func testSymlinkLoopsAreRefused() throws {
        try symlink("loop1", to: "loop2")
        try symlink("loop2", to: "loop1")
        try symlink("self", to: "self")
        try symlink("deep", to: "deep/x")
        for name in ["loop1", "self", "deep", "loop2/x"] {
            let path = try p(name)
            assertRefused { () throws(ServeError) in try root.openFile(path) }
        }
    }

    // MARK: Symlinks that leave the tree

    func testSymlinkPointingOutsideIsRefused() throws {
        try symlink("escape", to: "..")
        try symlink("escape-file", to: "../../../../../../etc/passwd")
        try symlink("escape-deep", to: "../..", in: sample.appendingPathComponent("docs"))
        try symlink("escape-mid", to: "docs/../..")
        for name in ["escape", "escape-file", "docs/escape-deep", "escape-mid", "escape/sample/empty.txt"] {
            let path = try p(name)
            assertRefused { () throws(ServeError) in try root.openFile(path) }
            assertRefused { () throws(ServeError) in try root.list(path) }
            assertRefused { () throws(ServeError) in try root.openDirectory(path) }
        }
        // STAT describes the link without following it, so it does not leak anything outside.
        XCTAssertEqual(try root.stat(try p("escape-file")).type, .symlink)
    }

    func testAbsoluteSymlinksAreRefused() throws {
        try symlink("abs", to: "/etc/passwd")
        try symlink("abs-dir", to: "/etc")
        // Even when the absolute path happens to point back inside the root.
        try symlink("abs-inside", to: sample.appendingPathComponent("hello world.txt").path)
        for name in ["abs", "abs-dir/passwd", "abs-inside"] {
            let path = try p(name)
            assertRefused { () throws(ServeError) in try root.openFile(path) }
        }
        let dir = try p("abs-dir")
        assertRefused { () throws(ServeError) in try root.list(dir) }
        let e = try root.stat(try p("abs"))
        XCTAssertEqual(e.type, .symlink)
        XCTAssertEqual(e.target, Array("/etc/passwd".utf8))
    }

    func testSiblingDirectoryIsNotReachable() throws {
        let (served, data) = try siblingLayout()
        try symlink("sneaky", to: "../data2/..", in: data)
        try symlink("sneaky-dir", to: "../data2", in: data)
        try symlink("sneaky-file", to: "../data2/secret.txt", in: data)
        try symlink("sneaky-back", to: "../data/file.txt", in: data)
        try symlink("sneaky-sub", to: "../../data2", in: data.appendingPathComponent("sub"))
        for name in ["sneaky", "sneaky/top.txt", "sneaky/data2/secret.txt", "sneaky-dir", "sneaky-dir/secret.txt",
                     "sneaky-file", "sneaky-back", "sub/sneaky-sub/secret.txt"] {
            let path = try p(name)
            assertRefused { () throws(ServeError) in try served.openFile(path) }
        }
        for name in ["sneaky", "sneaky-dir", "sub/sneaky-sub"] {
            let path = try p(name)
            assertRefused { () throws(ServeError) in try served.list(path) }
        }
        // What is inside is still served.
        XCTAssertEqual(try contents(try p("file.txt"), in: served), Array("inside".utf8))
        XCTAssertEqual(names(try served.list(.root)), ["file.txt", "sneaky", "sneaky-back", "sneaky-dir", "sneaky-file", "sub"])
    }

    func testRootThatIsItselfASymlinkIsServed() throws {
        let link = scratch.appendingPathComponent("sample-link")
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: sample.path)
        let served = try ServedRoot(path: link.path)
        XCTAssertEqual(names(try served.list(.root)).count, 6)
    }

    // MARK: Names

    func testNonUTF8AndControlCharacterNames() throws {
        createFile(rawName: [0x62, 0x61, 0x64, 0xFF, 0x2E, 0x74], contents: Array("latin1".utf8), in: sample)
        createFile(rawName: Array("line\nbreak".utf8), contents: Array("nl".utf8), in: sample)
        createFile(rawName: Array("100% real".utf8), contents: Array("pct".utf8), in: sample)
        let entries = try root.list(.root)
        let wires = entries.map(\.path.wire)
        XCTAssertTrue(wires.contains("bad%FF.t"), "\(wires)")
        XCTAssertTrue(wires.contains("line%0Abreak"))
        XCTAssertTrue(wires.contains("100%25%20real"))
        XCTAssertEqual(try contents(try RemotePath(wire: "bad%FF.t")), Array("latin1".utf8))
        XCTAssertEqual(try contents(try RemotePath(wire: "bad%ff.t")), Array("latin1".utf8))
        XCTAssertEqual(try contents(try RemotePath(wire: "line%0Abreak")), Array("nl".utf8))
        XCTAssertEqual(try contents(try RemotePath(wire: "100%25%20real")), Array("pct".utf8))
        XCTAssertEqual(try contents(try RemotePath(wire: "caf%C3%A9.txt")),
                       [UInt8](try Data(contentsOf: sample.appendingPathComponent("café.txt"))))
    }

    func testLargeFileContentsMatch() throws {
        let expected = [UInt8](try Data(contentsOf: sample.appendingPathComponent("docs/server.log")))
        let (handle, info) = try root.openFile(try p("docs/server.log"))
        XCTAssertEqual(info.size, Int64(expected.count))
        XCTAssertEqual(try FileHashing.sha256(of: handle, length: info.size), SHA256Hasher.hex(expected))
        // A read past the end returns what there is.
        var tail = [UInt8](repeating: 0, count: 100)
        let n = try tail.withUnsafeMutableBytes { try handle.read(into: $0, at: info.size - 10) }
        XCTAssertEqual(n, 10)
        XCTAssertEqual(Array(tail.prefix(10)), Array(expected.suffix(10)))
    }

    // MARK: Opening the root

    func testServedRootMustBeAnExistingDirectory() {
        XCTAssertThrowsError(try ServedRoot(path: scratch.appendingPathComponent("missing").path)) { error in
            XCTAssertEqual((error as? SystemError)?.errno, ENOENT)
        }
        XCTAssertThrowsError(try ServedRoot(path: sample.appendingPathComponent("empty.txt").path)) { error in
            XCTAssertEqual((error as? SystemError)?.errno, ENOTDIR)
        }
    }

    func testServeErrorReplies() throws {
        let path = try p("a b")
        XCTAssertEqual(ServeError.notFound(path).reply, ErrorReply(.notFound, "not found: a%20b"))
        XCTAssertEqual(ServeError.refused(path, "why").reply.code, 421)
        XCTAssertEqual(ServeError.wrongType(path, "is a directory").reply.code, 422)
        let v = Validator(size: 1_073_745_920, mtime: Timestamp(seconds: 1_700_000_500, nanoseconds: 0))
        XCTAssertEqual(ServeError.changed(v).reply.line, "ERR 409 changed 1073745920,1700000500.000000000")
        XCTAssertEqual(ServeError.badRange("x").reply.code, 416)
        XCTAssertEqual(ServeError.tooLarge("x").reply.code, 413)
        XCTAssertEqual(ServeError.io(SystemError(errno: EIO, operation: "read", path: "f")).reply.code, 520)
        XCTAssertEqual(ServeError.io(SystemError(errno: EACCES, operation: "open", path: "f")).reply.code, 423)
        XCTAssertEqual(ServeError.io(SystemError(errno: EPERM, operation: "open", path: "f")).reply.code, 423)
    }
}
