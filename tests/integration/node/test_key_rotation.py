"""Rotating the signing key rebuilds nothing (docs/security.md, "Rotating the signing key").

The operator keeps its keys in the Secret envkiln-signing-key of its own namespace, as the chart
installs it. The test starts from what an operator before key ids left (that Secret with its one
key, id `key`, and a build signed `v1:`, without a key id), builds an Environment for real on the
node, rotates the key with the documented kubectl command and restarts the operator. Nothing is
built again, the old builds are still trusted (new Environments of the same definitions are Ready
from them), and a new build is signed with the new key id. Retiring the old key then makes the old
builds untrusted, which shows the checks above could fail.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from envkiln.core.names import ANNOTATION_SIGNATURE, SIGNING_KEY_SECRET
from envkiln.core.trust import signature_key_id
from harness.controlplane import kubectl
from harness.pypi import PackageIndex
from harness.records import PreKeyIdSigner, seed_build
from node_helpers import probe_spec
from operator_helpers import Envs, condition, environment, wait_for


def key_ids(build: dict[str, Any]) -> tuple[str | None, str | None]:
    """(key id of the build signature, key id of the record signature)."""
    return (signature_key_id(build["metadata"]["annotations"][ANNOTATION_SIGNATURE]),
            signature_key_id((build.get("status") or {}).get("recordSignature")))


def run_kubectl(kubeconfig: str, *args: str) -> None:
    result = subprocess.run([str(kubectl()), "--kubeconfig", kubeconfig, *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(1200)
def test_rotating_the_signing_key_rebuilds_nothing(node_api: client.ApiClient, node_namespace: str,
                                                  operator_namespace: str, control_plane: Any,
                                                  node_base_image: str, node_registry_host: str,
                                                  probe_index: PackageIndex, buildah_operator: Any) -> None:
    core, kubeconfig = client.CoreV1Api(node_api), str(control_plane.kubeconfig)
    # No ENVKILN_SIGNING_KEY: the keys are the Secret's, in the operator's namespace.
    settings = {"operator_namespace": operator_namespace, "signing_key": ""}
    envs = Envs(node_api, node_namespace)

    # --- before: an existing cluster (its Secret and a build from before key ids), then a real build ---
    # What operators before key ids left: the Secret with one key (`key`, as the operator still creates
    # it) and builds signed `v1:<hex>`. Seeded while no operator runs, as they were finished then.
    old_key = secrets.token_bytes(32)
    core.create_namespaced_secret(operator_namespace, {"metadata": {"name": SIGNING_KEY_SECRET},
                                                       "data": {"key": base64.b64encode(old_key).decode()}})
    legacy_spec = {"image": node_base_image, "pip": [f"legacy-seeded=={uuid.uuid4().int % 1000}.0"]}
    legacy_digest, _ = seed_build(node_api, node_namespace, legacy_spec, node_registry_host,
                                  signer=PreKeyIdSigner(old_key))
    [legacy] = envs.builds()
    assert legacy["metadata"]["annotations"][ANNOTATION_SIGNATURE].startswith("v1:")
    assert key_ids(legacy) == (None, None), "signed before key ids"

    first = buildah_operator(node_namespace, **settings)
    envs.create(environment("legacy", **legacy_spec))
    status = envs.wait_phase("legacy", "Ready", timeout=60, diagnostics=first.log)
    assert status["cacheHit"] is True and status["build"] == legacy["metadata"]["name"], status
    assert status["imageDigest"] == legacy_digest
    built_spec = probe_spec(node_base_image, probe_index)
    envs.create(environment("built", **built_spec))
    envs.wait_phase("built", "Ready", timeout=300, diagnostics=first.log)
    [built] = [b for b in envs.builds() if b["metadata"]["name"] != legacy["metadata"]["name"]]
    assert key_ids(built) == ("key", "key"), "signed with the Secret's one key, id `key`"
    assert set(core.read_namespaced_secret(SIGNING_KEY_SECRET, operator_namespace).data) == {"key"}, "left as it was"

    builds = {b["metadata"]["name"]: b["metadata"]["uid"] for b in envs.builds()}
    jobs = {j.metadata.name: j.metadata.uid for j in envs.jobs()}
    assert len(builds) == 2 and len(jobs) == 1, "one Job: the real build's"
    ready_since = {name: condition(envs.status(name), "Ready")["lastTransitionTime"] for name in ("built", "legacy")}

    # --- rotate, exactly as docs/security.md says, and restart the operator ------------------------------
    first.stop()
    new_key = base64.b64encode(secrets.token_bytes(32)).decode()
    run_kubectl(kubeconfig, "-n", operator_namespace, "patch", "secret", SIGNING_KEY_SECRET, "--type", "merge",
                "-p", json.dumps({"stringData": {"current": "k2"}, "data": {"k2": new_key}}))
    second = buildah_operator(node_namespace, **settings)
    wait_for(lambda: "signing with key id 'k2'; also verifying with 'key'" in second.log(), timeout=30,
             what="the operator's log naming its keys (docs/security.md)", diagnostics=second.log)

    # The old builds are trusted by the rotated operator: new Environments of the same definitions are
    # Ready from them at once, and so are the old Environments, their Ready condition never flipped.
    envs.create(environment("built-twin", **built_spec))
    envs.create(environment("legacy-twin", **legacy_spec))
    for twin, original in (("built-twin", "built"), ("legacy-twin", "legacy")):
        status = envs.wait_phase(twin, "Ready", timeout=60, diagnostics=second.log)
        assert status["cacheHit"] is True and status["imageRef"] == envs.status(original)["imageRef"], status
    deadline = time.monotonic() + 10  # a few resync periods (ENVKILN_ENV_SYNC_SECONDS=2)
    while time.monotonic() < deadline:
        for name in ("built", "legacy"):
            status = envs.status(name)
            assert status["phase"] == "Ready", (name, status, second.log()[-3000:])
            assert condition(status, "Ready")["lastTransitionTime"] == ready_since[name], (name, status)
        time.sleep(1)
    assert {b["metadata"]["name"]: b["metadata"]["uid"] for b in envs.builds()} == builds, "nothing rebuilt"
    assert {j.metadata.name: j.metadata.uid for j in envs.jobs()} == jobs, "no build Job"
    assert {key_ids(b) for b in envs.builds()} == {("key", "key"), (None, None)}, "old signatures left as they were"

    # A new definition is built and signed with the new key.
    envs.create(environment("after", **probe_spec(node_base_image, probe_index)))
    after_status = envs.wait_phase("after", "Ready", timeout=300, diagnostics=second.log)
    after = envs.build(after_status["build"])
    assert key_ids(after) == ("k2", "k2")
    assert len(envs.jobs()) == 2, "one Job: the new definition's"

    # --- the control: retire the old key, and what it signed is no longer trusted ------------------------
    second.stop()
    run_kubectl(kubeconfig, "-n", operator_namespace, "patch", "secret", SIGNING_KEY_SECRET, "--type", "json",
                "-p", json.dumps([{"op": "remove", "path": "/data/key"}]))
    third = buildah_operator(node_namespace, **settings)
    for name, problem in (("built", "signed with key id 'key', which is not configured (configured: 'k2')"),
                          ("legacy", "has no key id (it was written before key ids)")):
        status = envs.wait_phase(name, "Failed", timeout=60, diagnostics=third.log)
        assert condition(status, "Ready")["reason"] == "UntrustedBuild", status
        assert problem in status["message"], status["message"]
    wait_for(lambda: envs.status("after").get("phase") == "Ready", timeout=10, what="the new build still trusted")
    assert len(envs.builds()) == 3 and len(envs.jobs()) == 2, "an untrusted build is never rebuilt by itself"
