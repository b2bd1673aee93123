"""buildah as a local process (the `local` builder): build a context directory and push it.

vfs storage and chroot isolation work without a container engine or extra privileges beyond
root; the storage root is a setting (ENVKILN_LOCAL_STORAGE_ROOT, default buildah's own).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from envkiln.core.names import LOCK_EXPORT_DIR, LOCK_EXPORT_FILE, LOCK_FILE, lock_tag

HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class BuildFailed(RuntimeError):
    def __init__(self, message: str, log: str):
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class BuildResult:
    image: str
    digest: str
    log: str


def storage_args(root: str | os.PathLike[str] | None) -> list[str]:
    if root is None:
        return ["--storage-driver", "vfs"]
    base = Path(root)
    return ["--storage-driver", "vfs", "--root", str(base / "storage"), "--runroot", str(base / "run")]


def buildah(*args: str, root: str | os.PathLike[str] | None = None, check: bool = True,
            timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["buildah", *storage_args(root), *args], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise BuildFailed(f"buildah {args[0]} failed ({result.returncode})", result.stdout + result.stderr)
    return result


def push(source: str, destination: str, insecure: bool = True, root: str | os.PathLike[str] | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        buildah("push", f"--tls-verify={'false' if insecure else 'true'}", "--digestfile", str(digest_file),
                source, f"docker://{destination}", root=root)
        return digest_file.read_text().strip()


def build_and_push(context_dir: Path, destination: str, dockerfile: str = "Dockerfile",
                   extra_tags: tuple[str, ...] = (), insecure: bool = True, timeout: float = 1800,
                   root: str | os.PathLike[str] | None = None, lock_dir: Path | None = None) -> BuildResult:
    """`buildah bud` the context, push to `destination` (repository:tag); returns the pushed digest.

    `lock_dir` (a one-stage render's lock, envkiln.core.render.lock_location): mounted into RUN steps
    at names.LOCK_EXPORT_DIR; the lock the build writes there is pushed as a one-layer image
    (names.LOCK_FILE in it) to names.lock_tag(digest) before the digest is returned."""
    tls = f"--tls-verify={'false' if insecure else 'true'}"
    args = ["bud", "--isolation", "chroot", tls, "--layers=false", "-f", str(context_dir / dockerfile),
            "-t", destination]
    if os.path.exists(HOST_CA_BUNDLE):
        # pip/uv inside the build verify TLS against the host's CA bundle.
        args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    if lock_dir is not None:
        args += ["-v", f"{lock_dir}:{LOCK_EXPORT_DIR}"]
    result = buildah(*args, str(context_dir), root=root, check=False, timeout=timeout)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise BuildFailed(f"build of {destination} failed ({result.returncode})", log)
    repository = destination.rsplit(":", 1)[0] if ":" in destination.rsplit("/", 1)[-1] else destination
    lock = lock_dir / Path(LOCK_EXPORT_FILE).name if lock_dir is not None else None
    if lock is not None and (not lock.is_file() or lock.stat().st_size == 0):
        buildah("rmi", "--force", destination, root=root, check=False)
        raise BuildFailed(f"the build wrote no lock to {LOCK_EXPORT_FILE}; nothing was pushed", log)
    try:
        digest = push(destination, destination, insecure=insecure, root=root)
        if lock is not None:
            _push_lock_image(lock, f"{repository}:{lock_tag(digest)}", insecure, root, timeout)
        for tag in extra_tags:
            push(destination, f"{repository}:{tag}", insecure=insecure, root=root)
    finally:
        buildah("rmi", "--force", destination, root=root, check=False)
    return BuildResult(destination, digest, log)


def _push_lock_image(lock: Path, destination: str, insecure: bool, root: str | os.PathLike[str] | None,
                     timeout: float) -> None:
    """The lock file the build wrote, as a one-layer image FROM scratch (names.LOCK_FILE in it), pushed
    to `destination`."""
    with tempfile.TemporaryDirectory(prefix="envkiln-lockfile-") as tmp:
        dockerfile = Path(tmp) / "Dockerfile"
        dockerfile.write_text(f"FROM scratch\nCOPY {lock.name} {LOCK_FILE}\n")
        buildah("bud", "--isolation", "chroot", "--layers=false", "-f", str(dockerfile), "-t", destination,
                str(lock.parent), root=root, timeout=timeout)
    try:
        push(destination, destination, insecure=insecure, root=root)
    finally:
        buildah("rmi", "--force", destination, root=root, check=False)
