"""The operator's own image (operator/Dockerfile), built with buildah on the test base image.

Cached as an OCI archive keyed by the content of what goes into it (pyproject.toml, README.md,
operator/ and the base image), so a warm run with unchanged sources builds nothing.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from harness.buildah import base_image_archive, bud_to_archive
from harness.cache import cached
from harness.controlplane import REPO_ROOT, cache_dir

SOURCES = ("pyproject.toml", "README.md", "operator")


def source_key() -> str:
    """What the image is made of: the sources and the cached base image (pushed to whatever registry)."""
    base = base_image_archive()
    digest = hashlib.sha256(f"{base.name}:{base.stat().st_size}:{base.stat().st_mtime_ns}".encode())
    for top in SOURCES:
        path = REPO_ROOT / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts)
        for file in files:
            digest.update(str(file.relative_to(REPO_ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def operator_image_archive(base_image: str, timeout: float = 900) -> Path:
    """An OCI archive of operator/Dockerfile built FROM `base_image`: base_image_archive() pushed to a
    registry reachable over plain HTTP."""

    def make(target: Path) -> None:
        for old in target.parent.glob("operator-*.oci.tar"):
            old.unlink()  # one operator image at a time in the cache
        with tempfile.TemporaryDirectory(prefix="envkiln-operator-image-") as tmp:
            context = Path(tmp)
            subprocess.run(["cp", "-a", *[str(REPO_ROOT / s) for s in SOURCES], str(context)], check=True)
            for cache in context.rglob("__pycache__"):
                subprocess.run(["rm", "-rf", str(cache)], check=True)
            bud_to_archive(context, context / "operator" / "Dockerfile", target, {"BASE_IMAGE": base_image},
                           timeout=timeout)

    return cached(cache_dir() / "images" / f"operator-{source_key()}.oci.tar", make)
