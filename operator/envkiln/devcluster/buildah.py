"""Image builds with buildah (root, vfs storage, chroot isolation) and a debootstrap base image.

No Docker engine and no internet image registries here: the base image for tests is made
from a Debian root filesystem (debootstrap) once per cache, stored as an OCI archive, and
pushed into each test registry.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from envkiln.devcluster.controlplane import cache_dir

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("ENVKILN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class BuildFailed(RuntimeError):
    def __init__(self, message: str, log: str):
        super().__init__(message)
        self.log = log


def storage_args() -> list[str]:
    root = cache_dir() / "buildah"
    return ["--storage-driver", "vfs", "--root", str(root / "storage"), "--runroot", str(root / "run")]


def buildah(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["buildah", *storage_args(), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise BuildFailed(f"buildah {args[0]} failed ({result.returncode})", result.stdout + result.stderr)
    return result


@dataclass(frozen=True)
class BuildResult:
    image: str
    digest: str
    log: str


def build_and_push(context_dir: Path, destination: str, dockerfile: str = "Dockerfile",
                   extra_tags: tuple[str, ...] = (), insecure: bool = True, timeout: float = 1800) -> BuildResult:
    """`buildah bud` the context, push to `destination` (repository:tag); returns the pushed digest."""
    tls = f"--tls-verify={'false' if insecure else 'true'}"
    args = ["bud", "--isolation", "chroot", tls, "--layers=false", "-f", str(context_dir / dockerfile),
            "-t", destination]
    if os.path.exists(HOST_CA_BUNDLE):
        # pip/uv inside the build verify TLS against the host's CA bundle.
        args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    result = buildah(*args, str(context_dir), check=False, timeout=timeout)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise BuildFailed(f"build of {destination} failed ({result.returncode})", log)
    digest = push(destination, destination, insecure=insecure)
    repository = destination.rsplit(":", 1)[0] if ":" in destination.rsplit("/", 1)[-1] else destination
    for tag in extra_tags:
        push(destination, f"{repository}:{tag}", insecure=insecure)
    buildah("rmi", "--force", destination, check=False)
    return BuildResult(destination, digest, log)


def push(source: str, destination: str, insecure: bool = True) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        buildah("push", f"--tls-verify={'false' if insecure else 'true'}", "--digestfile", str(digest_file),
                source, f"docker://{destination}")
        return digest_file.read_text().strip()


def base_image_archive() -> Path:
    """An OCI archive of a small Debian image with python3 + venv, made once per cache."""
    target = cache_dir() / "images" / f"debian-{DEBIAN_SUITE}-python.oci.tar"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions build it once
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(prefix="envkiln-rootfs-", dir=target.parent) as tmp:
            rootfs = Path(tmp) / "rootfs"
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE,
                 str(rootfs), DEBIAN_MIRROR],
                check=True, capture_output=True, timeout=900,
            )
            shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
            shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)
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
    return target


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
