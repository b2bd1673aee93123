"""Tenants and build Jobs on the real node (issue #22: nothing a tenant can create is adopted; bounded
builds). Every pod here really runs: the Job controller makes the pods, the kubelet reports them.

- a Job that a namespace editor creates in advance under a build's reserved name (with a `push`
  container reporting a digest of the editor's choosing) is not adopted: the build fails naming it,
  no push credential is copied for it, and nothing is signed;
- Environments applied all at once never run more build Jobs than the limits allow;
- after several spec edits only the newest build, and those a version points to, remain.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from harness.buildah import base_image_archive, push_archive
from operator_helpers import Envs, condition, environment, hash_of, image_for, wait_for

pytestmark = pytest.mark.timeout(900)


def unique_steps(*steps: str) -> list[str]:
    """A definition of its own, so no other test's build is a cache hit for it."""
    return [f"ENV ENVKILN_TEST_DEFINITION={uuid.uuid4().hex[:12]}", *steps]


@pytest.fixture()
def operator_namespace(node_api: client.ApiClient) -> Iterator[str]:
    """The operator's own namespace: its registry credential and the namespaces' push identities."""
    name = f"ops-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(node_api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)


def docker_config(registry: str, marker: str) -> dict[str, str]:
    """A dockerconfigjson that carries `marker` (the test registry does not check credentials)."""
    auth = base64.b64encode(b"envkiln:not-checked-by-the-test-registry").decode()
    config = {"auths": {registry: {"auth": auth}, f"{marker}.invalid": {"auth": auth}}}
    return {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}


def decoded(secret: client.V1Secret) -> str:
    return " ".join(base64.b64decode(v).decode(errors="replace") for v in (secret.data or {}).values())


def tenant_job(name: str, image: str, digest: str) -> dict[str, Any]:
    """What a namespace editor (the built-in `edit` role creates Jobs) can make: a Job under the
    build's reserved name whose pod has a `push` container that reports `digest`."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "automountServiceAccountToken": False,
                "containers": [{"name": "push", "image": image,
                                "command": ["/bin/sh", "-c", f"printf %s {digest} > /dev/termination-log"]}]}}}}


def test_a_job_a_tenant_made_under_the_reserved_name_is_not_adopted(
        node_api: client.ApiClient, node_namespace: str, operator_namespace: str, node_base_image: str,
        node_registry_host: str, builder_image: str, buildah_operator: Any) -> None:
    core, batch = client.CoreV1Api(node_api), client.BatchV1Api(node_api)
    envs = Envs(node_api, node_namespace)
    spec = {"image": node_base_image, "dockerSteps": unique_steps("RUN echo built-by-envkiln > /built")}
    value = hash_of(spec)
    job_name, build_name = f"envkiln-{value}-1", f"envb-{value}"
    # The tenant pushes an image of its own to its namespace's path (its identity may push there) and
    # prepares a Job, under the name the build's first attempt will have, that reports that digest.
    planted = push_archive(base_image_archive(), image_for(spec, node_registry_host, node_namespace))
    tenants = batch.create_namespaced_job(node_namespace, tenant_job(job_name, builder_image, planted))
    wait_for(lambda: batch.read_namespaced_job(job_name, node_namespace).status.succeeded == 1, timeout=120,
             what="the tenant's Job to complete")
    # The operator's credential and the namespace's push identity, each with a marker.
    marker = uuid.uuid4().hex[:12]
    for name, prefix in (("envkiln-registry", "operator"), (f"envkiln-push-{node_namespace}", "identity")):
        core.create_namespaced_secret(operator_namespace, {
            "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
            "data": docker_config(node_registry_host, f"{prefix}-{marker}")})
    operator = buildah_operator(node_namespace, operator_namespace=operator_namespace,
                                registry_secret="envkiln-registry", build_retry_limit="0")

    envs.create(environment("victim", **spec))
    status = wait_for(lambda: (lambda s: s if s.get("phase") in ("Ready", "Failed") else None)(envs.status("victim")),
                      timeout=180, what="the Environment settled", diagnostics=operator.log)
    assert status["phase"] == "Failed", f"adopted the tenant's Job (planted digest {planted}): {status}"

    # It fails, saying which object holds the name and what to do.
    build = envs.build(build_name)
    succeeded = condition(build["status"], "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "NameTaken"), succeeded
    tail = build["status"]["logTail"]
    assert f"Job {node_namespace}/{job_name} already exists and envkiln did not make it" in tail, tail
    assert f"kubectl -n {node_namespace} delete job {job_name}" in tail, tail
    assert any(e.reason == "BuildFailed" and "did not make it" in (e.message or "")
               for e in envs.events(build_name)), "an Event on the build says so"
    assert build_name in status["message"]
    # Nothing signed: no digest recorded, the Environment points to no image.
    assert not {"digest", "recordSignature", "imageRef"} & set(build["status"]), build["status"]
    assert not {"imageRef", "imageDigest"} & set(status), status
    # No credential was copied for the tenant's Job: no `<job>-push`, nothing owned by that Job,
    # nothing holding either marker anywhere in the namespace.
    secrets = core.list_namespaced_secret(node_namespace).items
    assert f"{job_name}-push" not in {s.metadata.name for s in secrets}
    assert not [s for s in secrets if any(r.uid == tenants.metadata.uid for r in s.metadata.owner_references or [])]
    assert not [s.metadata.name for s in secrets if marker in decoded(s)]
    # The tenant's Job is left as it was: not deleted, not changed, not taken over.
    after = batch.read_namespaced_job(job_name, node_namespace)
    assert after.metadata.uid == tenants.metadata.uid and not after.metadata.owner_references
    assert after.metadata.labels == tenants.metadata.labels and after.status.succeeded == 1
    assert [j.metadata.name for j in envs.jobs()] == [], "the operator started no Job of its own either"


def active_build_jobs(batch: client.BatchV1Api, namespace: str) -> list[str]:
    """The build Jobs that exist and have not finished: each holds a build slot."""
    jobs = batch.list_namespaced_job(namespace, label_selector="envkiln.dev/build").items
    return [j.metadata.name for j in jobs
            if not any(c.status == "True" and c.type in ("Complete", "Failed") for c in j.status.conditions or [])]


def test_build_slots_hold_when_many_environments_are_applied_at_once(
        node_api: client.ApiClient, node_namespace: str, node_base_image: str, buildah_operator: Any) -> None:
    """Issue #22 saw 8 build Jobs started in one namespace under limits of 4 in all, 2 per namespace."""
    batch = client.BatchV1Api(node_api)
    envs = Envs(node_api, node_namespace)
    operator = buildah_operator(node_namespace, max_concurrent_builds="4", max_concurrent_builds_per_namespace="2")
    names = [f"many-{i}" for i in range(8)]
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(len(active_build_jobs(batch, node_namespace)))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # Created at once from threads, so the operator sees them together.
        creators = [threading.Thread(target=envs.create, args=(environment(
            name, image=node_base_image, dockerSteps=unique_steps("RUN true")),)) for name in names]
        for creator in creators:
            creator.start()
        for creator in creators:
            creator.join()
        for name in names:
            envs.wait_phase(name, "Ready", timeout=600, diagnostics=operator.log)
    finally:
        stop.set()
        watcher.join()
    jobs = envs.jobs()
    assert len(jobs) == 8 and all(j.status.succeeded == 1 for j in jobs)
    assert max(seen) <= 2, f"at most 2 build Jobs at once in the namespace, saw {max(seen)}"
    assert max(seen) == 2, "the namespace's two slots were used (else the check proves nothing)"
    assert len(seen) > 50, "polled all along"


def test_old_builds_are_collected_but_those_a_version_points_to_are_kept(
        node_api: client.ApiClient, node_namespace: str, node_base_image: str, buildah_operator: Any) -> None:
    envs = Envs(node_api, node_namespace)
    operator = buildah_operator(node_namespace, build_history_limit="1", build_retry_limit="0")
    marker = uuid.uuid4().hex[:12]
    definitions = [  # (steps, what becomes of the build)
        [f"ENV ENVKILN_TEST_DEFINITION={marker}", "RUN true"],  # v1: built
        [f"ENV ENVKILN_TEST_DEFINITION={marker}", "RUN false"],  # v2: fails
        [f"ENV ENVKILN_TEST_DEFINITION={marker}", "RUN exit 3"],  # v3: fails
        [f"ENV ENVKILN_TEST_DEFINITION={marker}", "RUN echo v4"],  # v4: built
    ]
    hashes = [hash_of({"image": node_base_image, "dockerSteps": steps}) for steps in definitions]
    envs.create(environment("edited", version="1", image=node_base_image, dockerSteps=definitions[0]))
    envs.wait_phase("edited", "Ready", timeout=300, diagnostics=operator.log)
    for version, steps in enumerate(definitions[1:], start=2):
        envs.custom.patch_namespaced_custom_object("envkiln.dev", "v1alpha1", node_namespace, "environments",
                                                   "edited", {"spec": {"version": str(version), "dockerSteps": steps}})
        envs.wait_phase("edited", "Ready" if version == 4 else "Failed", timeout=300, diagnostics=operator.log)

    status = envs.status("edited")
    assert [v["hash"] for v in status["versions"]] == hashes
    kept = {f"envb-{hashes[0]}", f"envb-{hashes[3]}"}  # v1's image (a version points to it) and the newest

    def remaining() -> set[str]:
        return {b["metadata"]["name"] for b in envs.builds()}

    wait_for(lambda: remaining() == kept, timeout=60, what=f"only {sorted(kept)} left",
             diagnostics=lambda: f"{sorted(remaining())}\n{operator.log()[-3000:]}")
    assert "collected 1 old EnvironmentBuild(s)" in operator.log()
    # Why v1's build stays: going back to its definition is a cache hit on its signed record, no build.
    jobs_before = len(envs.jobs())
    envs.custom.patch_namespaced_custom_object("envkiln.dev", "v1alpha1", node_namespace, "environments", "edited",
                                               {"spec": {"version": "5", "dockerSteps": definitions[0]}})
    back = envs.wait_phase("edited", "Ready", timeout=120, diagnostics=operator.log)
    assert back["hash"] == hashes[0] and back["cacheHit"] is True and back["build"] == f"envb-{hashes[0]}"
    assert len(envs.jobs()) == jobs_before, "no build for a definition whose record was kept"
    time.sleep(3)  # a collection pass ran after the move: the two kept builds are still both needed
    assert remaining() == kept
