"""Real wheels from the package index this machine reaches, downloaded once into the harness cache,
for a harness.pypi.PackageIndex on the node's address (pods on the node reach no index of their own).

    directory = mirror(["numpy==2.4.6", "tqdm==4.70.1"])    # $ENVKILN_CACHE/wheels/cp311-manylinux_x86_64
    with PackageIndex(host=cluster.address, directory=directory) as index: ...

Each pin is downloaded with `pip download --only-binary=:all: --no-deps` for the target Python and
platform (the harness's base image: Debian bookworm, CPython 3.11, glibc 2.36, x86_64), so the
pins must be a complete, resolved set. A pin already in the directory is not downloaded again.
Behind a TLS-inspecting proxy pip needs `PIP_CERT` (the system CA bundle is used when it exists).

`uv_tool_archive(version)`: an OCI archive of a `FROM scratch` image holding only `/uv` and `/uvx`,
taken from the uv wheel (no buildah needed), for renders that mount uv from a tool image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from harness.cache import cached
from harness.controlplane import cache_dir
from harness.pypi import normalize

__all__ = ["PLATFORMS", "PYTHON_VERSION", "have", "mirror", "uv_tool_archive"]

PYTHON_VERSION = "3.11"
# pip does not widen an explicit --platform to the older manylinux tags: list every one glibc 2.36 runs.
PLATFORMS = ("manylinux_2_36_x86_64", "manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_12_x86_64",
             "manylinux2010_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64", "linux_x86_64")
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def _key(filename: str) -> tuple[str, str]:
    """(normalized project, version) of a wheel file name."""
    name, version = filename.split("-")[:2]
    return normalize(name), version


def have(directory: Path, pins: Iterable[str]) -> list[str]:
    """The pins (`name==version`) that have no wheel in `directory` yet."""
    present = {_key(path.name) for path in directory.glob("*.whl")} if directory.is_dir() else set()
    missing = []
    for pin in pins:
        name, _, version = pin.partition("==")
        if (normalize(name), version) not in present:
            missing.append(pin)
    return missing


def mirror(pins: Iterable[str], directory: Path | None = None, timeout: float = 900) -> Path:
    """A directory holding one wheel for each `name==version` pin (downloaded only when missing)."""
    pins = list(pins)
    if any("==" not in pin for pin in pins):
        raise ValueError(f"pins must be name==version: {pins}")
    directory = directory or cache_dir() / "wheels" / f"cp{PYTHON_VERSION.replace('.', '')}-manylinux_x86_64"
    directory.mkdir(parents=True, exist_ok=True)
    missing = have(directory, pins)
    if missing:
        env = dict(os.environ)
        if "PIP_CERT" not in env and Path(SYSTEM_CA).exists():
            env["PIP_CERT"] = SYSTEM_CA
        platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--only-binary=:all:", "--no-deps", "--python-version", PYTHON_VERSION,
                        "--implementation", "cp", *platforms, "--dest", str(directory), *missing],
                       check=True, env=env, timeout=timeout)
        still = have(directory, missing)
        if still:
            raise RuntimeError(f"pip download left these pins without a wheel: {still}")
    return directory


def uv_tool_archive(version: str) -> Path:
    """An OCI archive (cached) of an image with only `/uv` and `/uvx` from the uv `version` wheel."""
    return cached(cache_dir() / "images" / f"uv-tool-{version}.oci.tar", lambda target: _make_uv_tool(version, target))


def _blob(layout: tarfile.TarFile, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mode = len(data), 0o644
    layout.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _make_uv_tool(version: str, target: Path) -> None:
    wheel = next(mirror([f"uv=={version}"]).glob(f"uv-{version}-*.whl"))
    layer_tar = io.BytesIO()
    with zipfile.ZipFile(wheel) as archive, tarfile.open(fileobj=layer_tar, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("uv", "uvx"):
            data = archive.read(f"uv-{version}.data/scripts/{name}")
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    layer = layer_tar.getvalue()
    compressed = gzip.compress(layer, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
        "history": [{"created_by": f"envkiln harness: /uv and /uvx from uv {version}"}],
    }, sort_keys=True).encode()
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w") as layout:
        layer_descriptor = _blob(layout, compressed, "application/vnd.oci.image.layer.v1.tar+gzip")
        config_descriptor = _blob(layout, config, "application/vnd.oci.image.config.v1+json")
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": config_descriptor, "layers": [layer_descriptor]}, sort_keys=True).encode()
        manifest_descriptor = _blob(layout, manifest, "application/vnd.oci.image.manifest.v1+json")
        index = json.dumps({"schemaVersion": 2, "manifests": [manifest_descriptor]}).encode()
        for name, data in (("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", index)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            layout.addfile(info, io.BytesIO(data))
    partial.rename(target)
