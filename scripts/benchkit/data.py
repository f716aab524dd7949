"""The data sets, generated once under DATA/src (and the delta's old version under DATA/base).
Deterministic: SHAKE-128 and seeded PRNGs, so every machine gets the same bytes.

    random/big.bin     incompressible bytes
    text/app.log       log lines (zlib level 1 shrinks them to about a quarter)
    small/             many files of 1-16 KiB in nested directories
    mixed/             files from 1 byte to 2 MiB, text and binary, empty files and directories
    delta/delta.bin    a file whose old version (1 MiB at 37% replaced, older mtime) is in base/
"""

import hashlib
import os
import random
import shutil
import subprocess
import time

from .processes import log

MiB = 1 << 20
KiB = 1 << 10


class Sizes:
    def __init__(self, quick):
        self.quick = quick
        self.random = (32 if quick else 512) * MiB
        self.text = (16 if quick else 256) * MiB
        self.small_count = 1000 if quick else 10000
        self.mixed_count = 60 if quick else 300
        self.delta = (16 if quick else 100) * MiB
        self.delta_region = 1 * MiB
        self.concurrent_clients = 10 if quick else 50

    def key(self):
        return "gen-v1-%d-%d-%d-%d-%d" % (self.random, self.text, self.small_count, self.mixed_count, self.delta)


def random_blocks(seed, size):
    """Deterministic incompressible bytes, 1 MiB at a time (SHAKE-128 of SEED-BLOCKNUMBER)."""
    block = 0
    while size > 0:
        n = min(MiB, size)
        yield hashlib.shake_128(b"%s-%d" % (seed, block)).digest(n)
        size -= n
        block += 1


def pseudo_random(seed, size):
    return b"".join(random_blocks(seed, size))


def write_random_file(path, seed, size):
    with open(path, "wb") as f:
        for block in random_blocks(seed, size):
            f.write(block)


LEVELS = ["INFO"] * 14 + ["DEBUG"] * 4 + ["WARN"] * 2 + ["ERROR"]
SERVICES = ["api", "auth", "billing", "search", "worker", "gateway", "scheduler", "mailer"]
METHODS = ["GET"] * 6 + ["POST"] * 3 + ["PUT", "DELETE"]
ROUTES = ["/api/v1/items/%d", "/api/v1/users/%d/profile", "/api/v2/orders/%d", "/static/img/%d.png",
          "/api/v1/search?q=term%d", "/healthz", "/api/v1/carts/%d/checkout", "/login"]
STATUSES = [200] * 20 + [201, 204, 301, 304, 400, 401, 403, 404, 404, 500, 503]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "okhttp/4.12.0", "Go-http-client/1.1",
          "python-requests/2.31"]
MESSAGES = ["request completed", "cache miss, fetching from origin", "slow query detected",
            "retrying upstream call", "session refreshed", "rate limit applied", "payload validated",
            "connection reset by peer", "background job finished"]


def log_line(rng, t):
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)
    route = rng.choice(ROUTES)
    if "%d" in route:
        route = route % rng.randrange(1, 100000)
    return '%s %-5s [%s-%d] %s %s status=%d bytes=%d dur_ms=%.1f ip=10.%d.%d.%d req=%08x ua="%s" msg="%s"\n' % (
        ts, rng.choice(LEVELS), rng.choice(SERVICES), rng.randrange(8), rng.choice(METHODS), route,
        rng.choice(STATUSES), rng.randrange(0, 200000), rng.random() * 300, rng.randrange(4),
        rng.randrange(256), rng.randrange(256), rng.getrandbits(32), rng.choice(AGENTS), rng.choice(MESSAGES))


def write_text_file(path, seed, size):
    """A log-like text file."""
    rng = random.Random(seed)
    t = 1_700_000_000.0
    written = 0
    with open(path, "w", encoding="ascii", newline="\n") as f:
        while written < size:
            lines = []
            for _ in range(2000):
                t += rng.random() * 0.01
                lines.append(log_line(rng, t))
            chunk = "".join(lines)[: size - written]
            f.write(chunk)
            written += len(chunk)


def write_small_files(root, count, rng):
    for i in range(count):
        d = os.path.join(root, "d%02d" % (i % 50), "e%02d" % ((i // 50) % 20))
        os.makedirs(d, exist_ok=True)
        n = rng.randrange(1 * KiB, 16 * KiB + 1)
        with open(os.path.join(d, "f%05d.dat" % i), "wb") as f:
            f.write(hashlib.shake_128(b"small-%d" % i).digest(n))


def write_mixed_files(root, count, rng):
    words = ["alpha", "beta", "gamma", "delta", "config", "value", "true", "false", "name", "id"]
    for i in range(count):
        d = os.path.join(root, "p%d" % (i % 7), "q%d" % (i % 3))
        os.makedirs(d, exist_ok=True)
        kind = i % 4
        size = int(2 ** rng.uniform(0, 21))  # 1 byte .. 2 MiB, log-uniform
        if kind == 0:
            with open(os.path.join(d, "blob%03d.bin" % i), "wb") as f:
                f.write(pseudo_random(b"mixed-%d" % i, size))
        elif kind == 3 and i % 20 == 3:
            open(os.path.join(d, "empty%03d" % i), "wb").close()
        else:
            text = " ".join(rng.choice(words) + str(rng.randrange(100)) for _ in range(size // 7 + 1))[:size]
            with open(os.path.join(d, "doc%03d.txt" % i), "w") as f:
                f.write(text)
    for i in range(5):
        os.makedirs(os.path.join(root, "empty-dir-%d" % i), exist_ok=True)


def write_delta_pair(new_path, old_path, size, region):
    old = pseudo_random(b"delta", size)
    at = size * 37 // 100
    new = old[:at] + pseudo_random(b"delta-change", region) + old[at + region:]
    with open(old_path, "wb") as f:
        f.write(old)
    with open(new_path, "wb") as f:
        f.write(new)
    # Fixed, distinct mtimes so both tools see the local copy as out of date.
    os.utime(old_path, (1_600_000_000, 1_600_000_000))
    os.utime(new_path, (1_700_000_000, 1_700_000_000))


def generate(data, sizes):
    """Generates the data sets unless this size's stamp file says they are complete."""
    stamp = os.path.join(data, "src", "." + sizes.key())
    if os.path.exists(stamp):
        log("data already generated in", data)
        return
    log("generating deterministic data in", data, "(once)")
    for sub in ("src", "base"):
        shutil.rmtree(os.path.join(data, sub), ignore_errors=True)
    src = os.path.join(data, "src")
    for sub in ("random", "text", "delta"):
        os.makedirs(os.path.join(src, sub))
    os.makedirs(os.path.join(data, "base"))
    write_random_file(os.path.join(src, "random", "big.bin"), b"random", sizes.random)
    write_text_file(os.path.join(src, "text", "app.log"), 7, sizes.text)
    rng = random.Random(11)  # one generator for both, in this order: the bytes stay those of v1
    write_small_files(os.path.join(src, "small"), sizes.small_count, rng)
    write_mixed_files(os.path.join(src, "mixed"), sizes.mixed_count, rng)
    write_delta_pair(os.path.join(src, "delta", "delta.bin"), os.path.join(data, "base", "delta.bin"),
                     sizes.delta, sizes.delta_region)
    open(stamp, "w").close()
    subprocess.run(["sync"], check=False, timeout=600)


def tree_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
