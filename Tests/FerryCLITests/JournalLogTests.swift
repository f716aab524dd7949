import Foundation
import Logging
import XCTest
@testable import ferry

/// The journal format: a syslog priority per level, one line per event, and stderr recognised
/// only when JOURNAL_STREAM names it.
final class JournalLogTests: XCTestCase {
    func testEachLevelHasItsSyslogPriority() {
        let priorities = Logger.Level.allCases.map { JournalLogHandler.priority($0) }
        XCTAssertEqual(priorities, [7, 7, 6, 5, 4, 3, 2])  // trace … critical
    }

    func testALineCarriesPriorityLabelMessageAndSortedMetadata() {
        let line = JournalLogHandler.line(level: .notice, label: "ferry.server", message: "authentication failed",
                                          metadata: ["peer": "127.0.0.1:5000", "attempt": "3"])
        XCTAssertEqual(line, "<5>ferry.server: authentication failed attempt=3 peer=127.0.0.1:5000")
    }

    func testStderrIsRecognisedByDeviceAndInodeOnly() throws {
        var st = stat()
        XCTAssertEqual(fstat(STDERR_FILENO, &st), 0)
        XCTAssertTrue(JournalLogHandler.stderrIsJournal(journalStream: "\(st.st_dev):\(st.st_ino)"))
        XCTAssertFalse(JournalLogHandler.stderrIsJournal(journalStream: "\(st.st_dev):\(st.st_ino &+ 1)"))
        XCTAssertFalse(JournalLogHandler.stderrIsJournal(journalStream: nil))
        XCTAssertFalse(JournalLogHandler.stderrIsJournal(journalStream: "garbage"))
        XCTAssertFalse(JournalLogHandler.stderrIsJournal(journalStream: "\(st.st_dev):\(st.st_ino):1"))
    }
}
