"""Test images and a test package index are real: pip installs from the index, the builder image builds and pushes.

The builder image is what the in-cluster build runs (NODE.md, "Builds inside a pod"): as root,
`buildah build` into an oci-archive; as non-root (65532), `skopeo copy` of that archive to the
registry. Here both steps run in the image through host buildah (`buildah run --isolation
chroot`), not in a pod.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.buildah import buildah, push_archive
from harness.images import BUILDER_ENV, builder_image_archive
from harness.pypi import PackageIndex, Wheel, make_wheel
from harness.registry import Registry

PROBE_SOURCE = 'VERSION = "1.2.3"\n\n\ndef hello() -> str:\n    return "hello from envkiln-probe"\n'


@pytest.fixture()
def probe() -> Wheel:
    return make_wheel("envkiln-probe", "1.2.3", module="envkiln_probe", source=PROBE_SOURCE)


def pip_install(index: PackageIndex, target: Path, *requirements: str) -> subprocess.CompletedProcess[str]:
    # --isolated: no pip.conf / PIP_* (this machine sets PIP_FIND_LINKS), so only the test index counts.
    return subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "install", "--no-deps", "--no-cache-dir",
         "--disable-pip-version-check", "--target", str(target), "--index-url", index.url, *requirements],
        capture_output=True, text=True, timeout=120,
    )


def test_package_index_serves_a_wheel_that_pip_installs(probe: Wheel, tmp_path: Path) -> None:
    with PackageIndex([probe]) as index:
        result = pip_install(index, tmp_path / "site", "envkiln-probe==1.2.3")
        assert result.returncode == 0, result.stdout + result.stderr
        assert index.requested("envkiln-probe") and index.requested("envkiln-probe", files=True)

        imported = subprocess.run(
            [sys.executable, "-c", "import envkiln_probe as p; print(p.VERSION, p.hello(), p.__file__)"],
            capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        )
        assert imported.returncode == 0, imported.stderr
        version, _, rest = imported.stdout.partition(" ")
        assert version == "1.2.3" and "hello from envkiln-probe" in rest
        assert rest.strip().endswith(str(tmp_path / "site" / "envkiln_probe.py"))

        # A project the index does not know: 404, and pip fails at once (no retries, no fallback).
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{index.url}/no-such-project/", timeout=5)
        assert missing.value.code == 404
        failed = pip_install(index, tmp_path / "other", "no-such-project")
        assert failed.returncode != 0
        assert "No matching distribution found for no-such-project" in failed.stderr
        # A version it does not have fails too, after asking for the project's page.
        assert pip_install(index, tmp_path / "other", "envkiln-probe==9.9.9").returncode != 0
        assert "/simple/no-such-project/" in index.requests
    assert not (tmp_path / "other" / "envkiln_probe.py").exists()


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")
def test_package_index_works_with_uv(probe: Wheel, tmp_path: Path) -> None:
    env = {**os.environ, "UV_NO_CONFIG": "1", "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
    with PackageIndex([probe]) as index:
        args = ["uv", "pip", "install", "--no-deps", "--python", sys.executable, "--index-url", index.url]
        installed = subprocess.run([*args, "--target", str(tmp_path / "site"), "envkiln-probe==1.2.3"],
                                   capture_output=True, text=True, timeout=120, env=env)
        assert installed.returncode == 0, installed.stderr
        assert (tmp_path / "site" / "envkiln_probe.py").read_text() == PROBE_SOURCE
        missing = subprocess.run([*args, "--target", str(tmp_path / "other"), "no-such-project"],
                                 capture_output=True, text=True, timeout=120, env=env)
        assert missing.returncode != 0
        assert index.requested("envkiln-probe", files=True) and "/simple/no-such-project/" in index.requests


@pytest.fixture(scope="module")
def builder_archive() -> Path:
    return builder_image_archive()  # cached; the first build ever takes about a minute


@pytest.fixture(scope="module")
def builder_container(builder_archive: Path) -> Iterator[str]:
    """A working container from the builder image in the harness's (vfs) buildah storage."""
    name = f"envkiln-builder-{uuid.uuid4().hex[:8]}"
    buildah("from", "--pull-never", "--name", name, f"oci-archive:{builder_archive}")
    yield name
    buildah("rm", name, check=False)


def blob(registry: Registry, repository: str, digest: str) -> bytes:
    with urllib.request.urlopen(f"{registry.url}/v2/{repository}/blobs/{digest}", timeout=30) as response:
        return response.read()


@pytest.mark.timeout(1800)
def test_builder_image_is_pushed_to_the_registry(builder_archive: Path, registry: Registry) -> None:
    digest = push_archive(builder_archive, f"{registry.host}/envkiln/builder:test")
    manifest, served = registry.manifest("envkiln/builder", "test")
    assert served == digest
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert len(manifest["layers"]) == 1
    config = json.loads(blob(registry, "envkiln/builder", manifest["config"]["digest"]))
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    assert env["BUILDAH_ISOLATION"] == "chroot" and env["STORAGE_DRIVER"] == "vfs"
    assert config["architecture"] == "amd64" and config["os"] == "linux"


@pytest.mark.timeout(1800)
def test_builder_image_has_buildah_skopeo_and_vfs(builder_container: str) -> None:
    def run(*command: str) -> str:
        return buildah("run", "--isolation", "chroot", builder_container, "--", *command, timeout=120).stdout

    assert run("buildah", "--version").startswith("buildah version ")
    assert run("skopeo", "--version").startswith("skopeo version ")
    assert 'driver = "vfs"' in run("cat", "/etc/containers/storage.conf")
    assert run("test", "-s", "/etc/ssl/certs/ca-certificates.crt") == ""
    env = dict(line.split("=", 1) for line in run("env").splitlines() if "=" in line)
    assert {key: env.get(key) for key in BUILDER_ENV} == BUILDER_ENV
    assert run("sh", "-c", "ls /var/lib/apt/lists /var/cache/apt/archives | grep -c deb || true").strip() == "0"


@pytest.mark.timeout(1800)
def test_builder_image_builds_as_root_and_pushes_as_non_root(builder_container: str, registry: Registry,
                                                             tmp_path: Path) -> None:
    """The pod's split: root `buildah build` -> oci-archive in /out; uid 65532 `skopeo copy` -> registry."""
    context, out, storage, readonly = (tmp_path / name for name in ("ctx", "out", "storage", "readonly"))
    for directory in (context, out, storage, readonly):
        directory.mkdir()
    out.chmod(0o777)  # an emptyDir is world-writable too
    # FROM scratch + a static busybox: a RUN step without pulling any base image.
    shutil.copy(shutil.which("busybox") or "/bin/busybox", context / "busybox")
    (context / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox echo built-by-envkiln > /built.txt"]\n'
    )
    try:
        # Caveat: nested in host buildah's chroot isolation, the kernel refuses the user namespace
        # that root-without-SYS_ADMIN buildah wants (unshare(CLONE_NEWUSER) fails inside a chroot),
        # so this step gets SYS_ADMIN here; in a pod SETUID/SETGID/SETFCAP are enough (NODE.md).
        built = buildah(
            "run", "--isolation", "chroot", "--cap-add", "CAP_SYS_ADMIN",
            "-v", f"{context}:/ctx:ro", "-v", f"{out}:/out", "-v", f"{storage}:/var/lib/containers",
            builder_container, "--",
            "buildah", "--storage-driver", "vfs", "build", "--isolation", "chroot", "-q",
            "-t", "oci-archive:/out/img.tar", "-f", "/ctx/Dockerfile", "/ctx",
            check=False, timeout=300,
        )
        assert built.returncode == 0, built.stdout + built.stderr
        assert (out / "img.tar").stat().st_size > 1_000_000

        # Non-root, HOME unset, /var/tmp read-only: skopeo unpacks the archive into --tmpdir.
        destination = f"{registry.host}/envkiln/smoke:test"
        pushed = buildah(
            "run", "--isolation", "chroot", "--user", "65532:65532",
            "-v", f"{out}:/out", "-v", f"{readonly}:/var/tmp:ro", builder_container, "--",
            "env", "-u", "HOME", "skopeo", "--tmpdir", "/out", "copy", "--quiet", "--dest-tls-verify=false",
            "--digestfile", "/out/digest", "oci-archive:/out/img.tar", f"docker://{destination}",
            check=False, timeout=300,
        )
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr

        manifest, served = registry.manifest("envkiln/smoke", "test")
        assert (out / "digest").read_text().strip() == served
        found = {}
        for layer in manifest["layers"]:
            path = tmp_path / "layer"
            path.write_bytes(blob(registry, "envkiln/smoke", layer["digest"]))
            with tarfile.open(path, "r:*") as archive:
                member = next((m for m in archive.getmembers() if m.name.lstrip("./") == "built.txt"), None)
                if member is not None:
                    found["built.txt"] = archive.extractfile(member).read()  # type: ignore[union-attr]
        assert found == {"built.txt": b"built-by-envkiln\n"}
    finally:
        shutil.rmtree(storage, ignore_errors=True)
