"""The builder image (Debian's buildah + skopeo) as an OCI archive, made once per cache.

The operator's in-cluster build runs this image twice (see NODE.md, "Builds inside a pod"): as
root with SETUID/SETGID/SETFCAP for `buildah --storage-driver vfs build --isolation chroot ...`,
writing an oci-archive, and as a non-root user (65532) with no capabilities for `skopeo copy`.

Recipe: a debootstrap minbase root fs, then `apt-get install buildah skopeo ca-certificates` in a
chroot (debootstrap's `--include` stops on container-network-stack), then buildah from scratch,
copy the root fs in, commit to an oci-archive. The chroot's /proc lives in a private mount
namespace (`unshare --mount --mount-proc`), so it goes away with the process whatever happens.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.buildah import DEBIAN_MIRROR, DEBIAN_SUITE, buildah
from harness.cache import cached
from harness.controlplane import cache_dir

__all__ = ["BUILDER_ENV", "BUILDER_PACKAGES", "builder_image_archive"]

BUILDER_PACKAGES = ("buildah", "skopeo", "ca-certificates")
BUILDER_ENV = {
    "BUILDAH_ISOLATION": "chroot",
    "STORAGE_DRIVER": "vfs",
    # The push container runs as an arbitrary non-root uid, often with HOME=/ or unset and a
    # read-only root: containers/image then keeps its blob-info cache in memory, and auth comes
    # from --dest-authfile. A writable HOME is not needed; /tmp is a sane default where it is.
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}
STORAGE_CONF = """\
# envkiln builder: no overlay in an unprivileged pod, so vfs everywhere.
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
"""
CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LANG": "C",
    "HOME": "/root",
}


def builder_image_archive() -> Path:
    """An OCI archive of Debian bookworm minbase + buildah, skopeo, ca-certificates (cached)."""
    return cached(cache_dir() / "images" / f"debian-{DEBIAN_SUITE}-builder.oci.tar", _make_builder_image)


def _make_builder_image(target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="envkiln-builder-rootfs-", dir=target.parent))
    try:
        rootfs = tmp / "rootfs"
        _make_rootfs(rootfs)
        _commit(rootfs, target)
    finally:
        _remove_rootfs(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions build it once
        if target.exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix="envkiln-builder-rootfs-", dir=target.parent))
        try:
            rootfs = tmp / "rootfs"
            _make_rootfs(rootfs)
            _commit(rootfs, target)
        finally:
            _remove_rootfs(tmp)
    return target


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(args[:6])} ... failed ({result.returncode}):\n{tail}")


def _in_chroot(rootfs: Path, *command: str, timeout: float = 900) -> None:
    """Run a command chrooted into rootfs with its own /proc, in a private mount + pid namespace."""
    _run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", f"--mount-proc={rootfs}/proc",
          "chroot", str(rootfs), *command], timeout=timeout, env=CHROOT_ENV)


def _make_rootfs(rootfs: Path) -> None:
    _run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR], timeout=900)
    resolv = rootfs / "etc" / "resolv.conf"
    policy_rc = rootfs / "usr" / "sbin" / "policy-rc.d"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    policy_rc.write_text("#!/bin/sh\nexit 101\n")  # no services start in the chroot
    policy_rc.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0"]
        _in_chroot(rootfs, "apt-get", "update", "-q")
        try:
            _in_chroot(rootfs, *install, *BUILDER_PACKAGES)
        except RuntimeError:
            _in_chroot(rootfs, *install, "-f")  # finish what a failed postinst left half-configured
            _in_chroot(rootfs, *install, *BUILDER_PACKAGES)
        _in_chroot(rootfs, "apt-get", "clean")
    finally:
        resolv.unlink(missing_ok=True)
        policy_rc.unlink(missing_ok=True)
    for junk in ("var/lib/apt/lists", "var/cache/apt", "var/log/apt", "var/cache/debconf/templates.dat-old"):
        path = rootfs / junk
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and child.name != "partial":
                    shutil.rmtree(child, ignore_errors=True)
                elif child.is_file():
                    child.unlink()
        elif path.exists():
            path.unlink()
    for log in ("dpkg.log", "alternatives.log", "bootstrap.log"):
        (rootfs / "var" / "log" / log).unlink(missing_ok=True)
    (rootfs / "etc" / "hostname").unlink(missing_ok=True)  # debootstrap copied the host's
    containers = rootfs / "etc" / "containers"
    containers.mkdir(parents=True, exist_ok=True)
    (containers / "storage.conf").write_text(STORAGE_CONF)
    for directory in ("var/lib/containers", "run/containers"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)


def _commit(rootfs: Path, target: Path) -> None:
    container = buildah("from", "scratch").stdout.strip()
    try:
        mount = buildah("mount", container).stdout.strip()
        subprocess.run(["cp", "-a", f"{rootfs}/.", mount], check=True, timeout=900)
        buildah("umount", container)
        env_args = [arg for key, value in BUILDER_ENV.items() for arg in ("--env", f"{key}={value}")]
        buildah("config", *env_args, "--cmd", "/bin/bash", "--workingdir", "/",
                "--label", "org.opencontainers.image.title=envkiln-builder", container)
        partial = target.with_suffix(".partial")
        buildah("commit", "--format", "oci", container, f"oci-archive:{partial}")
        partial.rename(target)
    finally:
        buildah("rm", container, check=False)


def _remove_rootfs(tmp: Path) -> None:
    """Remove the scratch root fs, unless something is still mounted in it (then leave it, loudly)."""
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if line.split()[4] == str(tmp) or line.split()[4].startswith(f"{tmp}/")]
    if mounted:
        raise RuntimeError(f"still mounted under {tmp}, not removing it: {mounted}")
    shutil.rmtree(tmp, ignore_errors=True)


def with_files(archive: Path, target: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """A copy of the OCI archive `archive` with one more layer holding `files` ({absolute path: (content,
    mode)}, owned by root), written to `target`. No container storage: the layer is a tarball added to
    the image's manifest and config (for test-only additions, e.g. a credential helper)."""
    import gzip
    import hashlib
    import io
    import json
    import tarfile
    import time

    def digest_of(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    with tarfile.open(archive) as source:
        blobs = {m.name: source.extractfile(m).read() for m in source.getmembers() if m.isfile()}  # type: ignore[union-attr]
    index = json.loads(blobs["index.json"])
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(blobs["blobs/sha256/" + manifest_digest.split(":", 1)[1]])
    config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"].split(":", 1)[1]])

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(content), mode, 0
            layer.addfile(info, io.BytesIO(content))
    diff = raw.getvalue()
    compressed = gzip.compress(diff, mtime=0)
    config["rootfs"]["diff_ids"].append(digest_of(diff))
    config.setdefault("history", []).append({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
                                             "created_by": "envkiln test harness: " + ", ".join(sorted(files))})
    config_bytes = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": digest_of(config_bytes), "size": len(config_bytes)}
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": digest_of(compressed), "size": len(compressed)})
    manifest_bytes = json.dumps(manifest).encode()
    index["manifests"][0] = {**index["manifests"][0], "digest": digest_of(manifest_bytes),
                             "size": len(manifest_bytes)}
    for data in (compressed, config_bytes, manifest_bytes):
        blobs["blobs/sha256/" + digest_of(data).split(":", 1)[1]] = data
    blobs["index.json"] = json.dumps(index).encode()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w") as out:
        for name, data in sorted(blobs.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            out.addfile(info, io.BytesIO(data))
    return target
