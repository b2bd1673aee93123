"""The package proxy's image (proxpi, a pull-through PyPI cache; the chart's packageProxy), built
here with buildah on the test base image: the public image (docker.io/epicwink/proxpi) cannot be
pulled on this machine. The same program and entrypoint as the public image (gunicorn serving
proxpi.server:app), so the chart's arguments apply unchanged. Cached as an OCI archive keyed by its
recipe and the base image."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from harness.buildah import HOST_CA_BUNDLE, base_image_archive, bud_to_archive
from harness.cache import cached
from harness.controlplane import cache_dir

PROXPI_VERSION = "1.3.1"
GUNICORN_VERSION = "23.0.0"

DOCKERFILE = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
RUN python3 -m venv /opt/proxpi \\
 && PIP_CERT={HOST_CA_BUNDLE} /opt/proxpi/bin/pip install --no-cache-dir --disable-pip-version-check \\
      proxpi=={PROXPI_VERSION} gunicorn=={GUNICORN_VERSION} \\
 && find /opt/proxpi -name '__pycache__' -prune -exec rm -rf {{}} +
ENV PATH=/opt/proxpi/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65534:65534
ENTRYPOINT ["gunicorn", "--preload", "--access-logfile", "-", "proxpi.server:app"]
CMD ["--bind", "0.0.0.0:5000", "--threads", "2"]
"""


def proxy_image_archive(base_image: str, timeout: float = 900) -> Path:
    """An OCI archive of proxpi FROM `base_image` (base_image_archive() pushed to a plain-HTTP registry)."""
    base = base_image_archive()
    key = hashlib.sha256(f"{DOCKERFILE}\0{base.name}:{base.stat().st_size}:{base.stat().st_mtime_ns}".encode())

    def make(target: Path) -> None:
        for old in target.parent.glob("proxpi-*.oci.tar"):
            old.unlink()
        with tempfile.TemporaryDirectory(prefix="envkiln-proxpi-image-") as tmp:
            context = Path(tmp)
            (context / "Dockerfile").write_text(DOCKERFILE)
            bud_to_archive(context, context / "Dockerfile", target, {"BASE_IMAGE": base_image}, timeout=timeout)

    return cached(cache_dir() / "images" / f"proxpi-{key.hexdigest()[:16]}.oci.tar", make)
