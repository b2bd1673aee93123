"""Benchmark: definition hash + build rendering throughput (definitions per second).

Run: .venv/bin/python -m bench.hash_render   (prints numbers; not a test)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from envkiln.core.definition import definition_hash
from envkiln.core.models import Environment
from envkiln.core.render import render


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


def main() -> None:
    result = measure()
    print(f"definitions: {result['n']:.0f} ({result['distinct']:.0f} distinct)")
    for key in ("validate", "hash", "render", "all"):
        print(f"{key}: {result[key]:,.0f} /s")


if __name__ == "__main__":
    main()
