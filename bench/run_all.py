"""Run every benchmark and print the numbers as a markdown table (machine, date, load, settings).

Run: .venv/bin/python -m bench.run_all [--quick] [--skip-build]

docs/benchmarks.md is written by hand from these numbers (with the profiles and the causes behind
them); this prints the table to paste, and the cluster bench's JSON line as it came.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench import build_time, cluster, hash_render

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return f"{os.cpu_count()} cores ({cpu}), {memory / 1024 / 1024:.0f} GiB, Python {platform.python_version()}"


def run_cluster(quick: bool) -> dict:
    """The cluster bench in its own process (it pins the operator version it runs)."""
    argv = [sys.executable, "-m", "bench.cluster", "--json", *(["--quick"] if quick else [])]
    out = subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


ROWS = [
    ("cache hit, create → Ready, p50 / p99 (one create every 50 ms)", "cache_hit_p50_ms", "cache_hit_p99_ms", "ms"),
    ("1,000 Environments over 100 definitions, all Ready", "ready_1000_s", None, "s"),
    ("registry requests for those 1,000", "registry_requests_1000", None, ""),
    ("operator peak RSS (VmHWM) at 1,000", "rss_mib_1000", None, "MiB"),
    ("API writes per cache hit (audit log)", "api_writes_per_cache_hit", None, ""),
    ("10,000 Environments, all Ready", "ready_10000_s", None, "s"),
    ("operator peak RSS at 10,000", "rss_mib_10000", None, "MiB"),
    ("restart with 10,000 present (half never reconciled), all Ready", "restart_10000_s", None, "s"),
    ("operator peak RSS on that restart", "rss_mib_restart_10000", None, "MiB"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    throughput = hash_render.measure()
    results = run_cluster(args.quick)
    build = None if args.skip_build else build_time.main()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; commit {commit} (working tree as it was); "
        f"load average {results.get('load_at_start')} → {results.get('load_at_end')}.",
        "",
        "Operator settings: " + ", ".join(f"`{k}={v}`" for k, v in cluster.OPERATOR_SETTINGS.items()) + ".",
        "",
        "| benchmark | result |",
        "|---|---|",
    ]
    for label, key, second, unit in ROWS:
        if key in results:
            value = f"{results[key]} {unit}".strip()
            if second:
                value = f"{results[key]} / {results[second]} {unit}"
            lines.append(f"| {label} | {value} |")
    lines.append(f"| validate + hash + render throughput | {throughput['all']:,.0f} definitions/s "
                 f"(validate {throughput['validate']:,.0f}/s, hash {throughput['hash']:,.0f}/s, "
                 f"render {throughput['render']:,.0f}/s; {throughput['n']} realistic definitions) |")
    if build:
        lines.append(
            f"| local build, numpy + pandas: envkiln Dockerfile (uv) vs plain pip, best of {build['rounds']} | "
            f"{build['best_rendered_s']:.1f} s vs {build['best_plain_s']:.1f} s: ratio "
            f"{build['ratio_rendered_over_plain']:.2f} |")
    print("\n".join(lines))
    print(json.dumps({k: v for k, v in results.items() if k != "details"}))


if __name__ == "__main__":
    main()
