"""Benchmark: definition hash + build rendering throughput (definitions per second), and the cost of the
largest definitions the size caps allow (docs/security.md, "Size caps").

Run: .venv/bin/python -m bench.hash_render   (prints numbers; not a test)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import json
import statistics
from collections.abc import Callable

from envkiln.core.definition import definition_hash
from envkiln.core.manifests import parse_environment
from envkiln.core.models import Environment
from envkiln.core.render import render
from envkiln.core.workloads import parse_request


def realistic_definitions(count: int) -> list[dict]:
    """Varied, realistic specs: pip-only, conda + nested pip + docker steps."""
    documents = []
    for index in range(count):
        if index % 2:
            pip = [f"numpy==2.1.{index % 7}", "pandas==2.2.3", "scikit-learn==1.5.2", "matplotlib==3.9.2",
                   f"torch==2.5.{index % 3}"]
            spec = {"image": "python:3.11-slim", "pip": pip}
        else:
            spec = {"image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
                    "dockerSteps": ["RUN apt-get update && apt-get install -y --no-install-recommends git",
                                    f"ENV RUN_ID={index}"],
                    "conda": {"channels": ["conda-forge"], "dependencies": [
                        "python=3.11", "numpy=2.1", "scipy=1.14", "pip",
                        {"pip": ["mlflow-skinny==2.17.2", f"azureml-core==1.{index % 60}.0"]}]}}
        documents.append({"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment",
                          "metadata": {"name": f"env-{index}"}, "spec": spec})
    return documents


def measure(count: int = 2000) -> dict[str, float]:
    documents = realistic_definitions(count)
    start = time.perf_counter()
    environments = [Environment.model_validate(d) for d in documents]
    validated = time.perf_counter()
    hashes = [definition_hash(e.spec) for e in environments]
    hashed = time.perf_counter()
    for environment, value in zip(environments, hashes, strict=True):
        render(environment.spec, value)
    rendered = time.perf_counter()
    n = len(documents)
    return {"n": n, "distinct": len(set(hashes)), "validate": n / (validated - start),
            "hash": n / (hashed - validated), "render": n / (rendered - hashed), "all": n / (rendered - start)}


def _median_ms(work: Callable[[], object], runs: int = 7) -> tuple[float, float]:
    """(CPU, wall) milliseconds, medians of `runs`."""
    cpu, wall = [], []
    for _ in range(runs):
        started, clock = time.process_time(), time.perf_counter()
        work()
        cpu.append(time.process_time() - started)
        wall.append(time.perf_counter() - clock)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def measure_maximal() -> dict[str, dict[str, float]]:
    """The largest definitions the caps allow (tests/unit/maximal.py): what one sync (parse + hash) and the
    webhook (an inline spec at its cap) cost, and each part alone."""
    from maximal import INLINE, largest_inline_spec, manifest, maximal_build_specs, maximal_spec

    spec, _ = maximal_spec()
    text = json.dumps(manifest(spec))
    environment = parse_environment(json.loads(text))
    value = definition_hash(environment.spec)
    results: dict[str, dict[str, float]] = {}

    def record(name: str, work: Callable[[], object], size: int) -> None:
        cpu, wall = _median_ms(work)
        results[name] = {"cpu_ms": cpu, "wall_ms": wall, "kib": size / 1024}

    document = json.loads(text)  # as Kopf hands it over: parsed JSON (validation does not change it)
    record("sync: parse + hash", lambda: definition_hash(parse_environment(document).spec), len(text))
    record("  parse (validate)", lambda: parse_environment(document), len(text))
    record("  hash", lambda: definition_hash(environment.spec), len(text))
    record("render (once per build)", lambda: render(environment.spec, value), len(text))
    for field in ("pip", "conda", "dockerSteps", "lock"):
        part = {"image": spec["image"], field: spec[field]}
        if field == "lock":
            part.update(pip=["six"], conda={"dependencies": ["python"]})
        record(f"  parse {field} alone", lambda part=part: parse_environment(manifest(part)),  # type: ignore[misc]
               len(json.dumps(spec[field])))
    for build in maximal_build_specs()[0]:
        source = next(k for k in build["build"] if k != "dockerfilePath")
        record(f"sync: build context ({source})", lambda build=build: definition_hash(  # type: ignore[misc]
            parse_environment(manifest(build)).spec, {"Dockerfile": "x" * 1024 * 1024}, commit="0" * 40),
            len(json.dumps(build)))
    inline = largest_inline_spec()
    record("webhook: inline spec at its cap", lambda: definition_hash(
        parse_request(INLINE, {"envkiln.dev/environment-spec": inline}).inline_spec),  # type: ignore[arg-type]
        len(inline.encode()))
    return results


def main() -> None:
    result = measure()
    print(f"definitions: {result['n']:.0f} ({result['distinct']:.0f} distinct)")
    for key in ("validate", "hash", "render", "all"):
        print(f"{key}: {result[key]:,.0f} /s")
    print("\nlargest definitions (median of 7; CPU and wall milliseconds):")
    for name, numbers in measure_maximal().items():
        print(f"{name:<34} {numbers['kib']:8.0f} KiB {numbers['cpu_ms']:8.1f} ms CPU {numbers['wall_ms']:8.1f} ms wall")


if __name__ == "__main__":
    main()
