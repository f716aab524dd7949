"""Every process, namespace and temporary path a run creates goes through CLEANUP, which removes
them all on a normal exit, on an exception and on SIGINT/SIGTERM/SIGHUP; every wait is bounded.

Clients are timed exactly: their exit is seen through a pidfd (no polling interval added to the
wall time; Popen.wait(timeout) sleeps in steps of up to 50 ms) and their CPU time comes from
wait4's rusage, which includes the children they waited for (rsync's forked receiver)."""

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time

RUN_TIMEOUT = 600  # seconds; no single client run may take longer
STOP_TIMEOUT = 10  # seconds a process gets to exit after SIGTERM, then SIGKILL


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


class Interrupted(Exception):
    """Raised in the main thread when SIGINT, SIGTERM or SIGHUP arrives."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)


_shield_depth = 0
_pending_signal = None


def _on_signal(signum, _frame):
    global _pending_signal
    if _shield_depth:
        _pending_signal = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def shielded():
    """A signal arriving inside is raised only at its end: a process is never started without
    being tracked for clean-up."""
    global _shield_depth, _pending_signal
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if _shield_depth == 0 and _pending_signal is not None:
            signum, _pending_signal = _pending_signal, None
            raise Interrupted(signum)


def catch_signals():
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)


def ignore_signals_while_cleaning():
    def say(_signum, _frame):
        log("cleaning up, one moment")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, say)


class Cleanup:
    """What this run started or created; `run` removes it all, newest first."""

    def __init__(self):
        self.procs = []
        self.namespaces = []
        self.paths = []

    def spawn(self, args, **popen_options):
        with shielded():
            proc = subprocess.Popen(args, **popen_options)
            self.procs.append(proc)
        return proc

    def forget(self, proc):
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self, proc, sig=signal.SIGTERM):
        """Ends one process this run started (by its PID), SIGKILL if SIGTERM is not enough."""
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
            except ProcessLookupError:
                pass
        self.forget(proc)

    def namespace(self, name):
        self.namespaces.append(name)

    def path(self, path):
        """A temporary file or directory, deleted at the end whatever happens."""
        self.paths.append(path)
        return path

    def run(self):
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as e:  # keep cleaning up
                log("could not stop pid", proc.pid, e)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", ns], stderr=subprocess.DEVNULL, check=False, timeout=30)
        self.namespaces.clear()
        for path in reversed(self.paths):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self.paths.clear()


CLEANUP = Cleanup()


def ns_prefix(ns):
    """`ip netns exec NS` execs the command in place, so the PID we get is the tool's own."""
    return ["ip", "netns", "exec", ns] if ns else []


def sh(args, timeout=60, **options):
    """A short command that must succeed (ip, tc, sysctl, swift --show-bin-path)."""
    return subprocess.run(args, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, **options)


def flush():
    """Writes back dirty pages so one run's writeback does not land in the next run's time."""
    subprocess.run(["sync"], check=False, timeout=600)


def evict(path):
    """Drops the files under `path` from the page cache, once written back (`flush`): each
    measured run starts with the same memory, whatever the runs before it wrote.

    Why: on this kind of VM the host backs only the guest memory in recent use. Writing 256 MiB
    into a page cache that keeps growing (each run's DEST kept until the data set is done) costs
    1.0-1.2 s of system time once the pages are new to the host, against 0.05 s in pages freed
    and reused (`dd` of 256 MiB files, kept one after another: 0.05 s for the first four, 1.15
    and 1.24 s for the fifth and sixth). A tool that waits for the network hides that cost; one
    that keeps the CPU busy pays it in wall time, so the figures measured the VM, not the tools.
    POSIX_FADV_DONTNEED needs no privileges and keeps the source in the cache."""
    flush()
    for root, _, files in os.walk(path):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def warm(path):
    """Reads every file under `path` once, so the page cache holds the source when a run starts,
    as the method says, whatever the runs before it wrote (a tool that reads faster than the
    link carries would otherwise be the only one to pay for a source read from disk). Cheap
    when cached: 256 MiB in ~35 ms here."""
    for root, _, files in os.walk(path):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass
            except OSError:
                pass


def wait_for_line(path, pattern, proc, timeout):
    """The first line of the file `path` (a process's stdout) that matches `pattern`, or None if
    the process exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = pattern.search(line)
                if m:
                    return m
        if proc.poll() is not None:
            return None
        time.sleep(0.01)
    return None


class Client:
    """A client run: started now, its end seen exactly, its CPU time from wait4."""

    def __init__(self, args, ns, stdout, stderr):
        self.started = time.monotonic()
        self.proc = CLEANUP.spawn(ns_prefix(ns) + args, stdout=stdout, stderr=stderr)
        self.ended = None
        self.status = None
        self.cpu = 0.0  # user + system seconds, waited-for children included
        try:
            self._pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):  # kernel < 5.3 or Python < 3.9: poll wait4 every ms
            self._pidfd = None

    @property
    def wall(self):
        return self.ended - self.started

    def wait(self, timeout):
        """True once the client has exited (and is reaped), False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.ended is None and not self._reap_within(deadline - time.monotonic()):
            if time.monotonic() >= deadline:
                return False
        return True

    def _reap_within(self, timeout):
        """Reaps the client if it exits within `timeout` seconds: a poll on its pidfd, or without
        pidfds one WNOHANG check after 1 ms."""
        if self._pidfd is not None:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            if not poller.poll(max(0.0, timeout) * 1000):
                return False
            ended, flags = time.monotonic(), 0
        else:
            time.sleep(0.001)
            ended, flags = time.monotonic(), os.WNOHANG
        with shielded():  # reaped and marked reaped together: its PID is never signalled after
            pid, status, usage = os.wait4(self.proc.pid, flags)
            if pid != self.proc.pid:
                return False
            self._reaped(ended, status, usage)
        return True

    def _reaped(self, ended, status, usage):
        self.ended = ended
        self.status = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.status  # reaped here, not by Popen
        self.cpu = usage.ru_utime + usage.ru_stime
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        CLEANUP.forget(self.proc)

    def finish(self, timeout=RUN_TIMEOUT):
        if not self.wait(timeout):
            raise RuntimeError("client still running after %d s: %s" % (timeout, " ".join(self.proc.args)))
