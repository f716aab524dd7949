"""HOW each kind of scenario runs (docs/BENCHMARKS.md, "Method"): every repetition runs each
tool once, the order alternating; before each run DEST is new and `sync` has flushed the previous
run's writes; the page cache holds the source; on loopback one untimed round runs first. Used
destinations are moved aside and deleted only after all runs of a data set (deleting thousands of
files just before a run makes ext4 scan for inodes that were not recently deleted, which timed the
file system, not the tools). Each row is the median of its repetitions."""

import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from . import handshake, links
from .links import BENCH
from .data import REUSE_CASES, KiB, MiB, generate_reuse, tree_bytes
from .measure import Measurement, ServerWindow, descendants, proc_times
from .processes import RUN_TIMEOUT, Client, evict, flush, log, ns_prefix, warm
from .runners import get_file_args, received_bytes, start_server, sync_args
from .scenarios import FERRY, FERRY_PLAIN

FIGURES = ("wall", "client_cpu", "server_cpu", "client_rss", "server_rss", "server_rss_total", "wire", "app_wire")


def alternating(tools, reps):
    """The tools' order in each repetition: as listed, then reversed, and so on."""
    for rep in range(reps):
        yield rep, tools if rep % 2 == 0 else tools[::-1]


class Bench:
    def __init__(self, opts, sizes, ferry, features, namespaces, tmp, sshd=None):
        self.opts, self.sizes, self.ferry, self.features = opts, sizes, ferry, features
        self.namespaces, self.tmp = namespaces, tmp
        self.sshd = sshd  # the path of sshd for the rsync-ssh rows, or None (they are skipped)
        self.src = os.path.join(opts.data, "src")
        self.dst = os.path.join(opts.data, "dst")
        self.trash = os.path.join(self.dst, "trash")
        self.rows = []
        self.notes = []
        self._servers = {}  # (tool, link) -> a running server, until stop_servers()

    # Servers and single runs ----------------------------------------------------------------

    def link(self, name):
        return links.link(name, self.namespaces)

    def server(self, tool, link_name):
        key = (tool, link_name)
        if key not in self._servers:
            self._servers[key] = start_server(tool, self.link(link_name), self.src, self.ferry, self.features,
                                              self.tmp, self.sshd)
        return self._servers[key]

    def ssh_usable(self, tool, link_name):
        """Starts the sshd of `tool` on the link and logs in once; False (and no more rsync-ssh rows
        in this run, with a note why) if that fails."""
        if not self.sshd:
            return False  # main.run noted why
        if (tool, link_name) in self._servers:
            return True
        try:
            negotiated = self.server(tool, link_name).check()
        except RuntimeError as e:
            self._servers.pop((tool, link_name), None)
            self.note("rsync-ssh rows skipped: %s" % e)
            self.sshd = None
            return False
        self.note("rsync-ssh (%s): `rsync -a -e ssh` to the run's own sshd on %s; ssh's defaults negotiated %s "
                  "(read from `ssh -v`)" % (link_name, self.link(link_name).host, negotiated))
        return True

    def usable(self, tools, link_name):
        """The tools this run can measure on the link (a note says why any other is skipped)."""
        out = []
        for t in tools:
            if t.ssh and not self.ssh_usable(t, link_name):
                continue
            if not self.features.supports(t):
                self.note("%s rows skipped: `ferry serve --help` does not mention `%s`" % (
                    t.name, "%s:" % t.codec if t.codec else "--plaintext"))
                continue
            out.append(t)
        return out

    def stop_servers(self, keep=()):
        """Stops the servers but those of `keep`, a set of (tool, link name)."""
        for key in [k for k in self._servers if k not in keep]:
            self._servers.pop(key).stop()

    def measure(self, kind, args, server, link, kill_when=None):
        """One client run against `server`, with the server's share of the figures. With
        `kill_when`, the client (and its children) get SIGKILL as soon as it returns True."""
        with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
            killed = False
            with ServerWindow(server) as window:
                client = Client(args, link.client_ns, out, err)
                window.watch(client)
                if kill_when is not None:
                    deadline = time.monotonic() + RUN_TIMEOUT
                    while not client.wait(0.002) and time.monotonic() < deadline:
                        if kill_when():
                            kill_tree(client.proc.pid)
                            killed = True
                            break
                client.finish()
                client_rss = window.client_rss(client)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if client.status != 0 and not killed:
            raise RuntimeError("client failed (%d): %s\n%s" % (client.status, " ".join(args), stderr[-2000:]))
        return Measurement(wall=client.wall, client_cpu=client.cpu, client_rss=client_rss,
                           server_cpu=window.cpu, server_rss=window.rss, server_rss_total=window.rss_total,
                           wire=window.wire, app_wire=received_bytes(kind, stdout), stdout=stdout, killed=killed)

    def sync(self, tool, link_name, subpath, dest):
        server = self.server(tool, link_name)
        args = sync_args(tool, server, self.ferry, subpath, dest)
        return self.measure(tool.kind, args, server, self.link(link_name))

    def dest(self, tool, what):
        return os.path.join(self.dst, tool.name.replace(":", "-"), what)

    def record(self, scenario, dataset, tool, results, extra=None):
        row = {"scenario": scenario, "dataset": dataset, "tool": tool.name, "n": len(results)}
        for key in FIGURES:
            values = [getattr(r, key) for r in results if getattr(r, key) is not None]
            row[key] = statistics.median(values) if values else None
        row["cpu"] = (row["client_cpu"] or 0) + (row["server_cpu"] or 0)
        row["walls"] = [round(r.wall, 3) for r in results]
        row.update(extra or {})
        self.rows.append(row)
        log("%-12s %-10s %-13s wall %s  cpu %.2f s  rss c/s %.1f/%.1f MiB  wire %s" % (
            scenario, dataset, tool.name, row["walls"], row["cpu"], (row["client_rss"] or 0) / KiB,
            (row["server_rss"] or 0) / KiB, "?" if row["wire"] is None else "%.1f MiB" % (row["wire"] / MiB)))
        return row

    # Before everything -------------------------------------------------------------------------

    def prime(self):
        """Reads all source data once (page cache) and lets a ferry server hash it once (its hash
        cache, shared by every ferry server of the run: the steady state of a server after its
        first sync). rsync has no such cache and needs none for a full sync."""
        for root, _, files in os.walk(self.src):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    while f.read(4 * MiB):
                        pass
        dest = self.dest(FERRY, "prime")
        fresh_dir(dest)
        server = self.server(FERRY, "loopback")
        self.measure("ferry", [self.ferry, "sync", server.address, dest, "--dry-run", "--quiet"] + server.trust, server,
                     self.link("loopback"))
        self.stop_servers()
        shutil.rmtree(dest, ignore_errors=True)

    # 1 and 2: full syncs ----------------------------------------------------------------------

    def full_sync(self, scenario):
        tools = self.usable(scenario.tools, scenario.link)
        if any(t.codec == "zstd" for t in tools):
            self.note("ferry-zstd rows: a server sends zstd only to clients that enable it; one that does not "
                      "gets zlib (then the rows' wire bytes are those of zlib, not zstd's)")
        ds = scenario.dataset
        if scenario.link == "loopback":  # one untimed round (on the slow links the cache is warm already)
            for t in tools:
                dest = self.dest(t, ds)
                fresh_dir(dest)
                self.sync(t, scenario.link, ds, dest)
                shutil.rmtree(dest, ignore_errors=True)
            flush()
            time.sleep(0.5)
        results = {t: [] for t in tools}
        for _, order in alternating(tools, self.opts.slow_reps if scenario.slow else self.opts.reps):
            for t in order:
                dest = self.dest(t, ds)
                fresh_dir(dest)
                flush()
                warm(os.path.join(self.src, ds))
                results[t].append(self.sync(t, scenario.link, ds, dest))
                retire(dest, self.trash)
        for t in tools:
            self.record(scenario.link, ds, t, results[t])
        empty_trash(self.trash)

    # 3: no-op re-sync --------------------------------------------------------------------------

    def noop(self, scenario):
        tools = self.usable(scenario.tools, scenario.link)
        for t in tools:
            fresh_dir(self.dest(t, "small"))
            self.sync(t, scenario.link, "small", self.dest(t, "small"))
        flush()
        results = {t: [] for t in tools}
        for _, order in alternating(tools, max(self.opts.reps, 3)):
            for t in order:
                results[t].append(self.sync(t, scenario.link, "small", self.dest(t, "small")))
        for t in tools:
            self.record("noop", "small", t, results[t])
            shutil.rmtree(self.dest(t, "small"), ignore_errors=True)

    # 4: delta ------------------------------------------------------------------------------------

    def delta(self, scenario):
        tools = list(scenario.tools)
        base = os.path.join(self.opts.data, "base", "delta.bin")
        results = {t: [] for t in tools}
        for rep, order in alternating(tools, self.opts.reps + 1):  # the first round is a warm-up
            for t in order:
                dest = self.dest(t, "delta")
                fresh_dir(dest)
                shutil.copy2(base, os.path.join(dest, "delta.bin"))
                flush()
                r = self.sync(t, scenario.link, "delta", dest)
                if rep > 0:
                    results[t].append(r)
        for t in tools:
            self.record("delta", "%dMiB" % (self.sizes.delta // MiB), t, results[t])
            shutil.rmtree(self.dest(t, "delta"), ignore_errors=True)

    # 4b: reuse of data already in DEST (issue 15) ------------------------------------------------

    def reuse(self, scenario):
        """Each reuse case: DEST starts as DATA/reuse-base/CASE, then one sync with --delete per
        tool; the copy must equal the server's tree byte for byte. The first round is a warm-up
        (ferry's server then has its chunk maps, as after any earlier sync)."""
        generate_reuse(self.opts.data, self.sizes)
        tools = list(scenario.tools)
        for case in REUSE_CASES:
            base = os.path.join(self.opts.data, "reuse-base", case)
            results = {t: [] for t in tools}
            for rep, order in alternating(tools, self.opts.reps + 1):
                for t in order:
                    dest = self.dest(t, "reuse-" + case)
                    fresh_dir(dest)
                    shutil.copytree(base, dest, dirs_exist_ok=True)
                    flush()
                    server = self.server(t, scenario.link)
                    args = sync_args(t, server, self.ferry, "reuse/" + case, dest)
                    # rsync: --delete-after, or the deletion may take a renamed file away before
                    # --fuzzy can use it as a basis (rsync(1), --fuzzy).
                    args = args + ["--delete"] if t.kind == "ferry" else args[:1] + ["--delete-after"] + args[1:]
                    r = self.measure(t.kind, args, server, self.link(scenario.link))
                    different = differences(os.path.join(self.src, "reuse", case), dest)
                    if different:
                        raise RuntimeError("reuse %s: %s's copy differs from the server's: %s" % (case, t.name, different[:5]))
                    if rep > 0:
                        results[t].append(r)
            changed = new_bytes(os.path.join(self.src, "reuse", case), base)
            for t in tools:
                self.record("reuse", case, t, results[t], {"new_bytes": changed})
                shutil.rmtree(self.dest(t, "reuse-" + case), ignore_errors=True)

    # 5: resume -----------------------------------------------------------------------------------

    def resume(self, scenario):
        tools = list(scenario.tools)
        size = self.sizes.random
        link = self.link(scenario.link)
        results = {t: [] for t in tools}
        for _, order in alternating(tools, self.opts.reps):
            for t in order:
                server = self.server(t, scenario.link)
                dest = self.dest(t, "resume")
                fresh_dir(dest)
                flush()
                args = get_file_args(t, server, self.ferry, "random/big.bin", os.path.join(dest, "big.bin"))
                first = self.measure(t.kind, args, server, link, kill_when=lambda: largest_file(dest) >= size // 2)
                if not first.killed:
                    log("resume: the %s client finished before it could be cut; skipping this round" % t.name)
                    continue
                time.sleep(0.2)
                on_disk = partial_bytes(dest)
                flush()
                r = self.measure(t.kind, args, server, link)
                r.remaining = size - on_disk
                results[t].append(r)
        for t in tools:
            if results[t]:
                excess = [r.app_wire - r.remaining for r in results[t] if r.app_wire is not None]
                self.record("resume", "random-half", t, results[t],
                            {"remaining": statistics.median([r.remaining for r in results[t]]),
                             "excess": statistics.median(excess) if excess else None})
            shutil.rmtree(self.dest(t, "resume"), ignore_errors=True)

    # 6: concurrent clients -----------------------------------------------------------------------

    def concurrent(self, scenario):
        n = self.sizes.concurrent_clients
        tools = list(scenario.tools)
        link = self.link(scenario.link)
        per_client = tree_bytes(os.path.join(self.src, "mixed"))
        for t in tools:  # warm-up
            dest = self.dest(t, "conc-warm")
            fresh_dir(dest)
            self.sync(t, scenario.link, "mixed", dest)
            shutil.rmtree(dest, ignore_errors=True)
        for t in tools:
            base = self.dest(t, "conc")
            fresh_dir(base)
            flush()
            server = self.server(t, scenario.link)
            with ServerWindow(server) as window:
                t0 = time.monotonic()
                clients = []
                for i in range(n):
                    dest = os.path.join(base, "c%02d" % i)
                    os.makedirs(dest)
                    clients.append(Client(sync_args(t, server, self.ferry, "mixed", dest), link.client_ns,
                                          subprocess.DEVNULL, subprocess.DEVNULL))
                    window.watch(clients[-1])
                client_rss = 0
                for c in clients:
                    c.finish(max(0.0, t0 + RUN_TIMEOUT - time.monotonic()))
                    client_rss = max(client_rss, window.client_rss(c))
            wall = max(c.ended for c in clients) - t0
            r = Measurement(wall=wall, client_cpu=sum(c.cpu for c in clients),
                            client_rss=client_rss, server_cpu=window.cpu,
                            server_rss=window.rss, server_rss_total=window.rss_total, wire=window.wire)
            self.record("concurrent", "mixed x%d" % n, t, [r],
                        {"throughput": n * per_client / wall, "failures": sum(c.status != 0 for c in clients)})
            retire(base, self.trash)
        empty_trash(self.trash)

    # 7: the TLS handshake ------------------------------------------------------------------------

    PROBES = 100  # connections to each server from one process (handshake.probe_main)
    LS_RUNS = 40  # `ferry ls` processes of each kind

    def handshake(self, scenario):
        """handshake.py's in-process probe against a TLS and a --plaintext server, then whole
        `ferry ls` processes of each (and `ferry --version`, a process that starts and exits
        without connecting), alternating. The servers' CPU over the probe is divided by its
        connections."""
        if not self.features.tls:
            self.note("handshake skipped: this ferry has no TLS (`ferry serve --help` does not mention --plaintext)")
            return
        link = self.link(scenario.link)
        tls, plain = self.server(FERRY, scenario.link), self.server(FERRY_PLAIN, scenario.link)
        port = {s: s.address.rsplit(":", 1)[1] for s in (tls, plain)}
        cpu0 = {s: proc_times(s.proc.pid) for s in (tls, plain)}
        probe = subprocess.run(ns_prefix(link.client_ns) + [
            sys.executable, BENCH, "--handshake-probe", link.host, port[tls], port[plain], str(self.PROBES)],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
        server_cpu = {s: 1000 * (proc_times(s.proc.pid) - cpu0[s]) / (self.PROBES + handshake.WARM_UP)
                      for s in (tls, plain)}
        times = json.loads(probe.stdout)
        commands = {
            "tls": [self.ferry, "ls", tls.address + "/random", "--json"] + tls.trust,
            "plaintext": [self.ferry, "ls", plain.address + "/random", "--json"] + plain.trust,
            "start": [self.ferry, "--version"],
        }
        walls = {name: [] for name in commands}
        for rep, order in alternating(list(commands), self.LS_RUNS + 1):  # the first round is a warm-up
            for name in order:
                client = Client(commands[name], link.client_ns, subprocess.DEVNULL, subprocess.DEVNULL)
                client.finish(60)
                if client.status != 0:
                    raise RuntimeError("failed (%d): %s" % (client.status, " ".join(commands[name])))
                if rep > 0:
                    walls[name].append(client.wall)
        row = {"scenario": "handshake", "dataset": "LIST random", "tool": "ferry", "n": self.PROBES,
               "probe": {name: handshake.summary(t) for name, t in times.items()},
               "server_cpu_ms": {"tls": server_cpu[tls], "plaintext": server_cpu[plain]},
               "ls_ms": {name: 1000 * statistics.median(w) for name, w in walls.items()},
               "ls_min_ms": {name: 1000 * min(w) for name, w in walls.items()},
               "ls_walls": {name: [round(x, 4) for x in w] for name, w in walls.items()}}
        self.rows.append(row)
        p = row["probe"]
        log("handshake: probe TLS %.2f ms, plaintext %.2f ms; ferry ls TLS %.1f ms, plaintext %.1f ms, --version %.1f ms"
            % (p["tls"]["total"], p["plaintext"]["total"], row["ls_ms"]["tls"], row["ls_ms"]["plaintext"],
               row["ls_ms"]["start"]))

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)
            log(text)


def kill_tree(pid):
    """SIGKILL to a client and its children (rsync's forked receiver)."""
    for p in descendants(pid) + [pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def largest_file(dest_dir):
    """Bytes of the largest file in `dest_dir` (ferry's .NAME.ferry-partial, rsync's file written
    --inplace)."""
    best = 0
    try:
        for name in os.listdir(dest_dir):
            if not name.endswith(".meta"):
                try:
                    best = max(best, os.lstat(os.path.join(dest_dir, name)).st_size)
                except OSError:
                    pass
    except OSError:
        pass
    return best


def partial_bytes(dest):
    """Bytes already in DEST after an interrupted run: ferry's verified prefix (its sidecar), or
    the size of the file rsync was writing in place."""
    for name in os.listdir(dest):
        if name.endswith(".ferry-partial.meta"):
            with open(os.path.join(dest, name)) as f:
                m = re.search(r"verified=\s*(\d+)", f.read())
                if m:
                    return int(m.group(1))
    return largest_file(dest)


def retire(path, trash):
    """Moves a used destination aside; `empty_trash` deletes it after the data set's runs (a tree
    deleted just before the next run makes that run's file creations slow: ext4 skips inodes
    freed moments ago). Its pages leave the page cache now (`evict`): kept, they would push every
    later run into memory this VM has not touched yet, where writing costs 20 times more."""
    if os.path.exists(path):
        os.makedirs(trash, exist_ok=True)
        moved = os.path.join(trash, "%d" % time.monotonic_ns())
        os.rename(path, moved)
        evict(moved)


def empty_trash(trash):
    shutil.rmtree(trash, ignore_errors=True)
    flush()


def file_hashes(root):
    """SHA-256 of every regular file below `root` (dot files left out), by relative path."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            full = os.path.join(d, n)
            if not n.startswith(".") and os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    out[os.path.relpath(full, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def new_bytes(src, base):
    """The bytes of the files of `src` that `base` does not hold under the same path."""
    before = file_hashes(base)
    return sum(os.path.getsize(os.path.join(src, rel)) for rel, h in file_hashes(src).items() if before.get(rel) != h)


def differences(src, dest):
    """Relative paths of regular files whose bytes differ between the trees (or exist in one)."""
    a, b = file_hashes(src), file_hashes(dest)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
