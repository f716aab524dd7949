#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryFiles
import FerryProtocol
import XCTest

/// The one retry policy of `ferry get` and `ferry sync` (`RetryPolicy`, `FileFailure`), without
/// a socket: what is tried again, how often, and after which wait.
final class RetryPolicyTests: XCTestCase {
    private let e = "127.0.0.1:7446"

    private func server(_ code: Int) -> ClientError {
        .server(endpoint: e, request: "GET f", ErrorReply(code: code, reason: "why \(code)"))
    }

    func testBackoffDoublesFromTheInitialDelayUpToTheCap() {
        let p = RetryPolicy()
        XCTAssertEqual((1...7).map { p.delay(beforeRetry: $0) },
                       [.milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(8)])
        XCTAssertEqual(p.delay(beforeRetry: 1000), .seconds(8), "a huge count neither overflows nor passes the cap")
    }

    func testConnectionFailuresAreRetriedUpToRetriesInARow() {
        var t = RetryPolicy.Tracker(RetryPolicy(retries: 2))
        XCTAssertEqual(t.record(.connection), .reconnect(attempt: 1, of: 2, delay: .milliseconds(250)))
        XCTAssertEqual(t.record(.connection), .reconnect(attempt: 2, of: 2, delay: .milliseconds(500)))
        XCTAssertEqual(t.record(.connection), .giveUp)
        XCTAssertEqual(t.retries, 2)
    }

    func testProgressStartsTheConnectionCountAgain() {
        var t = RetryPolicy.Tracker(RetryPolicy(retries: 1))
        XCTAssertEqual(t.record(.connection), .reconnect(attempt: 1, of: 1, delay: .milliseconds(250)))
        XCTAssertEqual(t.record(.connection, progressed: true), .reconnect(attempt: 1, of: 1, delay: .milliseconds(250)),
                       "a connection that delivered verified data before it failed starts the count again")
        XCTAssertEqual(t.record(.connection), .giveUp)
        XCTAssertEqual(t.retries, 2)
    }

    func testZeroRetriesNeverReconnects() {
        var t = RetryPolicy.Tracker(RetryPolicy(retries: 0))
        XCTAssertEqual(t.record(.connection), .giveUp)
        XCTAssertEqual(t.retries, 0)
    }

    func testAFileFailingOnItsOwnIsTriedFileAttemptsTimesWhateverTheRetries() {
        var t = RetryPolicy.Tracker(RetryPolicy(retries: 0, fileAttempts: 3))
        XCTAssertEqual(t.record(.transient("CRC")), .retryFile(attempt: 2, of: 3, delay: .milliseconds(250)))
        XCTAssertEqual(t.record(.transient("CRC")), .retryFile(attempt: 3, of: 3, delay: .milliseconds(500)))
        XCTAssertEqual(t.record(.transient("CRC")), .giveUp)
        // Connection failures have their own count.
        var mixed = RetryPolicy.Tracker(RetryPolicy(retries: 1, fileAttempts: 2))
        XCTAssertEqual(mixed.record(.transient("520")), .retryFile(attempt: 2, of: 2, delay: .milliseconds(250)))
        XCTAssertEqual(mixed.record(.connection), .reconnect(attempt: 1, of: 1, delay: .milliseconds(250)))
        XCTAssertEqual(mixed.record(.transient("520")), .giveUp)
    }

    func testPermanentAndFatalFailuresAreNeverRetried() {
        var t = RetryPolicy.Tracker(RetryPolicy(retries: 9, fileAttempts: 9))
        XCTAssertEqual(t.record(.permanent("not found")), .giveUp)
        XCTAssertEqual(t.record(.fatal), .giveUp)
        XCTAssertEqual(t.retries, 0)
        XCTAssertNil(RetryPolicy.Decision.giveUp.delay)
    }

    func testWhatIsRetriedFollowsTheFileFailureClassification() {
        // The connection or the server, not the file.
        for error in [ClientError.closed(endpoint: e), .timeout(endpoint: e, "sent nothing"), .connect(endpoint: e, reason: "x"),
                      .protocolViolation(endpoint: e, "x"), server(503), server(429), server(408)] {
            XCTAssertEqual(FileFailure(error), .connection, "\(error)")
        }
        // A refused connection: nothing listens, unless this server answered earlier in the run.
        XCTAssertEqual(FileFailure(ClientError.refused(endpoint: e), serverAnsweredThisRun: false), .fatal)
        XCTAssertEqual(FileFailure(ClientError.refused(endpoint: e), serverAnsweredThisRun: true), .connection)
        // The file alone, maybe better another time.
        for error in [server(500), server(520), server(599), .integrity(path: "f", "SHA-256 mismatch"),
                      .corruptChunk(path: "f", .checksum(offset: 0))] {
            XCTAssertTrue(FileFailure(error).isTransient, "\(error)")
        }
        // The file alone, for good.
        for error in [server(404), server(421), server(422), server(423), server(400), .refusedPath("..")] {
            guard case .permanent = FileFailure(error) else { return XCTFail("\(error) must be permanent") }
        }
        let denied = SystemError(errno: EACCES, operation: "open", path: "d/f")
        XCTAssertEqual(FileFailure(ClientError.local(denied)), .permanent(denied.description))
        // The whole run.
        for error in [server(401), server(403), .notFerry(endpoint: e, firstLine: "HTTP/1.1"),
                      .versionMismatch(endpoint: e, version: 9), .authentication(endpoint: e, "wrong token"),
                      .local(SystemError(errno: ENOSPC, operation: "write", path: "d/f"))] {
            XCTAssertEqual(FileFailure(error), .fatal, "\(error)")
        }
        XCTAssertEqual(FileFailure(CancellationError()), .fatal, "an error ferry does not know is not retried")
    }
}
