"""The options and the order of a run: tools, build, data, namespaces, prime, scenarios, table."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from . import links
from .data import Sizes, generate
from .processes import CLEANUP, Interrupted, catch_signals, ignore_signals_while_cleaning, log
from .report import report
from .handshake import probe_main
from .runners import REPO, FerryFeatures, build_ferry, ensure_rsync, ensure_sshd
from .runs import Bench
from .scenarios import CODECS, COMPRESS_MODE, GROUPS, FullSync, scenarios

SHAPED = ("lan1g", "lan100m")


def parse_options(argv):
    p = argparse.ArgumentParser(prog="scripts/bench", description="ferry vs rsync benchmark (see docs/BENCHMARKS.md)")
    p.add_argument("--reps", type=int, help="repetitions per measurement (median reported; default 3, 1 with --quick)")
    p.add_argument("--slow-reps", type=int, default=1,
                   help="repetitions of the 512 MiB random file on the 100 Mbit/s link (45 s+ each; default 1)")
    p.add_argument("--quick", action="store_true", help="small data and 1 repetition: a smoke test")
    p.add_argument("--only", default=",".join(GROUPS), help="comma-separated subset of: " + ",".join(GROUPS))
    p.add_argument("--codecs", default=",".join(CODECS),
                   help="the fixed `ferry serve --compress` modes measured beside auto on the text over every "
                        "link (default %s; zstd rows are skipped, with a note, when this ferry has no zstd)"
                        % ",".join(CODECS))
    p.add_argument("--data", help="where data is generated (default bench-data/full or bench-data/quick)")
    p.add_argument("--ferry", help="use this ferry binary instead of building one")
    p.add_argument("--json", help="also write the raw results to this file")
    opts = p.parse_args(argv)
    if not opts.data:
        opts.data = os.path.join(REPO, "bench-data", "quick" if opts.quick else "full")
    opts.data = os.path.abspath(opts.data)
    if opts.reps is None:
        opts.reps = 1 if opts.quick else 3
    opts.only = [s for s in opts.only.split(",") if s]
    unknown = set(opts.only) - set(GROUPS)
    if unknown:
        p.error("unknown scenario(s): " + ", ".join(sorted(unknown)))
    opts.codecs = [c for c in opts.codecs.split(",") if c]
    bad = [c for c in opts.codecs if not COMPRESS_MODE.match(c)]
    if bad:
        p.error("--codecs takes off, zlib:N and zstd:N (auto is always measured: the `ferry` rows), not "
                + ", ".join(bad))
    if not (1 <= opts.reps <= 50 and 1 <= opts.slow_reps <= 20):
        p.error("--reps must be 1-50 and --slow-reps 1-20")
    return opts


def main(argv):
    if len(argv) == 3 and argv[0] == "--relay":  # internal: the 100 Mbit/s link (links.py)
        links.relay_main(argv[1], argv[2])
        return 0
    if len(argv) == 5 and argv[0] == "--handshake-probe":  # internal: the handshake scenario (handshake.py)
        probe_main(*argv[1:])
        return 0
    opts = parse_options(argv)
    catch_signals()
    try:
        run(opts)
    except Interrupted as e:
        log("interrupted (%s); cleaning up" % e)
        return 130
    except subprocess.CalledProcessError as e:
        log("failed: %s\n%s" % (" ".join(e.cmd), (e.stderr or "").strip()))
        return 1
    finally:
        ignore_signals_while_cleaning()
        CLEANUP.run()
    return 0


def run(opts):
    sizes = Sizes(opts.quick)
    ensure_rsync()
    ferry = opts.ferry or build_ferry()
    features = FerryFeatures(ferry)
    generate(opts.data, sizes)
    tmp = CLEANUP.path(tempfile.mkdtemp(prefix="ferry-bench-"))
    # ferry sync keeps its index of DEST's chunks in $XDG_STATE_HOME/ferry: the run's own, never
    # the invoking user's (each DEST of a run starts without one, as a first sync does).
    os.environ["XDG_STATE_HOME"] = os.path.join(tmp, "client-state")
    CLEANUP.path(os.path.join(opts.data, "dst"))
    namespaces = os.geteuid() == 0 and shutil.which("ip") is not None
    only = opts.only
    if namespaces:
        links.setup_namespaces([s for s in only if s in SHAPED], tmp)
    else:
        log("WARNING: not root, so no network namespaces: loopback scenarios run on 127.0.0.1 in this "
            "namespace, wire bytes are the tools' own counts, and the shaped-LAN scenarios are SKIPPED")
        only = [s for s in only if s not in SHAPED]
    wants_ssh = any(t.ssh for s in scenarios(opts.codecs) if s.group in only for t in s.tools)
    sshd, why_not = ensure_sshd() if wants_ssh else (None, None)
    bench = Bench(opts, sizes, ferry, features, namespaces, tmp, sshd)
    if why_not:
        bench.note(why_not)
    started = time.monotonic()
    bench.prime()
    for scenario in scenarios(opts.codecs):
        if scenario.group not in only:
            continue
        bench.stop_servers(keep={(tool, scenario.link) for tool in scenario.tools})
        if isinstance(scenario, FullSync):
            bench.full_sync(scenario)
        else:
            getattr(bench, scenario.group)(scenario)
    bench.stop_servers()
    print()
    print("ferry vs rsync: medians of %d run(s) (%s data), %.0f s in all" % (
        opts.reps, "quick" if opts.quick else "full", time.monotonic() - started))
    print(report(bench.rows, bench.notes, namespaces))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"rows": bench.rows, "quick": opts.quick, "reps": opts.reps, "notes": bench.notes}, f, indent=1)
    sys.stdout.flush()
