"""The figures of one run (docs/BENCHMARKS.md, "Figures"):

    wall        client start to exit (processes.Client)
    CPU         user+sys of the client (wait4's rusage, its children included) plus the server's, read from
                /proc/PID/stat: utime+stime, and cutime+cstime for the per-connection processes
                the rsync daemon forks and reaps
    RSS         the client's VmHWM, polled every 10 ms (PeakRSS); the server's VmHWM, reset before the run through
                /proc/PID/clear_refs, and for the rsync daemon the largest VmHWM among its
                processes and the largest sum of their VmRSS, polled every 10 ms
    wire        IP bytes in both directions on the server namespace's interface
"""

import dataclasses
import os
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Measurement:
    wall: float
    client_cpu: float
    client_rss: int  # KiB
    server_cpu: float
    server_rss: int  # KiB, the largest single process
    server_rss_total: int  # KiB, the largest sum over the server's processes
    wire: int = None  # bytes; None without namespaces
    app_wire: int = None  # the tool's own count of received payload bytes
    stdout: str = ""
    killed: bool = False
    remaining: int = None  # resume: bytes that were still missing


def proc_times(pid):
    """utime+stime+cutime+cstime of a live process, in seconds (children it reaped included)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def status_kib(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    for c in f.read().split():
                        out.append(int(c))
                        todo.append(int(c))
        except OSError:
            pass
    return out


def net_bytes(pid, dev):
    """IP bytes both directions on `dev` in the namespace of process `pid`."""
    try:
        with open("/proc/%d/net/dev" % pid) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == dev:
                    v = rest.split()
                    rx, tx = int(v[0]), int(v[8])
                    return rx if dev == "lo" else rx + tx  # on lo every packet is counted twice
    except OSError:
        pass
    return None


class PeakRSS:
    """Samples process trees every 10 ms, each from a root PID: the peak of any one process's VmHWM
    and the peak of the tree's summed VmRSS (rsync forks a process per client). VmHWM is that of
    the process's current program, so a client's figure is its own, not that of the Python process
    it was started from (wait4's ru_maxrss would include it). A peak reached in the last 10 ms of
    a process's life is missed."""

    def __init__(self, *roots):
        self._peaks = {pid: [0, 0] for pid in roots}
        self._retired = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def watch(self, pid):
        with self._lock:
            self._peaks.setdefault(pid, [0, 0])

    def retire(self, pid):
        """Stops sampling a reaped process (its PID may be reused); its peak stays."""
        with self._lock:
            self._retired.add(pid)

    def peak(self, pid):
        """(largest VmHWM of one process, largest VmRSS sum) of the tree from `pid`, in KiB."""
        with self._lock:
            return tuple(self._peaks[pid])

    def _loop(self):
        while not self._stop.is_set():
            with self._lock:
                roots = [pid for pid in self._peaks if pid not in self._retired]
            for root in roots:
                one, total = 0, 0
                for p in [root] + descendants(root):
                    one = max(one, status_kib(p, "VmHWM"))
                    total += status_kib(p, "VmRSS")
                with self._lock:
                    peak = self._peaks[root]
                    peak[0], peak[1] = max(peak[0], one), max(peak[1], total)
            self._stop.wait(0.01)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)


class ServerWindow:
    """The server's share of a measurement: its CPU, peak RSS and wire bytes between entering
    and leaving the `with` block (clients run inside it)."""

    def __init__(self, server):
        self.server = server
        self.pid = server.proc.pid

    def __enter__(self):
        try:
            with open("/proc/%d/clear_refs" % self.pid, "w") as f:
                f.write("5")  # resets VmHWM
        except OSError:
            pass
        self.cpu0 = proc_times(self.pid)
        self.net0 = net_bytes(self.pid, self.server.dev)
        self.peaks = PeakRSS(self.pid).start()
        return self

    def watch(self, client):
        """Samples the client's peak RSS too (see PeakRSS)."""
        self.peaks.watch(client.proc.pid)

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self.settle()
        finally:
            self.peaks.stop()
        if exc[0] is not None:
            return
        self.cpu = proc_times(self.pid) - self.cpu0
        net1 = net_bytes(self.pid, self.server.dev)
        self.wire = net1 - self.net0 if self.net0 is not None and net1 is not None else None
        peak_process, self.rss_total = self.peaks.peak(self.pid)
        self.rss = max(peak_process, status_kib(self.pid, "VmHWM"))

    def client_rss(self, client):
        self.peaks.retire(client.proc.pid)
        return self.peaks.peak(client.proc.pid)[0]

    def settle(self):
        """Waits (at most 2 s) until the rsync daemon has reaped its per-connection children, so
        their CPU time is in the daemon's cutime/cstime."""
        for _ in range(200):
            if not descendants(self.pid):
                return
            time.sleep(0.01)
