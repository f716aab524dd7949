"""The Markdown table of docs/BENCHMARKS.md: one row per scenario, data set and tool (ferry rows,
then rsync, then rsync -z and rsync-ssh), each ratio against the rsync daemon from the same run;
below a data set's rows, a line of ratios for each pair of PAIRS that ran there (ferry against
rsync -z, rsync-ssh and ferry-plaintext; ferry-off against ferry-off-plaintext); then the details (resume, reuse, concurrent, the
TLS handshake) and the notes."""

from .data import KiB, MiB

HEADER = ["| scenario | data | tool | wall s | ratio | CPU s (cli+srv) | ratio | RSS MiB cli / srv | wire MiB | ratio |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]


def mib(n):
    if n is None:
        return "?"
    return "%.1f" % (n / MiB) if n < 100 * MiB else "%.0f" % (n / MiB)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "?"
    return "%.2f" % (a / b)


def wire(row):
    """IP bytes on the link, or without namespaces the tool's own count."""
    return row["wire"] if row["wire"] is not None else row["app_wire"]


def tool_order(name):
    return (name.startswith("rsync"), name != "ferry", name != "rsync")


def row_line(scenario, dataset, r, ref):
    is_ref = r["tool"] == "rsync"
    srv_rss = mib((r["server_rss"] or 0) * KiB)
    if scenario == "concurrent" and r["tool"] == "rsync":
        srv_rss += " (sum %s)" % mib((r["server_rss_total"] or 0) * KiB)
    return "| %s | %s | %s | %.2f | %s | %.2f | %s | %s / %s | %s | %s |" % (
        scenario, dataset, r["tool"], r["wall"], "" if is_ref else ratio(r["wall"], ref and ref["wall"]),
        r["cpu"], "" if is_ref else ratio(r["cpu"], ref and ref["cpu"]),
        mib((r["client_rss"] or 0) * KiB), srv_rss, mib(wire(r)), "" if is_ref else ratio(wire(r), ref and wire(ref)))


# The lines of ratios under a data set's rows, where both tools ran: (tool, partner, label).
PAIRS = (("ferry", "rsync-z", "ferry / rsync -z"), ("ferry", "rsync-ssh", "ferry / rsync-ssh"),
         ("ferry", "ferry-plaintext", "ferry / ferry-plaintext"),
         ("ferry-off", "ferry-off-plaintext", "ferry-off / ferry-off-plaintext"))


def table(rows):
    groups = {}
    for r in rows:
        if r["scenario"] != "handshake":  # in details()
            groups.setdefault((r["scenario"], r["dataset"]), {})[r["tool"]] = r
    lines = list(HEADER)
    for (scenario, dataset), tools in groups.items():
        ref = tools.get("rsync")
        for name in sorted(tools, key=tool_order):
            lines.append(row_line(scenario, dataset, tools[name], ref))
        for tool, partner, label in PAIRS:
            if tool in tools and partner in tools:
                f, p = tools[tool], tools[partner]
                lines.append("| %s | %s | %s | | %s | | %s | | | %s |" % (
                    scenario, dataset, label, ratio(f["wall"], p["wall"]), ratio(f["cpu"], p["cpu"]),
                    ratio(wire(f), wire(p))))
    return lines


def details(rows):
    lines = []
    for r in rows:
        if r["scenario"] == "resume":
            app = r["app_wire"]
            lines.append("resume %s: the resuming run received %s payload bytes (%s IP bytes) for %d bytes remaining: "
                         "%s KiB more than remaining (median of runs; %.2f s)" % (
                             r["tool"], "?" if app is None else "%d" % app,
                             "?" if r["wire"] is None else "%d" % r["wire"], r["remaining"],
                             "?" if r.get("excess") is None else "%.0f" % (r["excess"] / KiB), r["wall"]))
        if r["scenario"] == "reuse":
            lines.append("reuse %s %s: %s wire bytes, %.2f%% of the %s MiB of new or changed files (%.2f s)" % (
                r["dataset"], r["tool"], "?" if wire(r) is None else "%d" % wire(r),
                100.0 * (wire(r) or 0) / max(1, r["new_bytes"]), mib(r["new_bytes"]), r["wall"]))
        if r["scenario"] == "concurrent":
            lines.append("concurrent %s: aggregate %.0f MiB/s, server peak RSS %s MiB (process) %s, %d failures" % (
                r["tool"], r["throughput"] / MiB, mib((r["server_rss"] or 0) * KiB),
                "/ %s MiB (all processes)" % mib((r["server_rss_total"] or 0) * KiB) if r["tool"] == "rsync" else "",
                r["failures"]))
        if r["scenario"] == "handshake":
            lines.extend(handshake_lines(r))
    return lines


def handshake_lines(r):
    tls, plain = r["probe"]["tls"], r["probe"]["plaintext"]
    ls, low = r["ls_ms"], r["ls_min_ms"]
    return [
        "handshake, in one process (no process start; medians of %d connections to each server, alternating): "
        "connect + TLS 1.3 handshake + greeting + `LIST` %.2f ms with TLS, %.2f ms with --plaintext: "
        "**TLS costs %.2f ms a connection** (the handshake step alone %.2f ms; TCP connect %.2f / %.2f ms; "
        "greeting after the handshake %.2f / %.2f ms; the LIST %.2f / %.2f ms). Server CPU a connection: "
        "%.2f ms TLS, %.2f ms plaintext" % (
            r["n"], tls["total"], plain["total"], tls["total"] - plain["total"], tls["handshake"],
            tls["connect"], plain["connect"], tls["greeting"], plain["greeting"], tls["list"], plain["list"],
            r["server_cpu_ms"]["tls"], r["server_cpu_ms"]["plaintext"]),
        "handshake, whole `ferry ls` processes (%d of each, alternating; median, and fastest in brackets): "
        "%.1f (%.1f) ms with TLS, %.1f (%.1f) ms with --plaintext, TLS − plaintext %.1f (%.1f) ms; `ferry --version`, "
        "a start and exit without a connection: %.1f (%.1f) ms, so connection + handshake + LIST in the ferry "
        "client: %.1f (%.1f) ms TLS, %.1f (%.1f) ms plaintext" % (
            len(r["ls_walls"]["tls"]), ls["tls"], low["tls"], ls["plaintext"], low["plaintext"],
            ls["tls"] - ls["plaintext"], low["tls"] - low["plaintext"], ls["start"], low["start"],
            ls["tls"] - ls["start"], low["tls"] - low["start"], ls["plaintext"] - ls["start"],
            low["plaintext"] - low["start"]),
    ]


def report(rows, notes, namespaces):
    wire_note = ("wire = IP bytes both directions on the link (interface counters of the benchmark's own namespace)"
                 if namespaces else "wire = the tools' own counts of received payload bytes (no namespaces: not root)")
    sections = [table(rows), details(rows), notes + [wire_note]]
    return "\n\n".join("\n".join(lines) for lines in sections if lines)
