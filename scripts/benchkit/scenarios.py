"""WHAT the benchmark measures. To add a row, add a Tool or a line to `scenarios` below; the
procedures are in runs.py, the table is printed in this order (ferry rows first, then rsync).

A *tool* is a server configuration plus its client: `ferry serve --compress MODE` with
`ferry sync`, `rsync --daemon` with `rsync -a [OPTIONS] rsync://...`, or the run's own sshd with
`rsync -a -e "ssh ..." HOST:PATH`. The table names it ("ferry", "ferry-off", "ferry-zstd:3",
"rsync", "rsync-z", "rsync-ssh") and every ratio is against the "rsync" row of the same scenario
and data set (report.py adds ferry / rsync-ssh, ferry / ferry-plaintext and ferry / rsync -z
lines where those ran).
"""

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    kind: str  # "ferry" or "rsync"
    compress: str = "auto"  # ferry serve --compress
    rsync_options: tuple = ()
    plaintext: bool = False  # ferry serve --plaintext and the client's --plaintext (TLS otherwise)
    ssh: bool = False  # rsync over ssh to the run's own sshd (runners.SshServer), not the daemon

    @property
    def codec(self):
        """The codec family a ferry server needs for this tool ("zlib", "zstd"), or None."""
        m = re.match(r"(zlib|zstd):", self.compress)
        return m.group(1) if self.kind == "ferry" and m else None


FERRY = Tool("ferry", "ferry")  # --compress auto, the default: the codec and level ferry chooses
RSYNC = Tool("rsync", "rsync")
RSYNC_Z = Tool("rsync-z", "rsync", rsync_options=("-z",))  # rsync 3.5 negotiates zstd
# --fuzzy: a missing file's basis may be a file of DEST's same directory with the same size and
# mtime or a similar name (rsync's answer to renames and copies).
RSYNC_FUZZY = Tool("rsync-fuzzy", "rsync", rsync_options=("--fuzzy",))
# rsync over SSH, the encrypted tool ferry with TLS is held against (issue 14 part 7, issue 16):
# `rsync -a -e ssh` to an sshd the run starts itself on the link's address, default cipher.
RSYNC_SSH = Tool("rsync-ssh", "rsync", ssh=True)


def ferry_compress(mode):
    """ferry with a fixed `--compress MODE` (off, zlib:N, zstd:N)."""
    return Tool("ferry-" + mode, "ferry", compress=mode)


FERRY_OFF = ferry_compress("off")
# The same ferry without TLS, for the cost of encryption side by side (issue 14, part 7) and for
# issue 16's targets of --plaintext against the rsync daemon.
FERRY_PLAIN = Tool("ferry-plaintext", "ferry", plaintext=True)
# `auto` may choose differently for two servers (in one run it sent the text stored over TLS and
# compressed it to a third in cleartext), so on the text the cost of TLS alone is ferry-off against this.
FERRY_OFF_PLAIN = Tool("ferry-off-plaintext", "ferry", compress="off", plaintext=True)

# The codec rows: ferry with a fixed codec beside `auto` on the text, over every link
# (`--codecs` replaces this list). zstd rows need a ferry whose `serve --help` mentions `zstd:`.
# Each mode costs a few runs per link (zlib:1 of 256 MiB over loopback: 2 s on a quiet machine,
# 8 s on a busy one): keep the list short, the default run's time is part of its usefulness.
CODECS = ("zlib:1", "zstd:3")
COMPRESS_MODE = re.compile(r"^(off|zlib:[1-9]|zstd:-?[0-9]{1,2})$")

DATASETS = ("random", "text", "small", "mixed")


@dataclasses.dataclass(frozen=True)
class FullSync:
    """A full sync of `dataset` into an empty DEST over `link`, once per tool in every
    repetition (the order alternating). `slow`: repeated --slow-reps times, not --reps."""
    link: str
    dataset: str
    tools: tuple
    slow: bool = False

    @property
    def group(self):  # the name --only selects it by
        return self.link


@dataclasses.dataclass(frozen=True)
class Special:
    """A scenario with a procedure of its own, runs.Bench.<group>(scenario)."""
    group: str
    what: str
    link: str = "loopback"
    tools: tuple = (FERRY, RSYNC)


def scenarios(codecs=CODECS):
    """Every scenario of a full run, in the order they run and are printed."""
    codec_rows = tuple(ferry_compress(mode) for mode in codecs)
    return [
        # link        data set  tools (alternating within each repetition)
        FullSync("loopback", "random", (FERRY, FERRY_PLAIN, RSYNC, RSYNC_SSH)),
        FullSync("loopback", "text", (FERRY, FERRY_PLAIN, FERRY_OFF, FERRY_OFF_PLAIN, RSYNC, RSYNC_SSH) + codec_rows),
        FullSync("loopback", "small", (FERRY, FERRY_PLAIN, RSYNC, RSYNC_SSH)),
        FullSync("loopback", "mixed", (FERRY, FERRY_PLAIN, RSYNC, RSYNC_SSH)),
        FullSync("lan1g", "random", (FERRY, RSYNC)),
        FullSync("lan1g", "text", (FERRY, FERRY_PLAIN, RSYNC) + codec_rows),  # issue 13 predates TLS: both
        FullSync("lan1g", "small", (FERRY, RSYNC)),
        FullSync("lan1g", "mixed", (FERRY, RSYNC)),
        FullSync("lan100m", "text", (FERRY, RSYNC, RSYNC_Z) + codec_rows),
        FullSync("lan100m", "small", (FERRY, RSYNC)),
        FullSync("lan100m", "mixed", (FERRY, RSYNC)),
        FullSync("lan100m", "random", (FERRY, RSYNC), slow=True),  # 45 s a run at full size
        Special("noop", "no-op re-sync of the small files (DEST already up to date)",
                tools=(FERRY, FERRY_PLAIN, RSYNC, RSYNC_SSH)),
        Special("handshake", "connection + TLS handshake + one LIST on loopback, TLS against --plaintext",
                tools=(FERRY, FERRY_PLAIN)),
        Special("delta", "the delta file, DEST holding its old version"),
        Special("reuse", "data already in DEST elsewhere: bytes inserted, bytes deleted, a rename, a copy, "
                "a directory of 1,000 files renamed (issue 15)", tools=(FERRY, RSYNC, RSYNC_FUZZY)),
        Special("resume", "the random file, client killed (SIGKILL) at half, then run again"),
        Special("concurrent", "many clients syncing mixed/ from one server at once"),
    ]


# The names --only takes, in order.
GROUPS = tuple(dict.fromkeys(scenario.group for scenario in scenarios()))
