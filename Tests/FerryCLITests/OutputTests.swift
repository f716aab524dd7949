import FerryProtocol
import XCTest
@testable import ferry

/// What the executable shows a person: mode strings as `ls -l`, escaped names, a progress line
/// that never wraps.
final class OutputTests: XCTestCase {
    func testModeStringShowsSpecialBitsAsLsDoes() {
        XCTAssertEqual(Output.modeString(.file, 0o644), "-rw-r--r--")
        XCTAssertEqual(Output.modeString(.file, 0o4755), "-rwsr-xr-x")
        XCTAssertEqual(Output.modeString(.file, 0o4644), "-rwSr--r--")
        XCTAssertEqual(Output.modeString(.file, 0o2755), "-rwxr-sr-x")
        XCTAssertEqual(Output.modeString(.file, 0o2745), "-rwxr-Sr-x")
        XCTAssertEqual(Output.modeString(.directory, 0o1777), "drwxrwxrwt")
        XCTAssertEqual(Output.modeString(.directory, 0o1770), "drwxrwx--T")
        XCTAssertEqual(Output.modeString(.symlink, 0o777), "lrwxrwxrwx")
        XCTAssertEqual(Output.modeString(.other, 0o644, kind: .fifo), "prw-r--r--")
        XCTAssertEqual(Output.modeString(.other, 0o660, kind: .block), "brw-rw----")
        XCTAssertEqual(Output.modeString(.other, 0o666, kind: .character), "crw-rw-rw-")
        XCTAssertEqual(Output.modeString(.other, 0o755, kind: .socket), "srwxr-xr-x")
        XCTAssertEqual(Output.modeString(.other, 0o644), "?rw-r--r--")
    }

    func testControlCharactersAreEscaped() {
        XCTAssertEqual(Output.printable("plain name"), "plain name")
        XCTAssertEqual(Output.printable("a\u{1B}[2Jb"), "a\\x1b[2Jb")
        XCTAssertEqual(Output.printable("bell\u{07} del\u{7F} c1\u{9B}"), "bell\\x07 del\\x7f c1\\x9b")
        XCTAssertEqual(Output.printable("two\nlines\tok"), "two\nlines\tok")
        XCTAssertEqual(Output.printable(bytes: Array("tab\there\nnl\u{1B}".utf8)), "tab\\x09here\\x0anl\\x1b")
        XCTAssertEqual(Output.printable(bytes: [0x61, 0xFF, 0x62]), "a\u{FFFD}b")
        XCTAssertEqual(Output.shown(.root), ".")
    }

    /// A name with DEL or a C1 control (`ls --json`, sync events) must stay valid JSON after
    /// `Output.out` escapes the line for the terminal, and decode to the same name.
    func testJSONLinesWithDELAndC1ControlsStayValidJSON() throws {
        for name in ["del\u{7F}char.txt", "nel\u{85}char.txt", "csi\u{9B}31m", "esc\u{1B}[0m", "plain"] {
            var line = ""
            JSONText.append(["name": name], to: &line)
            let printed = Output.printable(line)
            let object = try JSONSerialization.jsonObject(with: Data(printed.utf8)) as? [String: Any]
            XCTAssertEqual(object?["name"] as? String, name, "printed line: \(printed)")
        }
    }

    func testFileEventsAreTheLinesTheDictionaryWouldGive() throws {
        for name in ["plain.txt", "dir/with space", "quote\"back\\slash", "tab\tnew\nline\u{7F}\u{85}", "ünï/çødé"] {
            let path = try RemotePath(validating: name)
            for delta in [nil, false, true] as [Bool?] {
                var object: [String: Any] = ["event": delta == nil ? "start" : "done", "path": path.description, "size": Int64(1234)]
                if let delta { object["delta"] = delta }
                var expected = ""
                JSONText.append(object, to: &expected)
                XCTAssertEqual(JSONText.fileEvent(delta == nil ? "start" : "done", path: path, size: 1234, delta: delta), expected)
            }
        }
    }

    func testProgressLineNeverWraps() {
        let stats = "12/400 files  1.2 GiB / 3.4 GiB   35%  112.0 MiB/s  ETA 00:21"
        let name = "photos/2024/some very long folder name/and an even longer file name IMG_20240101_123456.jpg"
        for columns in [10, 20, 40, 62, 70, 80, 100, 200, 400] {
            let line = ProgressDisplay.fit(stats: stats, name: name, columns: columns)
            XCTAssertLessThanOrEqual(ProgressDisplay.width(of: line), max(0, columns - 3), "columns \(columns): '\(line)'")
        }
        // Wide enough: everything, unchanged.
        XCTAssertEqual(ProgressDisplay.fit(stats: stats, name: name, columns: 400), stats + "  " + name)
        // Narrower: the counts stay whole and the end of the name is kept.
        let cut = ProgressDisplay.fit(stats: stats, name: name, columns: 100)
        XCTAssertTrue(cut.hasPrefix(stats + "  "), cut)
        XCTAssertTrue(cut.hasSuffix("123456.jpg"), cut)
        XCTAssertTrue(cut.contains("…"), cut)
        // Too narrow for the counts: whole fields go from the end, never half a field (a cut
        // "ETA 00:21" reads "ETA 0"); only a first field wider than the line is cut.
        XCTAssertEqual(ProgressDisplay.fit(stats: stats, name: name, columns: 60),
                       "12/400 files  1.2 GiB / 3.4 GiB   35%  112.0 MiB/s")
        XCTAssertEqual(ProgressDisplay.fit(stats: stats, name: name, columns: 30), "12/400 files")
        XCTAssertEqual(ProgressDisplay.fit(stats: stats, name: nil, columns: 10), "12/400 ")
        // East Asian wide characters take two columns each.
        let wide = String(repeating: "写真", count: 40)
        let line = ProgressDisplay.fit(stats: stats, name: wide, columns: 90)
        XCTAssertLessThanOrEqual(ProgressDisplay.width(of: line), 87, line)
        XCTAssertEqual(ProgressDisplay.width(of: "写真"), 4)
    }

    /// The formats `String(format:)` produced before (it linked ICU into the static binary).
    func testNumbersLookAsPrintfShowedThem() {
        XCTAssertEqual(Output.fixed(2.345, decimals: 2), "2.35")    // %.2f
        XCTAssertEqual(Output.fixed(0.004, decimals: 2), "0.00")
        XCTAssertEqual(Output.fixed(-1.26, decimals: 1), "-1.3")
        XCTAssertEqual(Output.fixed(99.6, decimals: 0), "100")
        XCTAssertEqual(Output.fixed(12, decimals: 3), "12.000")
        XCTAssertEqual(Output.bytes(1536), "1.5 KiB")
        XCTAssertEqual(Output.bytes(812 * 1024 * 1024), "812.0 MiB")
        XCTAssertEqual(Output.bytes(1000), "1000 B")
        XCTAssertEqual(Output.duration(65), "01:05")                // %02d:%02d
        XCTAssertEqual(Output.duration(3 * 3600 + 7 * 60 + 9), "3:07:09")
        XCTAssertEqual(Output.duration(.infinity), "--:--")
    }
}

/// A bare SERVER name is looked up in /etc/hosts before discovery and DNS.
final class HostsFileTests: XCTestCase {
    func testFindsANameOnAnyLineAmongItsAliases() {
        let text = """
        # comment 127.0.0.9 commented
        127.0.0.1\tlocalhost
        ::1     localhost ip6-localhost ip6-loopback
        10.0.0.5 nas Studio.lan studio   # trailing comment
        \r
        garbage
        """
        XCTAssertEqual(HostsFile.address(of: "localhost", in: text), "127.0.0.1")
        XCTAssertEqual(HostsFile.address(of: "ip6-loopback", in: text), "::1")
        XCTAssertEqual(HostsFile.address(of: "STUDIO", in: text), "10.0.0.5")
        XCTAssertNil(HostsFile.address(of: "commented", in: text))
        XCTAssertNil(HostsFile.address(of: "garbage", in: text))
        XCTAssertNil(HostsFile.address(of: "nosuch", in: text))
        XCTAssertNil(HostsFile.address(of: "x", path: "/nonexistent/hosts"))
    }
}
