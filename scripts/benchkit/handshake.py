"""The cost of a TLS handshake (scenario `handshake`, issue 14 part 7: ≤ 20 ms on loopback).

`probe_main` runs as its own process inside the link's client namespace (`scripts/bench
--handshake-probe HOST TLS_PORT PLAIN_PORT N`): N connections to each of two ferry servers of
the same source, one with TLS and one with `--plaintext`, alternating, all from this one process,
so no process start is counted. Each connection: TCP connect, the TLS 1.3 handshake (Python's
ssl, i.e. OpenSSL, offering ALPN ferry/1; no session resumption: every handshake is a full one),
the server's greeting, one `LIST random` and its reply, then QUIT. It prints one JSON object:
the seconds of each step of each connection. The server's key is not checked (CERT_NONE): the
server is the run's own, on its own loopback, and checking it is not what is timed.
"""

import json
import socket
import ssl
import statistics
import time

WARM_UP = 5  # connections to each server before the timed ones
LIST_PATH = b"random"  # a directory of one file in every data set


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["ferry/1"])
    return ctx


def connection(host, port, ctx):
    """One connection; (connect, handshake, greeting, list) in seconds, each step's own time
    (handshake 0 without TLS)."""
    t0 = time.perf_counter()
    sock = socket.create_connection((host, port), timeout=10)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t1 = time.perf_counter()
        if ctx is not None:
            sock = ctx.wrap_socket(sock)  # the whole handshake happens here
        t2 = time.perf_counter()
        f = sock.makefile("rb")
        greeting = f.readline()
        if not greeting.startswith(b"FERRY "):
            raise RuntimeError("no ferry greeting: %r" % greeting[:200])
        t3 = time.perf_counter()
        sock.sendall(b"LIST " + LIST_PATH + b"\n")
        reply = f.readline().split()
        if reply[:1] != [b"OK"] or len(reply) != 2:
            raise RuntimeError("LIST answered %r" % b" ".join(reply))
        for _ in range(int(reply[1])):
            f.readline()
        t4 = time.perf_counter()
        sock.sendall(b"QUIT\n")
        f.readline()
        f.close()
    finally:
        sock.close()
    return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def probe_main(host, tls_port, plain_port, count):
    ctx = tls_context()
    servers = (("tls", int(tls_port), ctx), ("plaintext", int(plain_port), None))
    times = {name: [] for name, _, _ in servers}
    for i in range(WARM_UP + int(count)):
        for name, port, context in (servers if i % 2 == 0 else servers[::-1]):
            steps = connection(host, port, context)
            if i >= WARM_UP:
                times[name].append(steps)
    print(json.dumps(times))


def summary(times):
    """Medians in ms of each step and of their sum, from probe_main's lists for one server."""
    names = ("connect", "handshake", "greeting", "list")
    out = {name: 1000 * statistics.median(t[i] for t in times) for i, name in enumerate(names)}
    out["total"] = 1000 * statistics.median(sum(t) for t in times)
    out["to_greeting"] = 1000 * statistics.median(t[0] + t[1] + t[2] for t in times)
    return out
