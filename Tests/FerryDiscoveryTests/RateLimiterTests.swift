import FerryDiscovery
import FerryTestSupport
import XCTest

final class RateLimiterTests: XCTestCase {
    private let second: UInt64 = 1_000_000_000

    func testAtMostTwentyAnswersPerSecondPerSource() {
        var limiter = AnswerRateLimiter()
        let start: UInt64 = 5 * second
        // 100 probes within 0.1 s from one source: exactly 20 answered.
        var answered = 0
        for i in 0..<100 where limiter.allow(source: "10.0.0.1", now: start + UInt64(i) * 1_000_000) { answered += 1 }
        XCTAssertEqual(answered, 20)
        // Another source has its own budget.
        XCTAssertTrue(limiter.allow(source: "10.0.0.2", now: start + 100_000_000))
        // Still inside the sliding window of the first answers: refused.
        XCTAssertFalse(limiter.allow(source: "10.0.0.1", now: start + second - 1))
        // A second after the first answer, one more slot opens, and only one.
        XCTAssertTrue(limiter.allow(source: "10.0.0.1", now: start + second))
        XCTAssertFalse(limiter.allow(source: "10.0.0.1", now: start + second))
    }

    func testSlidingWindowNeverAllowsMoreThanTheLimitInAnySecond() {
        var limiter = AnswerRateLimiter(perSource: 20, total: 1000)
        var rng = SplitMix64(seed: 42)
        var times: [UInt64] = []
        var now: UInt64 = second
        for _ in 0..<5000 {
            now += UInt64.random(in: 0...20_000_000, using: &rng)
            if limiter.allow(source: "a", now: now) { times.append(now) }
        }
        XCTAssertGreaterThan(times.count, 100)
        var lo = 0
        for hi in times.indices {
            while times[hi] - times[lo] >= second { lo += 1 }
            XCTAssertLessThanOrEqual(hi - lo + 1, 20)
        }
    }

    func testOverallLimitAndBoundedMemoryUnderSpoofedSources() {
        var limiter = AnswerRateLimiter(perSource: 20, total: 200, maxSources: 100)
        var answered = 0
        for i in 0..<10_000 where limiter.allow(source: "10.\(i / 65536).\(i / 256 % 256).\(i % 256)", now: second + UInt64(i)) {
            answered += 1
        }
        XCTAssertEqual(answered, 100, "the source table is full after 100 sources within one second")
        XCTAssertLessThanOrEqual(limiter.trackedSources, 100)
        // A second later the idle entries are recycled, and the overall cap applies.
        answered = 0
        for i in 0..<10_000 where limiter.allow(source: "s\(i % 50)", now: 3 * second + UInt64(i)) { answered += 1 }
        XCTAssertEqual(answered, 200)
    }
}
