"""The tools' servers and clients:

    ferry serve SRC --bind HOST --port 0 --no-discovery --state-dir TMP/ferry-state --compress MODE [--plaintext]
    ferry sync HOST:PORT/SET DEST --json --quiet --fingerprint FP (the one the server printed; or --plaintext)
    rsync --daemon --no-detach (one read-only module `src`, use chroot = no)
    rsync -a --stats [OPTIONS] rsync://HOST:PORT/src/SET/ DEST/

No server is ever given a name to look up or `--announce`: they bind the link's own address.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

from .processes import CLEANUP, log, ns_prefix, sh, wait_for_line

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTENING = re.compile(r"listening on .*:(\d+)")
FINGERPRINT = re.compile(r"fingerprint (\S+)")


class FerryFeatures:
    """What this ferry binary's `serve --compress` accepts, read from `ferry serve --help`:
    `zlib:N`/`zstd:N` arrived with the zstd codec (before it, a bare level 1-9 meant zlib)."""

    def __init__(self, ferry):
        help_text = sh([ferry, "serve", "--help"], timeout=30).stdout
        self.zlib_prefix = "zlib:" in help_text
        self.zstd = "zstd:" in help_text
        # TLS by default arrived with --plaintext (and the fingerprint line after `listening on`).
        self.tls = "--plaintext" in help_text

    def supports(self, tool):
        return (tool.codec != "zstd" or self.zstd) and (not tool.plaintext or self.tls)

    def compress_argument(self, mode):
        if mode.startswith("zlib:") and not self.zlib_prefix:
            return mode[len("zlib:"):]
        return mode


class FerryServer:
    kind = "ferry"

    def __init__(self, link, src, ferry, compress, tmp, tls, plaintext):
        self.dev = link.dev
        state = os.path.join(tmp, "ferry-state")  # one hash cache for every ferry server (Bench.prime)
        os.makedirs(state, exist_ok=True)
        out = CLEANUP.path(os.path.join(tmp, "ferry-serve-%d.out" % time.monotonic_ns()))
        with open(out, "w") as f:
            self.proc = CLEANUP.spawn(
                ns_prefix(link.server_ns) + [ferry, "serve", src, "--bind", link.host, "--port", "0",
                                             "--no-discovery", "--state-dir", state, "--compress", compress]
                + (["--plaintext"] if plaintext else []),
                stdout=f, stderr=subprocess.DEVNULL)
        m = wait_for_line(out, LISTENING, self.proc, timeout=30)
        if not m:
            CLEANUP.stop(self.proc)
            raise RuntimeError("ferry serve --compress %s did not start (see `ferry serve --help`)" % compress)
        self.address = "%s:%s" % (link.host, m.group(1))
        # What the client passes to trust this server: the fingerprint it printed, or --plaintext.
        self.trust = []
        if plaintext:
            self.trust = ["--plaintext"]
        elif tls:
            fp = wait_for_line(out, FINGERPRINT, self.proc, timeout=10)
            if not fp:
                CLEANUP.stop(self.proc)
                raise RuntimeError("ferry serve printed no fingerprint")
            self.trust = ["--fingerprint", fp.group(1)]

    def stop(self):
        CLEANUP.stop(self.proc)


class RsyncDaemon:
    kind = "rsync"

    def __init__(self, link, src, tmp):
        self.dev = link.dev
        conf = os.path.join(tmp, "rsyncd-%s.conf" % (link.server_ns or "default"))
        # As root the daemon would switch to nobody unless told to stay; as anyone else it cannot
        # switch at all (and fails on setgroups if asked to).
        stay = "uid = %d\ngid = %d\n" % (os.getuid(), os.getgid()) if os.geteuid() == 0 else ""
        with open(conf, "w") as f:
            f.write("use chroot = no\nmax connections = 0\nlog file = %s\npid file = %s\n%s"
                    "[src]\npath = %s\nread only = yes\n" % (
                        os.path.join(tmp, "rsyncd.log"), os.path.join(tmp, "rsyncd-%d.pid" % time.time_ns()),
                        stay, src))
        for _ in range(20):  # a free port can be taken between probing and binding: retry
            port = free_port()
            self.proc = CLEANUP.spawn(ns_prefix(link.server_ns) + [
                "rsync", "--daemon", "--no-detach", "--address", link.host, "--port", str(port), "--config", conf],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._ready(link, port):
                break
            CLEANUP.stop(self.proc)
        else:
            raise RuntimeError("rsync --daemon did not start")
        self.address = "rsync://%s:%d/src" % (link.host, port)

    def _ready(self, link, port):
        for _ in range(100):
            if self.proc.poll() is not None:
                return False
            probe = subprocess.run(ns_prefix(link.server_ns) + ["rsync", "--contimeout=2",
                                                                "rsync://%s:%d/" % (link.host, port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
            if probe.returncode == 0:
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        CLEANUP.stop(self.proc)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tool, link, src, ferry, features, tmp):
    if tool.kind == "ferry":
        return FerryServer(link, src, ferry, features.compress_argument(tool.compress), tmp, features.tls, tool.plaintext)
    return RsyncDaemon(link, src, tmp)


def sync_args(tool, server, ferry, subpath, dest):
    """The client command line of a full sync of `subpath` into `dest`."""
    if tool.kind == "ferry":
        return [ferry, "sync", server.address + "/" + subpath, dest, "--json", "--quiet"] + server.trust
    return ["rsync", "-a", "--stats"] + list(tool.rsync_options) + [server.address + "/" + subpath + "/", dest + "/"]


def get_file_args(tool, server, ferry, path, dest_file):
    """One file: `ferry get` or `rsync --inplace` (what a SIGKILL leaves behind is then the basis
    of the next run: rsync's own --partial keeps a file only after a gentler signal)."""
    if tool.kind == "ferry":
        return [ferry, "get", server.address + "/" + path, dest_file, "--json"] + server.trust
    return ["rsync", "-a", "--inplace", "--stats", server.address + "/" + path, dest_file]


def received_bytes(kind, stdout):
    """The tool's own count of payload bytes received (ferry's JSON wireBytes; rsync --stats)."""
    if kind == "ferry":
        for line in reversed(stdout.splitlines()):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "wireBytes" in obj:
                return obj["wireBytes"]
        return None
    m = re.search(r"Total bytes received: ([\d,.]+)", stdout)
    return int(re.sub(r"[,.]", "", m.group(1))) if m else None


def build_ferry():
    log("building ferry (release, --scratch-path .build-bench)")
    build = ["swift", "build", "-c", "release", "--scratch-path", ".build-bench"]
    swift = CLEANUP.spawn(build + ["--product", "ferry"], cwd=REPO, stdout=sys.stderr)
    if swift.wait(timeout=3600) != 0:
        raise RuntimeError("swift build failed (exit status %d)" % swift.returncode)
    CLEANUP.forget(swift)
    return os.path.join(sh(build + ["--show-bin-path"], cwd=REPO, timeout=120).stdout.strip(), "ferry")


def ensure_rsync():
    """rsync, installed with apt-get when missing."""
    if shutil.which("rsync"):
        return
    log("installing rsync with apt-get")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = sudo + ["apt-get", "install", "-y", "rsync"]
    if subprocess.run(install, env=env, timeout=900).returncode != 0:
        subprocess.run(sudo + ["apt-get", "update"], env=env, check=True, timeout=900)
        subprocess.run(install, env=env, check=True, timeout=900)
