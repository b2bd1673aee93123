"""Drift and reproducibility (issue #15) with real builds on the node, the real registry and the CLI.

One base image tag is pushed, built on, then moved to a new digest (a rebuilt base pushed under the
same tag). The base-update watcher (every few seconds here) must see it: the Notify Environment gets
the BaseImageUpdated condition and an Event; the Rebuild Environment gets a second image on the new
base (tag `<hash>-b<digest>`), a history entry with the reason, while the first image stays
pullable. Each build records its lock (read back from the image's last layer); `envkiln lock` and
`envkiln diff` print them; a definition pinned to a lock rebuilds exactly that lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness.buildah import build_and_push
from harness.pypi import PackageIndex, make_wheel
from node_helpers import MANIFEST_ACCEPT, index_steps
from operator_helpers import Envs, condition, environment, wait_for

pytestmark = pytest.mark.timeout(1200)
DRIFT_A, DRIFT_B = "envkiln-drift-a", "envkiln-drift-b"


def envkiln(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envkiln.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBECONFIG": str(kubeconfig)}, check=False)


def registry_json(url: str, accept: str = MANIFEST_ACCEPT) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def manifest_found(image_ref: str) -> bool:
    name, digest = image_ref.split("@")
    host, repository = name.split("/", 1)
    request = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{digest}", method="HEAD",
                                     headers={"Accept": MANIFEST_ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def image_labels(image_ref: str) -> dict[str, str]:
    name, digest = image_ref.split("@")
    host, repository = name.split("/", 1)
    manifest = registry_json(f"http://{host}/v2/{repository}/manifests/{digest}")
    config = registry_json(f"http://{host}/v2/{repository}/blobs/{manifest['config']['digest']}", accept="*/*")
    return dict((config.get("config") or {}).get("Labels") or {})


@pytest.fixture()
def drift_base(node_base_image: str, node_registry_host: str, tmp_path: Path) -> tuple[str, str, Any]:
    """A base image under a tag of its own: (tag reference, first digest, a function that moves the tag)."""
    reference = f"{node_registry_host}/envkiln-test/drift-{uuid.uuid4().hex[:8]}:bookworm"
    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "Dockerfile").write_text(f"FROM {node_base_image}\nRUN echo first > /etc/drift-base\n")
    first = build_and_push(tmp_path / "first", reference).digest

    def move() -> str:
        (tmp_path / "second").mkdir()
        (tmp_path / "second" / "Dockerfile").write_text(
            f"FROM {node_base_image}\nRUN echo second, patched > /etc/drift-base\n")
        return build_and_push(tmp_path / "second", reference).digest

    return reference, first, move


def test_base_update_notify_rebuild_lock_and_diff(node_api: client.ApiClient, node_namespace: str, cluster: Any,
                                                  probe_index: PackageIndex, buildah_operator: Any,
                                                  drift_base: tuple[str, str, Any]) -> None:
    for name, version in ((DRIFT_A, "1.0"), (DRIFT_A, "2.0"), (DRIFT_B, "1.0")):
        probe_index.add(make_wheel(name, version, module=name.replace("-", "_"), source=f'VERSION = "{version}"\n'))
    base, first_digest, move_base = drift_base
    operator = buildah_operator(node_namespace, base_check_seconds="3")
    envs = Envs(node_api, node_namespace)
    steps = index_steps(probe_index)
    v1 = {"image": base, "dockerSteps": steps, "pip": [f"{DRIFT_A}==1.0"]}
    envs.create(environment("follows", **v1, baseImageUpdates="Rebuild"))
    envs.create(environment("watches", **v1))  # Notify, the default; the same definition, so the same build
    first = envs.wait_phase("follows", "Ready", timeout=400, diagnostics=operator.log)
    watched = envs.wait_phase("watches", "Ready", timeout=60, diagnostics=operator.log)
    assert first["imageRef"] == watched["imageRef"] and first["build"] == watched["build"]

    # 1. The base digest is recorded: in both statuses, the EnvironmentBuild and the image's labels.
    assert first["baseImage"] == base and first["baseImageDigest"] == first_digest
    build = envs.build(first["build"])
    assert build["spec"]["baseImageDigest"] == first_digest and build["status"]["baseImageDigest"] == first_digest
    # The FROM is pinned (one build stage: the buildah builder reads the base's config).
    assert f"@{first_digest} AS envkiln-image" in build["spec"]["plan"]["dockerfile"], "the FROM is pinned"
    labels = image_labels(first["imageRef"])
    assert labels["org.opencontainers.image.base.digest"] == first_digest
    assert labels["org.opencontainers.image.base.name"] == base

    # 4. The lock, read back from the image: summary in both statuses, text in the build.
    lock = build["status"]["lock"]
    assert f"{DRIFT_A}==1.0" in lock["text"] and lock["packages"] >= 1 and lock["digest"].startswith("sha256:")
    assert first["lock"] == {"digest": lock["digest"], "packages": lock["packages"]}
    printed = envkiln(cluster.kubeconfig, "lock", "follows", "-n", node_namespace)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == lock["text"] if lock["text"].endswith("\n") else lock["text"] + "\n"

    # 2. The base tag moves. Notify: a condition and an Event; Rebuild: a second image, then the move.
    second_digest = move_base()
    assert second_digest != first_digest

    def notified() -> dict[str, Any] | None:
        status = envs.status("watches")
        found = [c for c in status.get("conditions") or [] if c["type"] == "BaseImageUpdated"]
        return status if found and found[0]["status"] == "True" else None

    watched = wait_for(notified, timeout=120, what="BaseImageUpdated on the Notify Environment",
                       diagnostics=operator.log)
    assert condition(watched, "BaseImageUpdated")["reason"] == "BaseImageUpdated"
    assert second_digest in condition(watched, "BaseImageUpdated")["message"]
    assert watched["latestBaseImageDigest"] == second_digest and watched["imageRef"] == first["imageRef"]
    wait_for(lambda: [e for e in envs.events("watches") if e.reason == "BaseImageUpdated"], timeout=30,
             what="the BaseImageUpdated Event")

    def rebuilt() -> dict[str, Any] | None:
        status = envs.status("follows")
        return status if status.get("imageRef") != first["imageRef"] and status.get("phase") == "Ready" else None

    moved = wait_for(rebuilt, timeout=400, interval=1, what="the Rebuild Environment on its new image",
                     diagnostics=operator.log)
    key = f"{moved['hash']}-b{second_digest.split(':')[1][:12]}"
    assert moved["build"] == f"envb-{key}" and moved["baseImageDigest"] == second_digest
    assert condition(moved, "BaseImageUpdated")["reason"] == "Rebuilt"
    assert moved["hash"] == first["hash"], "the definition hash does not change; the image identity adds the base"
    assert [(v["version"], v["imageRef"], v.get("reason"), v.get("baseImageDigest")) for v in moved["versions"]] == [
        ("1", first["imageRef"], None, first_digest), ("1", moved["imageRef"], "BaseImageUpdated", second_digest)]
    rebuild = envs.build(moved["build"])
    assert rebuild["spec"]["image"].endswith(f":{key}") and rebuild["spec"]["reason"] == "BaseImageUpdated"
    assert manifest_found(first["imageRef"]), "the previous image stays available"
    assert image_labels(moved["imageRef"])["org.opencontainers.image.base.digest"] == second_digest
    assert envs.status("watches")["imageRef"] == first["imageRef"], "Notify never moves the image"

    # 4. A new version with other packages and a docker step; `envkiln diff` between real builds.
    follows = envs.get("follows")
    follows["spec"].update(version="2", dockerSteps=[*steps, "ENV DRIFT_STAGE=2"],
                           pip=[f"{DRIFT_A}==2.0", f"{DRIFT_B}==1.0"])
    envs.custom.replace_namespaced_custom_object("envkiln.dev", "v1alpha1", node_namespace, "environments",
                                                 "follows", follows)
    two = envs.wait_phase("follows", "Ready", timeout=400, diagnostics=operator.log)
    assert two["baseImageDigest"] == second_digest, "a new definition is built on the base's current digest"
    diff = envkiln(cluster.kubeconfig, "diff", "watches:1", "follows:2", "-n", node_namespace)
    print(diff.stdout)  # the closing note of issue #15 quotes it
    assert diff.returncode == 1, diff.stderr  # they differ (as diff(1)); envkiln.cli.errors
    assert f"{first_digest[:19]}" in diff.stdout and f"{second_digest[:19]}" in diff.stdout
    assert "ENV DRIFT_STAGE=2" in diff.stdout
    assert f"{DRIFT_B}==1.0" in diff.stdout and "1.0 -> 2.0" in diff.stdout
    same = envkiln(cluster.kubeconfig, "diff", "follows:2", "follows:2", "-n", node_namespace)
    assert same.returncode == 0 and "no differences" in same.stdout, same.stdout

    # 4. Pinned to that lock, a new definition installs exactly it (and says so when it cannot).
    locked = envkiln(cluster.kubeconfig, "lock", "follows:2", "-n", node_namespace).stdout
    envs.create(environment("pinned", image=base, dockerSteps=steps, pip=[f"{DRIFT_A}==2.0", f"{DRIFT_B}==1.0"],
                            lock=locked))
    pinned = envs.wait_phase("pinned", "Ready", timeout=400, diagnostics=operator.log)
    assert envs.build(pinned["build"])["status"]["lock"]["text"] == locked
    assert pinned["lock"]["digest"] == envs.status("follows")["lock"]["digest"]
