"""Image builds with buildah (root, vfs storage, chroot isolation) and a debootstrap base image.

No Docker engine and no internet image registries here: the base image for tests is made
from a Debian root filesystem (debootstrap) once per cache, stored as an OCI archive, and
pushed into each test registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from envkiln.adapters.builders.buildah_cli import BuildFailed, BuildResult
from envkiln.adapters.builders.buildah_cli import build_and_push as _build_and_push
from envkiln.adapters.builders.buildah_cli import buildah as _buildah
from harness.cache import cached
from harness.controlplane import cache_dir

__all__ = ["BuildFailed", "BuildResult", "base_image_archive", "build_and_push", "buildah", "push_archive"]

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("ENVKILN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_REPOSITORY = "envkiln-test/python-base"  # where tests and benches push base_image_archive()


def storage_root() -> Path:
    return cache_dir() / "buildah"


def buildah(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return _buildah(*args, root=storage_root(), check=check, timeout=timeout)


def build_and_push(context_dir: Path, destination: str, dockerfile: str = "Dockerfile",
                   extra_tags: tuple[str, ...] = (), insecure: bool = True, timeout: float = 1800) -> BuildResult:
    return _build_and_push(context_dir, destination, dockerfile=dockerfile, extra_tags=extra_tags,
                           insecure=insecure, timeout=timeout, root=storage_root())


def forget_images(registry_host: str) -> None:
    """Remove from the harness's storage every image known only by names in `registry_host` (a test
    registry that is going away: the bases builds pulled from it, images built FROM them); without this,
    each run left its own copies behind (a whole base image each on vfs). The test base image stays: it is the same
    image every run (its layers make the next run's pulls of it instant)."""
    listed = buildah("images", "--json", check=False)
    if listed.returncode or not listed.stdout.strip():
        return
    prefix = registry_host.rstrip("/") + "/"
    for image in json.loads(listed.stdout):
        names = image.get("names") or []
        if names and all(name.startswith(prefix) and f"/{BASE_REPOSITORY}" not in name for name in names):
            buildah("rmi", "--force", image["id"], check=False)


# What debian:bookworm-slim leaves out too (its dpkg path-excludes): translations, documentation and
# manual pages, a third of the image (52 of 176 MB). Every build pod pulls and copies the base (vfs), so
# its size is CPU in every build of the suite. "-slim" in the archive's name: a cache made before keeps
# its own image, and a new one is made beside it.
TRIMMED = ("usr/share/locale", "usr/share/doc", "usr/share/man", "usr/share/info")


def base_image_archive() -> Path:
    """An OCI archive of a small Debian image with python3 + venv, made once per cache."""
    return cached(cache_dir() / "images" / f"debian-{DEBIAN_SUITE}-python-slim.oci.tar", _make_base_image)


def _make_base_image(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="envkiln-rootfs-", dir=target.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE,
             str(rootfs), DEBIAN_MIRROR],
            check=True, capture_output=True, timeout=900,
        )
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)
        for trimmed in TRIMMED:
            for entry in (rootfs / trimmed).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        container = buildah("from", "scratch").stdout.strip()
        try:
            mount = buildah("mount", container).stdout.strip()
            subprocess.run(["cp", "-a", f"{rootfs}/.", mount], check=True)
            buildah("umount", container)
            buildah("config", "--cmd", "/bin/bash", "--env", "LANG=C.UTF-8", container)
            partial = target.with_suffix(".partial")
            buildah("commit", "--format", "oci", container, f"oci-archive:{partial}")
            partial.rename(target)
        finally:
            buildah("rm", container, check=False)


def push_archive(archive: Path, destination: str, insecure: bool = True) -> str:
    """Copy an OCI archive into a registry (skopeo needs no container storage)."""
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        subprocess.run(
            ["skopeo", "copy", "--quiet", f"--dest-tls-verify={'false' if insecure else 'true'}",
             "--digestfile", str(digest_file), f"oci-archive:{archive}", f"docker://{destination}"],
            check=True, capture_output=True, timeout=600,
        )
        return digest_file.read_text().strip()


HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def bud_to_archive(context: Path, dockerfile: Path, target: Path, build_args: dict[str, str],
                   timeout: float = 900) -> None:
    """`buildah bud` of `dockerfile` in `context` (chroot, no layer cache; the host CA bundle mounted at its
    own path, so pip in RUN steps reaches PyPI through the TLS-inspecting proxy), written to `target` as
    an OCI archive (through a .partial file, so a cached archive is whole or absent)."""
    tag = f"localhost/envkiln-harness:{target.stem}"
    args = ["bud", "--isolation", "chroot", "--tls-verify=false", "--layers=false", "-f", str(dockerfile), "-t", tag]
    for name, value in build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    if Path(HOST_CA_BUNDLE).exists():
        args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    buildah(*args, str(context), timeout=timeout)
    partial = target.with_suffix(".partial")
    try:
        buildah("push", tag, f"oci-archive:{partial}")
        partial.rename(target)
    finally:
        buildah("rmi", "--force", tag, check=False)
