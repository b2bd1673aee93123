"""Loaded by the operator process the bench starts with `--tracemalloc` (this directory on PYTHONPATH).

Not part of the product: it lets the bench take a tracemalloc snapshot of any operator version
(the current one or an older checkout) without code in the operator. With BENCH_TRACEMALLOC_OUT
set, tracing starts at interpreter start; each SIGUSR2 writes the top allocations to a new file
`<BENCH_TRACEMALLOC_OUT>.<n>`.
"""

from __future__ import annotations

import os
import signal
import tracemalloc

_OUT = os.environ.get("BENCH_TRACEMALLOC_OUT")


_COUNT = [0]


def _dump(signum: int, frame: object) -> None:
    assert _OUT is not None
    _COUNT[0] += 1
    out = f"{_OUT}.{_COUNT[0]}"
    snapshot = tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")])
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced: current {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB", "", "## by file"]
    for stat in snapshot.statistics("filename")[:25]:
        lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {stat.traceback[0].filename}")
    lines += ["", "## by line"]
    for stat in snapshot.statistics("lineno")[:40]:
        frame0 = stat.traceback[0]
        lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {frame0.filename}:{frame0.lineno}")
    lines += ["", "## by traceback (top 12)"]
    for stat in snapshot.statistics("traceback")[:12]:
        lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks")
        lines += ["    " + line for line in stat.traceback.format(limit=12, most_recent_first=True)]
    with open(_OUT + "-partial", "w") as file:
        file.write("\n".join(lines) + "\n")
    os.replace(_OUT + "-partial", out)


if _OUT:
    tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "12")))
    signal.signal(signal.SIGUSR2, _dump)
