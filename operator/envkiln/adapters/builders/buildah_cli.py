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
                   root: str | os.PathLike[str] | None = None) -> BuildResult:
    """`buildah bud` the context, push to `destination` (repository:tag); returns the pushed digest."""
    tls = f"--tls-verify={'false' if insecure else 'true'}"
    args = ["bud", "--isolation", "chroot", tls, "--layers=false", "-f", str(context_dir / dockerfile),
            "-t", destination]
    if os.path.exists(HOST_CA_BUNDLE):
        # pip/uv inside the build verify TLS against the host's CA bundle.
        args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    result = buildah(*args, str(context_dir), root=root, check=False, timeout=timeout)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise BuildFailed(f"build of {destination} failed ({result.returncode})", log)
    digest = push(destination, destination, insecure=insecure, root=root)
    repository = destination.rsplit(":", 1)[0] if ":" in destination.rsplit("/", 1)[-1] else destination
    for tag in extra_tags:
        push(destination, f"{repository}:{tag}", insecure=insecure, root=root)
    buildah("rmi", "--force", destination, root=root, check=False)
    return BuildResult(destination, digest, log)
