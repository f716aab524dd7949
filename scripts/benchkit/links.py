"""The links, all inside network namespaces this run creates (and deletes) itself; no packet
leaves the machine:

    loopback  the `lo` of namespace ferrybench-lo (its counters see only the benchmark)
    lan1g     namespaces ferrybench-srv and ferrybench-cli joined by a veth pair, tc tbf at
              1 Gbit/s on both ends, no added delay
    lan100m   the same two namespaces joined by two TUN devices and `relay_main` below:
              serialisation at 100 Mbit/s, 2 ms each way, MTU 1500, a 40 ms drop-tail queue
              (this kernel has no netem, so tc cannot add delay)

Addresses are 10.213.90.0/24, used only inside those namespaces. IPv6 is off in the two LAN
namespaces. Without root there are no namespaces: the loopback scenarios run on 127.0.0.1 in
the current namespace and the shaped links are skipped.
"""

import collections
import ctypes
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import time

from .processes import CLEANUP, sh, wait_for_line

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")

NS_LO = "ferrybench-lo"
NS_SRV = "ferrybench-srv"
NS_CLI = "ferrybench-cli"
VETH_SRV = "fbench-s"
VETH_CLI = "fbench-c"
TUN_SRV = "fbench-ts"
TUN_CLI = "fbench-tc"
SUBNET = "10.213.90"
SRV_ADDR = SUBNET + ".1"
CLI_ADDR = SUBNET + ".2"
TUN_SRV_ADDR = SUBNET + ".101"
TUN_CLI_ADDR = SUBNET + ".102"

LAN100M_RATE = 100_000_000  # bit/s
LAN100M_DELAY = 0.002  # seconds, each way
LAN100M_QUEUE = 0.04  # seconds of queued transmission before the relay drops


class Link:
    """Where a scenario's server and client run: namespaces, the server's address and the
    interface whose counters give the wire bytes."""

    def __init__(self, server_ns, client_ns, host, dev):
        self.server_ns, self.client_ns, self.host, self.dev = server_ns, client_ns, host, dev


def link(name, namespaces):
    if name == "loopback":
        return Link(NS_LO, NS_LO, "127.0.0.1", "lo") if namespaces else Link(None, None, "127.0.0.1", "lo")
    if name == "lan1g":
        return Link(NS_SRV, NS_CLI, SRV_ADDR, VETH_SRV)
    if name == "lan100m":
        return Link(NS_SRV, NS_CLI, TUN_SRV_ADDR, TUN_SRV)
    raise ValueError("unknown link %r" % name)


def new_namespace(ns):
    sh(["ip", "netns", "add", ns])
    CLEANUP.namespace(ns)
    sh(["ip", "-n", ns, "link", "set", "lo", "up"])


def setup_namespaces(links, tmp):
    """The loopback namespace always; the server and client namespaces when `links` names a
    shaped link ("lan1g", "lan100m")."""
    for ns in (NS_LO, NS_SRV, NS_CLI):  # leftovers of a killed run of this script
        subprocess.run(["ip", "netns", "delete", ns], stderr=subprocess.DEVNULL, check=False, timeout=30)
    new_namespace(NS_LO)
    if not links:
        return
    for ns in (NS_SRV, NS_CLI):
        new_namespace(ns)
        sh(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
    if "lan1g" in links:
        sh(["ip", "link", "add", VETH_SRV, "netns", NS_SRV, "type", "veth", "peer", "name", VETH_CLI, "netns", NS_CLI])
        for ns, dev, addr in ((NS_SRV, VETH_SRV, SRV_ADDR), (NS_CLI, VETH_CLI, CLI_ADDR)):
            sh(["ip", "-n", ns, "addr", "add", addr + "/24", "dev", dev])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
            sh(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                "rate", "1gbit", "burst", "256kb", "latency", "20ms"])
    if "lan100m" in links:
        start_relay(tmp)
        for ns, dev, mine, peer in ((NS_SRV, TUN_SRV, TUN_SRV_ADDR, TUN_CLI_ADDR),
                                    (NS_CLI, TUN_CLI, TUN_CLI_ADDR, TUN_SRV_ADDR)):
            sh(["ip", "link", "set", dev, "netns", ns])
            sh(["ip", "-n", ns, "link", "set", dev, "mtu", "1500"])
            sh(["ip", "-n", ns, "addr", "add", mine, "peer", peer, "dev", dev])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])


def start_relay(tmp):
    """The relay creates the two TUN devices (down, without addresses, until they are moved into
    the namespaces) and says "ready"."""
    out = CLEANUP.path(os.path.join(tmp, "relay.out"))
    with open(out, "w") as f:
        relay = CLEANUP.spawn([sys.executable, BENCH, "--relay", TUN_SRV, TUN_CLI], stdout=f)
    if not wait_for_line(out, re.compile("^ready$"), relay, timeout=10):
        raise RuntimeError("the link relay did not start")


def relay_main(dev_a, dev_b):
    """A point-to-point link between two TUN devices: serialisation at LAN100M_RATE, a one-way
    LAN100M_DELAY and a drop-tail queue of LAN100M_QUEUE. Runs until its parent exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: never outlive the benchmark
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the benchmark's to handle
    parent = os.getppid()
    fds = []
    for name in (dev_a, dev_b):
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0001 | 0x1000))  # TUNSETIFF, TUN|NO_PI
        os.set_blocking(fd, False)
        fds.append(fd)
    print("ready", flush=True)
    other = {fds[0]: fds[1], fds[1]: fds[0]}
    queue = {fd: collections.deque() for fd in fds}  # packets read from fd, due for the other side
    free_at = {fd: 0.0 for fd in fds}
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while True:
        now = time.monotonic()
        due = [q[0][0] for q in queue.values() if q]
        timeout = max(0.0, min(due) - now) if due else 0.5
        for fd, _ in poller.poll(timeout * 1000):
            for _ in range(64):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                now = time.monotonic()
                start = max(now, free_at[fd])
                if start - now > LAN100M_QUEUE:
                    continue  # drop tail
                free_at[fd] = start + len(packet) * 8 / LAN100M_RATE
                queue[fd].append((free_at[fd] + LAN100M_DELAY, packet))
        now = time.monotonic()
        for fd, q in queue.items():
            while q and q[0][0] <= now:
                try:
                    os.write(other[fd], q.popleft()[1])
                except OSError:
                    pass
        if not due and os.getppid() != parent:
            return
