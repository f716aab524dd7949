"""The pieces of scripts/bench, one concern per module, in the order a run uses them:

    scenarios.py   WHAT is measured: the tools and the table of scenarios (start here to add one)
    data.py        the deterministic data sets under bench-data/
    links.py       the network namespaces, the 1 Gbit/s veth and the 100 Mbit/s + 2 ms relay
    processes.py   starting, timing, interrupting and cleaning up every process and temp path
    measure.py     the figures of one run: wall, CPU, peak RSS, wire bytes
    runners.py     `ferry serve` / `rsync --daemon` / the run's own sshd and their clients' command lines
    runs.py        HOW each kind of scenario runs: alternating repetitions, medians
    handshake.py   the in-process TLS/plaintext connection probe of the handshake scenario
    report.py      the Markdown table
    main.py        the options and the order of a run
"""
