@testable import FerryServer
import NIOCore
import XCTest

/// `AuthThrottle` driven through its injectable clock (`now:`): the schedule is checked to the
/// nanosecond without waiting for any of it. The end-to-end check that the server applies it
/// is `LoadAndShutdownTests.testTokenIsRequiredAndRepeatedFailuresAreSlowedDown`.
final class AuthThrottleTests: XCTestCase {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let peer = "192.0.2.7"

    func testNoFailuresNoWait() {
        let throttle = AuthThrottle()
        XCTAssertEqual(throttle.reserveTurn(for: peer, now: t0), .zero)
        XCTAssertEqual(throttle.reserveTurn(for: peer, now: t0), .zero, "reserving a turn alone costs nothing")
        XCTAssertEqual(throttle.failures(for: peer), 0)
    }

    func testTheDelayDoublesFromHalfASecondUpToThirtySeconds() {
        XCTAssertEqual(AuthThrottle.delay(afterFailures: 0), .zero)
        XCTAssertEqual(AuthThrottle.delay(afterFailures: 1), .milliseconds(500))
        XCTAssertEqual(AuthThrottle.delay(afterFailures: 2), .seconds(1))
        XCTAssertEqual(AuthThrottle.delay(afterFailures: 3), .seconds(2))
        XCTAssertEqual(AuthThrottle.delay(afterFailures: 6), .seconds(16))
        XCTAssertEqual(AuthThrottle.delay(afterFailures: 7), .seconds(30))
        XCTAssertEqual(AuthThrottle.delay(afterFailures: 1000), .seconds(30), "no overflow for many failures")
    }

    /// One attempt after another, each failing as soon as its turn comes: the waits are 0,
    /// 0.5 s, 1 s, 2 s, 4 s …
    func testSequentialFailuresWaitLongerAndLonger() {
        let throttle = AuthThrottle()
        var now = t0
        var waits: [TimeAmount] = []
        for _ in 0..<6 {
            let wait = throttle.reserveTurn(for: peer, now: now)
            waits.append(wait)
            now = now + wait
            throttle.recordFailure(for: peer, now: now)
            now = now + .milliseconds(3)  // the next connection arrives a little later
        }
        XCTAssertEqual(waits, [.zero, .milliseconds(497), .milliseconds(997), .milliseconds(1997),
                               .milliseconds(3997), .milliseconds(7997)])
        XCTAssertEqual(throttle.failures(for: peer), 6)
    }

    /// Parallel connections from one address queue behind each other: N attempts at the same
    /// instant are spaced by the delay, so opening many connections does not multiply the
    /// guessing rate.
    func testParallelAttemptsFromOneAddressQueue() {
        let throttle = AuthThrottle()
        throttle.recordFailure(for: peer, now: t0)
        throttle.recordFailure(for: peer, now: t0)
        let turns = (0..<5).map { _ in throttle.reserveTurn(for: peer, now: t0) }
        XCTAssertEqual(turns, [.seconds(1), .seconds(2), .seconds(3), .seconds(4), .seconds(5)])
        // Another address is not held up.
        XCTAssertEqual(throttle.reserveTurn(for: "192.0.2.8", now: t0), .zero)
    }

    func testSuccessForgetsTheFailures() {
        let throttle = AuthThrottle()
        for _ in 0..<3 { throttle.recordFailure(for: peer, now: t0) }
        XCTAssertGreaterThan(throttle.reserveTurn(for: peer, now: t0), .zero)
        throttle.recordSuccess(for: peer)
        XCTAssertEqual(throttle.failures(for: peer), 0)
        XCTAssertEqual(throttle.reserveTurn(for: peer, now: t0), .zero)
    }

    func testFailuresAreForgottenTenMinutesAfterTheLastOne() {
        let throttle = AuthThrottle()
        for _ in 0..<5 { throttle.recordFailure(for: peer, now: t0) }
        let justBefore = t0 + .minutes(10)
        XCTAssertEqual(throttle.reserveTurn(for: peer, now: justBefore), .zero, "its turn came long ago")
        XCTAssertEqual(throttle.reserveTurn(for: peer, now: justBefore), .seconds(8),
                       "at exactly 10 minutes it is still remembered: a second attempt queues behind the first")
        XCTAssertEqual(throttle.failures(for: peer), 5)
        XCTAssertEqual(throttle.reserveTurn(for: peer, now: justBefore + .nanoseconds(1)), .zero)
        XCTAssertEqual(throttle.failures(for: peer), 0, "the record is dropped")
    }

    /// A flood of distinct addresses cannot grow the table without bound: the address whose
    /// last failure is oldest is forgotten first.
    func testTheTableIsBoundedAndForgetsTheOldestAddress() {
        let throttle = AuthThrottle()
        for i in 0..<AuthThrottle.maxTracked {
            throttle.recordFailure(for: "10.0.\(i / 256).\(i % 256)", now: t0 + .nanoseconds(Int64(i)))
        }
        XCTAssertEqual(throttle.failures(for: "10.0.0.0"), 1)
        throttle.recordFailure(for: "198.51.100.1", now: t0 + .seconds(1))
        XCTAssertEqual(throttle.failures(for: "10.0.0.0"), 0, "the oldest address must be forgotten")
        XCTAssertEqual(throttle.failures(for: "10.0.0.1"), 1)
        XCTAssertEqual(throttle.failures(for: "198.51.100.1"), 1)
        // Failures of an address already tracked never evict anyone.
        throttle.recordFailure(for: "10.0.0.1", now: t0 + .seconds(2))
        XCTAssertEqual(throttle.failures(for: "10.0.0.2"), 1)
    }
}
