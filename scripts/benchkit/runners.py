"""The tools' servers and clients:

    ferry serve SRC --bind HOST --port 0 --no-discovery --state-dir TMP/ferry-state --compress MODE [--plaintext]
    ferry sync HOST:PORT/SET DEST --json --quiet --fingerprint FP (the one the server printed; or --plaintext)
    rsync --daemon --no-detach (one read-only module `src`, use chroot = no)
    rsync -a --stats [OPTIONS] rsync://HOST:PORT/src/SET/ DEST/
    sshd -D -e -f TMP/ssh/sshd-NS.conf (the run's own: ListenAddress HOST, a private port, its own
        host key and authorized key; never the system's sshd, its config or its service)
    rsync -a --stats -e "ssh -F /dev/null -p PORT -i KEY -o UserKnownHostsFile=... ..." HOST:SRC/SET/ DEST/

No server is ever given a name to look up or `--announce`: they bind the link's own address.
"""

import json
import os
import pwd
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


class SshServer:
    """The run's own sshd on the link's address (ListenAddress HOST only, a free port), started
    in the foreground (`-D`) as a child the run stops by PID like every server; `rsync -e ssh`
    connects to it. Keys are made once per run in TMP/ssh (ssh_keys). The cipher is ssh's
    default (what the client and server negotiate; `check` reads it from `ssh -v`)."""

    kind = "rsync"
    READY = re.compile(r"Server listening on")
    PRIVSEP = re.compile(r"Missing privilege separation directory: (/\S+)")

    def __init__(self, link, src, sshd, tmp):
        self.dev = link.dev
        self.link = link
        keys = ssh_keys(tmp)
        user = pwd.getpwuid(os.geteuid()).pw_name
        tag = link.server_ns or "default"
        for _ in range(20):  # a free port can be taken between probing and binding: retry
            port = free_port()
            conf = os.path.join(keys.dir, "sshd-%s.conf" % tag)
            with open(conf, "w") as f:
                f.write(SSHD_CONFIG % dict(port=port, host=link.host, host_key=keys.host_key,
                                           authorized=keys.authorized, user=user,
                                           pid=os.path.join(keys.dir, "sshd-%s.pid" % tag)))
            log_file = os.path.join(keys.dir, "sshd-%s-%d.log" % (tag, port))
            with open(log_file, "w") as f:
                self.proc = CLEANUP.spawn(ns_prefix(link.server_ns) + [sshd, "-D", "-e", "-f", conf],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
            if wait_for_line(log_file, self.READY, self.proc, timeout=10):
                break
            CLEANUP.stop(self.proc)
            missing = wait_for_line(log_file, self.PRIVSEP, self.proc, timeout=0.1)
            if missing and os.geteuid() == 0 and not os.path.exists(missing.group(1)):
                # sshd started by root needs its privilege separation directory (an empty
                # directory the packaged service makes when it starts); made here, removed at the end.
                os.mkdir(CLEANUP.path(missing.group(1)), 0o755)
        else:
            with open(log_file, errors="replace") as f:
                raise RuntimeError("sshd did not start: %s" % f.read()[-1000:])
        with open(keys.host_key + ".pub") as f:
            host_public = " ".join(f.read().split()[:2])
        known_hosts = os.path.join(keys.dir, "known_hosts-%s-%d" % (tag, port))
        with open(known_hosts, "w") as f:
            f.write("[%s]:%d %s\n" % (link.host, port, host_public))
        # -F /dev/null: neither ~/.ssh/config nor /etc/ssh/ssh_config; the host key is known in
        # advance (StrictHostKeyChecking=yes), nothing is asked or written.
        self._ssh = ["ssh", "-F", "/dev/null", "-p", str(port), "-i", keys.client_key, "-l", user,
                     "-o", "UserKnownHostsFile=" + known_hosts, "-o", "GlobalKnownHostsFile=/dev/null",
                     "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                     "-o", "ControlMaster=no", "-o", "ControlPath=none"]
        self.address = "%s:%s" % (link.host, src)

    @property
    def rsh(self):
        """The `rsync -e` value (rsync splits it on spaces; no path of the run has one)."""
        return " ".join(self._ssh + ["-o", "LogLevel=ERROR"])

    def check(self):
        """Logs in once with `ssh -v ... true` and returns what was negotiated ('kex ..., cipher
        ..., MAC ...'); RuntimeError (the server stopped) if the login fails, e.g. for a user
        whose shell is nologin."""
        args = ns_prefix(self.link.client_ns) + self._ssh + ["-v", self.link.host, "true"]
        run = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, timeout=30)
        kex = re.search(r"kex: algorithm: (\S+)", run.stderr)
        cipher = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+) compression: (\S+)", run.stderr)
        if run.returncode != 0:
            self.stop()
            user = pwd.getpwuid(os.geteuid())
            why = ("ssh could not log in: " + " / ".join(
                line for line in run.stderr.splitlines() if not line.startswith("debug"))[-300:]
                if run.returncode == 255 else
                "the login worked, `true` did not run (exit status %d): %s's shell is %s" % (
                    run.returncode, user.pw_name, user.pw_shell))
            raise RuntimeError("`ssh ... true` to the run's own sshd failed: " + why)
        return "kex %s, cipher %s, MAC %s, compression %s" % (
            kex.group(1) if kex else "?", cipher.group(1) if cipher else "?", cipher.group(2) if cipher else "?",
            cipher.group(3) if cipher else "?")

    def stop(self):
        CLEANUP.stop(self.proc)


# Only what the benchmark needs: key login of the user running it, from the link's address.
# SetEnv SHLVL=1: Debian's bash sources ~/.bashrc for a command run by sshd when SHLVL is not yet
# set (root's here runs `pyenv init`: +240 ms a connection), which would time the account, not
# rsync; with it set, `bash -c 'rsync --server ...'` starts as it does from any shell. PermitUserRC
# no: no ~/.ssh/rc either.
SSHD_CONFIG = """\
Port %(port)d
ListenAddress %(host)s
AddressFamily inet
HostKey %(host_key)s
PidFile %(pid)s
AuthorizedKeysFile %(authorized)s
AllowUsers %(user)s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
PrintMotd no
UseDNS no
SetEnv SHLVL=1
PermitUserRC no
LogLevel INFO
"""


class SshKeys:
    def __init__(self, directory):
        self.dir = directory
        self.host_key = os.path.join(directory, "host_ed25519")
        self.client_key = os.path.join(directory, "client_ed25519")
        self.authorized = os.path.join(directory, "authorized_keys")


_ssh_keys = {}


def ssh_keys(tmp):
    """The run's host key, client key and authorized_keys (ed25519, no passphrase), in TMP/ssh
    (mode 700; TMP is removed at the end of the run)."""
    if tmp not in _ssh_keys:
        keys = SshKeys(os.path.join(tmp, "ssh"))
        os.makedirs(keys.dir, mode=0o700)
        for key in (keys.host_key, keys.client_key):
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ferry-bench", "-f", key])
        shutil.copyfile(keys.client_key + ".pub", keys.authorized)
        _ssh_keys[tmp] = keys
    return _ssh_keys[tmp]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tool, link, src, ferry, features, tmp, sshd=None):
    if tool.kind == "ferry":
        return FerryServer(link, src, ferry, features.compress_argument(tool.compress), tmp, features.tls, tool.plaintext)
    if tool.ssh:
        return SshServer(link, src, sshd, tmp)
    return RsyncDaemon(link, src, tmp)


def rsync_args(tool, server):
    """`rsync -a --stats [OPTIONS]`, and `-e SSH` for rsync over ssh."""
    return ["rsync", "-a", "--stats"] + (["-e", server.rsh] if tool.ssh else []) + list(tool.rsync_options)


def sync_args(tool, server, ferry, subpath, dest):
    """The client command line of a full sync of `subpath` into `dest`."""
    if tool.kind == "ferry":
        return [ferry, "sync", server.address + "/" + subpath, dest, "--json", "--quiet"] + server.trust
    return rsync_args(tool, server) + [server.address + "/" + subpath + "/", dest + "/"]


def get_file_args(tool, server, ferry, path, dest_file):
    """One file: `ferry get` or `rsync --inplace` (what a SIGKILL leaves behind is then the basis
    of the next run: rsync's own --partial keeps a file only after a gentler signal)."""
    if tool.kind == "ferry":
        return [ferry, "get", server.address + "/" + path, dest_file, "--json"] + server.trust
    return rsync_args(tool, server) + ["--inplace", server.address + "/" + path, dest_file]


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
    """The binary `scripts/install` installs: release, the Swift runtime linked in statically
    (`scripts/package`). A build against the toolchain's shared libraries maps all of
    Foundation and ICU too: 7.5 MiB more resident before ferry does anything (`ferry
    --version`: 23.1 against 15.5 MiB), which the RSS columns would count."""
    log("building ferry (release, --static-swift-stdlib, --scratch-path .build-bench)")
    build = ["swift", "build", "-c", "release", "--static-swift-stdlib", "--scratch-path", ".build-bench"]
    swift = CLEANUP.spawn(build + ["--product", "ferry"], cwd=REPO, stdout=sys.stderr)
    if swift.wait(timeout=3600) != 0:
        raise RuntimeError("swift build failed (exit status %d)" % swift.returncode)
    CLEANUP.forget(swift)
    return os.path.join(sh(build + ["--show-bin-path"], cwd=REPO, timeout=120).stdout.strip(), "ferry")


def apt_install(package):
    """`apt-get install -y PACKAGE` (noninteractive), after `apt-get update` if the first try fails;
    its output goes to stderr."""
    log("installing %s with apt-get" % package)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = sudo + ["apt-get", "install", "-y", package]
    quiet = dict(env=env, stdout=sys.stderr, timeout=900)  # stdout is the table's
    if subprocess.run(install, **quiet).returncode != 0:
        subprocess.run(sudo + ["apt-get", "update"], check=True, **quiet)
        subprocess.run(install, check=True, **quiet)


def ensure_rsync():
    """rsync, installed with apt-get when missing."""
    if not shutil.which("rsync"):
        apt_install("rsync")


SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
POLICY_RC_D = "/usr/sbin/policy-rc.d"


def ensure_sshd():
    """(the absolute path of sshd, None), installing openssh-server with apt-get when it is missing;
    or (None, why) when it is missing and cannot be installed safely.

    Debian's openssh-server starts the system's ssh service (port 22, every address) when it is
    installed, unless /usr/sbin/policy-rc.d forbids starting services (exit status 101, as in
    containers). The benchmark never starts a listener beyond its link: where there is no such
    file it writes one for the length of the install and removes it after; where one exists
    that allows starting services, it leaves it alone and says how to install the package."""
    found = shutil.which("sshd", path=SBIN_PATH)
    if found:
        return os.path.abspath(found), None
    if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        apt_install("openssh-client")
    exists = os.path.lexists(POLICY_RC_D)
    policy = subprocess.run([POLICY_RC_D, "ssh", "start"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=30).returncode if os.access(POLICY_RC_D, os.X_OK) else None
    if exists and policy != 101:
        return None, ("rsync-ssh rows skipped: sshd is not installed, and installing openssh-server here would start "
                      "the system's ssh service on port 22 (%s, which is not the benchmark's to change, allows it). "
                      "Install it yourself (apt-get install openssh-server) and run again: the benchmark starts its "
                      "own sshd on the link's address only" % POLICY_RC_D)
    if not exists:
        # No policy yet: forbid starting services for the length of the install only (the
        # Debian way, as in containers), so the package's ssh service is installed but not
        # started; the file is removed right after, whatever happens.
        with open(POLICY_RC_D, "x") as f:
            f.write("#!/bin/sh\n# written by ferry's scripts/bench while it installs openssh-server; removed after\nexit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
    try:
        apt_install("openssh-server")
    finally:
        if not exists:
            os.unlink(POLICY_RC_D)
    found = shutil.which("sshd", path=SBIN_PATH)
    if not found:
        return None, "rsync-ssh rows skipped: openssh-server was installed but no sshd was found"
    return os.path.abspath(found), None
