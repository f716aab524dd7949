#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A fault-injecting TCP proxy for the resume tests, on loopback only: it listens on
/// 127.0.0.1 (ephemeral port) and forwards every connection to a ferry server on 127.0.0.1.
/// On the server→client direction it can cut the connection after N bytes, stall for a
/// while at an offset, or flip one byte; it counts the bytes it forwards per connection.
///
/// Plain POSIX sockets: one accept thread and one thread per connection, each polling with a
/// short timeout so `stop()` ends everything promptly. Nothing runs unbounded: a stall has a
/// fixed length and every thread exits on `stop()`.
final class FaultProxy: @unchecked Sendable {
    /// Faults for the server→client stream of a connection. Offsets count that connection's
    /// server→client bytes from 0 (the greeting's first byte).
    struct Faults: Sendable {
        /// Forward exactly this many bytes, then close both sides.
        var cutAfter: Int?
        /// Forward this many bytes, then forward nothing for `stallSeconds`.
        var stallAt: Int?
        var stallSeconds: Double = 0
        /// Invert the byte at this offset.
        var flipAt: Int?
        /// Apply these faults to the next N connections only (nil: every connection).
        var connections: Int?

        init(cutAfter: Int? = nil, stallAt: Int? = nil, stallSeconds: Double = 0, flipAt: Int? = nil, connections: Int? = nil) {
            self.cutAfter = cutAfter
            self.stallAt = stallAt
            self.stallSeconds = stallSeconds
            self.flipAt = flipAt
            self.connections = connections
        }

        static let none = Faults()
        var isNone: Bool { cutAfter == nil && stallAt == nil && flipAt == nil }
    }

    /// What happened on one proxied connection.
    struct ConnectionRecord: Sendable {
        var index: Int
        var serverToClient = 0
        var clientToServer = 0
        var faulty = false
        var cut = false
        var flipped = false
        var stalled = false
        var stalling = false
        var finished = false
        /// At the cut: the bytes forwarded that the client cannot use (see `StreamShape`).
        var unusableAtCut = 0
    }

    struct ProxyError: Error, CustomStringConvertible {
        let description: String
    }

    let port: Int
    private let upstreamPort: Int
    private let listenFD: Int32
    private let lock = NSLock()
    private var faults = Faults.none
    private var faultyLeft: Int?
    private var records: [ConnectionRecord] = []
    private var openFDs: Set<Int32> = []
    private var stopping = false
    private let threads = DispatchGroup()

    init(upstreamPort: Int) throws {
        self.upstreamPort = upstreamPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ProxyError(description: "socket: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            close(fd)
            throw ProxyError(description: "bind/listen on 127.0.0.1: errno \(errno)")
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.listenFD = fd
        self.port = Int(UInt16(bigEndian: actual.sin_port))
        threads.enter()
        Thread.detachNewThread { [self] in
            acceptLoop()
            threads.leave()
        }
    }

    /// `127.0.0.1:PORT`, as the ferry CLI takes it.
    var address: String { "127.0.0.1:\(port)" }

    /// Faults for connections accepted from now on.
    func setFaults(_ f: Faults) {
        lock.withLock {
            faults = f
            faultyLeft = f.connections
        }
    }

    var connections: [ConnectionRecord] { lock.withLock { records } }
    var totalServerToClient: Int { lock.withLock { records.reduce(0) { $0 + $1.serverToClient } } }

    /// Waits until `condition` holds for the records (polling), at most `timeout` seconds.
    func wait(timeout: TimeInterval, until condition: ([ConnectionRecord]) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition(connections) { return true }
            usleep(20_000)
        }
        return condition(connections)
    }

    /// Stops accepting, closes every connection and waits for the threads (bounded).
    func stop() {
        lock.withLock {
            stopping = true
            // Under the lock: a relay thread removes its descriptors before closing them.
            for fd in openFDs { shutdown(fd, Int32(SHUT_RDWR)) }
        }
        _ = threads.wait(timeout: .now() + 10)
    }

    private var isStopping: Bool { lock.withLock { stopping } }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return addr
    }

    private func acceptLoop() {
        defer { close(listenFD) }
        while !isStopping {
            var pfd = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) > 0 else { continue }
            let client = accept(listenFD, nil, nil)
            guard client >= 0 else { continue }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var addr = Self.loopback(port: UInt16(upstreamPort))
            let connected = upstream >= 0 && withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            } == 0
            guard connected else {
                if upstream >= 0 { close(upstream) }
                close(client)
                continue
            }
            var one: Int32 = 1
            setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(upstream, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let (index, connectionFaults): (Int, Faults) = lock.withLock {
                var f = faults
                if let left = faultyLeft {
                    if left > 0 { faultyLeft = left - 1 } else { f = .none }
                }
                var record = ConnectionRecord(index: records.count)
                record.faulty = !f.isNone
                records.append(record)
                openFDs.insert(client)
                openFDs.insert(upstream)
                return (record.index, f)
            }
            threads.enter()
            Thread.detachNewThread { [self] in
                relay(index: index, client: client, upstream: upstream, faults: connectionFaults)
                lock.withLock {
                    records[index].finished = true
                    openFDs.remove(client)
                    openFDs.remove(upstream)
                }
                close(client)
                close(upstream)
                threads.leave()
            }
        }
    }

    private func update(_ index: Int, _ change: (inout ConnectionRecord) -> Void) {
        lock.withLock { change(&records[index]) }
    }

    /// Sends all of `bytes`; false when the peer is gone.
    private func sendAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = send(fd, bytes.baseAddress.map { $0 + sent }, bytes.count - sent, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            sent += n
        }
        return true
    }

    /// Sleeps for a stall, returning early when the proxy stops or the client goes away.
    private func stall(seconds: Double, client: Int32) {
        let deadline = Date().addingTimeInterval(seconds)
        var probe: UInt8 = 0
        while Date() < deadline && !isStopping {
            let n = recv(client, &probe, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { return }
            usleep(50_000)
        }
    }

    private func relay(index: Int, client: Int32, upstream: Int32, faults: Faults) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var down = 0  // server→client bytes forwarded
        var shape = StreamShape()
        var stallDone = false
        var flipDone = false
        while !isStopping {
            var fds = [pollfd(fd: client, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: upstream, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, 100)
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 { continue }
            let hangup = Int16(POLLIN | POLLHUP | POLLERR)
            if fds[0].revents & hangup != 0 {
                let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return }
                let ok = buffer.withUnsafeBytes { sendAll(upstream, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                if !ok { return }
                update(index) { $0.clientToServer += n }
            }
            if fds[1].revents & hangup != 0 {
                let n = buffer.withUnsafeMutableBytes { recv(upstream, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return }
                var offset = 0
                while offset < n {
                    var end = n
                    if let cut = faults.cutAfter { end = min(end, offset + max(0, cut - down)) }
                    if let at = faults.stallAt, !stallDone, at >= down { end = min(end, offset + (at - down)) }
                    if let at = faults.flipAt, !flipDone, at >= down, at < down + (end - offset) {
                        buffer[offset + (at - down)] ^= 0xFF
                        flipDone = true
                        update(index) { $0.flipped = true }
                    }
                    if end > offset {
                        let ok = buffer.withUnsafeBytes { sendAll(client, UnsafeRawBufferPointer(rebasing: $0[offset..<end])) }
                        if !ok { return }
                        let count = end - offset
                        buffer.withUnsafeBytes { shape.feed(UnsafeRawBufferPointer(rebasing: $0[offset..<end])) }
                        down += count
                        update(index) { $0.serverToClient += count }
                        offset = end
                    }
                    if let cut = faults.cutAfter, down >= cut {
                        let unusable = shape.unusable
                        update(index) {
                            $0.cut = true
                            $0.unusableAtCut = unusable
                        }
                        shutdown(client, Int32(SHUT_RDWR))
                        shutdown(upstream, Int32(SHUT_RDWR))
                        return
                    }
                    if let at = faults.stallAt, !stallDone, down == at {
                        stallDone = true
                        update(index) { $0.stalling = true }
                        stall(seconds: faults.stallSeconds, client: client)
                        update(index) {
                            $0.stalling = false
                            $0.stalled = true
                        }
                    }
                }
            }
        }
    }
}

/// Follows the frames of a server→client stream (lines, and `CHUNK` headers with their
/// payload) to say how many of the bytes so far a client cannot use if the stream ends now:
/// the incomplete frame, or for a one-chunk `GET` reply (at most 256 KiB, which a sync writes
/// to a temporary it keeps only when verified) everything since its status line.
struct StreamShape {
    private var position = 0
    private var frameStart = 0
    private var line: [UInt8] = []
    private var payloadLeft = 0
    private var smallReplyStart: Int?

    var unusable: Int { position - (smallReplyStart ?? frameStart) }

    mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        var i = 0
        while i < bytes.count {
            if payloadLeft > 0 {
                let n = min(payloadLeft, bytes.count - i)
                payloadLeft -= n
                i += n
                position += n
                if payloadLeft == 0 { frameStart = position }
                continue
            }
            let byte = bytes[i]
            i += 1
            position += 1
            guard byte == 0x0A else { line.append(byte); continue }
            let text = String(decoding: line, as: UTF8.self)
            let lineStart = position - line.count - 1
            line.removeAll(keepingCapacity: true)
            let fields = text.split(separator: " ")
            if fields.first == "CHUNK", fields.count == 6, let wire = Int(fields[3]), wire > 0 {
                payloadLeft = wire
                continue  // the frame (header and payload) ends with the payload
            }
            frameStart = position
            if fields.first == "OK", fields.count == 4, let size = Int(fields[1]), size <= 256 * 1024 {
                smallReplyStart = lineStart  // a GET status: OK SIZE MTIME SHA
            } else if fields.first == "END" || fields.first == "ERR" {
                smallReplyStart = nil
            }
        }
    }
}
