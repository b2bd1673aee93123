"""Benchmark: local-builder build time of a pip environment (numpy + pandas): the envkiln-rendered
Dockerfile (uv, pip fallback) against the same packages installed the plain way (pip, one RUN).

Both are built with buildah in the same run, from the same base image, without layer caches.
Run: .venv/bin/python -m bench.build_time
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from envkiln.core.definition import definition_hash
from envkiln.core.models import EnvironmentSpec
from envkiln.core.render import render
from harness.buildah import base_image_archive, build_and_push, push_archive
from harness.registry import Registry

PACKAGES = ["numpy==2.1.3", "pandas==2.2.3"]


def build(context: Path, destination: str) -> float:
    start = time.monotonic()
    build_and_push(context, destination)
    return time.monotonic() - start


def main(rounds: int = 2) -> dict[str, Any]:
    with Registry() as registry, tempfile.TemporaryDirectory() as tmp:
        base = f"{registry.host}/bench/python-base:bookworm"
        push_archive(base_image_archive(), base)
        spec = EnvironmentSpec.model_validate({"image": base, "pip": PACKAGES})
        plan = render(spec, definition_hash(spec))
        rendered, plain = Path(tmp) / "rendered", Path(tmp) / "plain"
        rendered.mkdir()
        plain.mkdir()
        (rendered / "Dockerfile").write_text(plan.dockerfile)
        for file in plan.files:
            (rendered / file.path).write_text(file.content)
        (plain / "Dockerfile").write_text(
            f"FROM {base}\nRUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir "
            + " ".join(PACKAGES) + "\n")
        times: dict[str, list[float]] = {"rendered_uv": [], "plain_pip": []}
        for round_ in range(rounds):  # alternate, so network and disk warm-up hit both
            times["rendered_uv"].append(build(rendered, f"{registry.host}/bench/rendered:{round_}"))
            times["plain_pip"].append(build(plain, f"{registry.host}/bench/plain:{round_}"))
            print(f"round {round_}: rendered {times['rendered_uv'][-1]:.1f}s, plain {times['plain_pip'][-1]:.1f}s",
                  flush=True)
    best = {key: min(values) for key, values in times.items()}
    return {"packages": PACKAGES, "rounds": rounds, "times": times, "best_rendered_s": best["rendered_uv"],
            "best_plain_s": best["plain_pip"], "ratio_rendered_over_plain": best["rendered_uv"] / best["plain_pip"]}


if __name__ == "__main__":
    print(main())
