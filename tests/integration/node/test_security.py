"""Hostile tenants on the real node (issue #14, items 1-4): every pod here really runs.

- a build's RUN steps try every place a push credential could be and find none (and the same
  check, fed the marker on purpose, does fire: the test can fail);
- an image planted under another namespace's hash tag is not used: the operator builds for real;
- a build context swapped after hashing is refused, by the operator (a snapshot or rendered
  context it did not make) or in the build pod itself (the `context` init container checks the digest);
- a ConfigMap context is built from the operator's immutable snapshot.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from kubernetes import client

from harness.buildah import base_image_archive, push_archive
from node_helpers import registry_digest
from operator_helpers import Envs, condition, environment, hash_of, image_for, wait_for

pytestmark = pytest.mark.timeout(600)


def unique_steps(*steps: str) -> list[str]:
    """A definition of its own, so no other test's build is a cache hit for it."""
    return [f"ENV ENVKILN_TEST_DEFINITION={uuid.uuid4().hex[:12]}", *steps]


def docker_config(registry: str, marker: str) -> dict[str, str]:
    """A dockerconfigjson whose text carries `marker` in plain sight (as a registry host name)."""
    auth = base64.b64encode(b"envkiln:not-checked-by-the-test-registry").decode()
    config = {"auths": {registry: {"auth": auth}, f"{marker.lower()}.invalid": {"auth": auth}}}
    return {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}


# Every place a credential has been, or could be, in a build container; then a check that fails
# the build if any of it held a marker. The marker is split in the step's text ("A""-B"), so the
# Dockerfile itself, readable from a RUN step, never contains it.
SNOOP = ('RUN for f in /creds/config.json /kaniko/.docker/config.json /proc/*/root/creds/config.json '
         '/proc/1/root/creds/config.json /run/secrets/*/* /var/run/secrets/kubernetes.io/serviceaccount/token '
         '/root/.docker/config.json /run/containers/0/auth.json; do cat "$f"; done > /tmp/leak 2>/dev/null; '
         'cat /proc/*/environ >> /tmp/leak 2>/dev/null; true')


def check_step(marker_prefix: str, marker_id: str) -> str:
    return (f'RUN if grep -qi -e "{marker_prefix}""-{marker_id}" /tmp/leak; then echo "LEAKED a credential"; '
            'exit 1; fi')


def test_a_hostile_build_cannot_read_any_push_credential(node_api: client.ApiClient, node_namespace: str,
                                                         operator_namespace: str, node_base_image: str,
                                                         node_registry_host: str, buildah_operator: Any) -> None:
    core = client.CoreV1Api(node_api)
    marker = uuid.uuid4().hex[:12]
    # The operator's own credential, and the namespace's push identity (ENVKILN_PUSH_SECRET_TEMPLATE).
    for name, prefix in (("envkiln-registry", "operator-credential"),
                         (f"envkiln-push-{node_namespace}", "push-identity")):
        core.create_namespaced_secret(operator_namespace, {
            "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
            "data": docker_config(node_registry_host, f"{prefix}-{marker}")})
    operator = buildah_operator(node_namespace, operator_namespace=operator_namespace,
                                registry_secret="envkiln-registry", build_retry_limit="0")
    envs = Envs(node_api, node_namespace)
    checks = [check_step("operator-credential", marker), check_step("push-identity", marker)]
    envs.create(environment("snoop", image=node_base_image, dockerSteps=unique_steps(SNOOP, *checks)))
    # The control: the same check, with the marker planted by the step itself, must fail the build.
    planted = 'RUN echo "push-identity""-' + marker + '" >> /tmp/leak'
    envs.create(environment("control", image=node_base_image, dockerSteps=unique_steps(SNOOP, planted, *checks)))

    status = envs.wait_phase("snoop", "Ready", timeout=400, diagnostics=operator.log)
    assert status["imageDigest"] == registry_digest(status["image"])
    control = envs.wait_phase("control", "Failed", timeout=400, diagnostics=operator.log)
    control_build = envs.build(control["build"])
    assert "LEAKED a credential" in control_build["status"]["logTail"], control_build["status"]["logTail"]

    # The namespace's identity reached the push container only, through a Secret owned by the Job
    # and deleted when the attempt ended.
    job = next(j for j in envs.jobs() if j.metadata.name == f"envkiln-{status['hash']}-1")
    pod_spec = job.spec.template.spec
    secrets = {v.name: v.secret.secret_name for v in pod_spec.volumes if v.secret}
    assert secrets == {"docker-config": f"{job.metadata.name}-push"}
    mounting = [c.name for c in pod_spec.init_containers + pod_spec.containers
                if any(m.name == "docker-config" for m in c.volume_mounts or [])]
    assert mounting == ["push"]
    wait_for(lambda: not [s for s in core.list_namespaced_secret(node_namespace).items
                          if s.metadata.name.endswith("-push")],
             timeout=60, what="the copied push credentials deleted", diagnostics=operator.log)


def test_an_image_planted_under_the_hash_tag_is_not_used(node_api: client.ApiClient, node_namespace: str,
                                                         node_base_image: str, node_registry_host: str,
                                                         buildah_operator: Any) -> None:
    """Hashes can be computed offline (`envkiln hash`): an attacker with push access plants an
    image where the victim's build would go. Without the operator's record it is rebuilt."""
    spec = {"image": node_base_image, "dockerSteps": unique_steps("RUN echo built > /built-by-envkiln")}
    victim_image = image_for(spec, node_registry_host, node_namespace)
    planted = push_archive(base_image_archive(), victim_image)
    operator = buildah_operator(node_namespace)
    envs = Envs(node_api, node_namespace)
    envs.create(environment("victim", **spec))
    status = envs.wait_phase("victim", "Ready", timeout=400, diagnostics=operator.log)
    assert status["cacheHit"] is False and status["imageDigest"] != planted
    assert registry_digest(victim_image) == status["imageDigest"], "the real build replaced the planted tag"
    [job] = envs.jobs()
    assert job.status.succeeded == 1


def test_a_planted_context_configmap_is_refused_before_any_pod(
        node_api: client.ApiClient, node_namespace: str, node_base_image: str, node_registry_host: str,
        buildah_operator: Any) -> None:
    """The rendered context ConfigMap is planted before the operator makes it (its name follows from
    the hash). It is not the build's (no ownerReference to it), so it is never adopted: the build
    fails `NameTaken` naming it, before any pod runs (issue #22). Were it adopted, the build pod's
    `context` container would still refuse its digest (unit/test_build_jobs.py runs that script)."""
    spec = {"image": node_base_image, "dockerSteps": unique_steps("RUN echo honest")}
    value = hash_of(spec)
    envs = Envs(node_api, node_namespace)
    envs.core.create_namespaced_config_map(node_namespace, {
        "metadata": {"name": f"envkiln-{value}-context"},
        "data": {"Dockerfile": f"FROM {node_base_image}\nRUN echo pwned > /pwned\n"}})
    operator = buildah_operator(node_namespace, build_retry_limit="0")
    envs.create(environment("tampered", **spec))
    status = envs.wait_phase("tampered", "Failed", timeout=300, diagnostics=operator.log)
    build = envs.build(status["build"])
    assert condition(build["status"], "Succeeded")["reason"] == "NameTaken"
    tail = build["status"]["logTail"]
    assert f"ConfigMap {node_namespace}/envkiln-{value}-context already exists and envkiln did not make it" in tail
    assert envs.jobs() == [], "refused before any pod ran"
    planted = envs.core.read_namespaced_config_map(f"envkiln-{value}-context", node_namespace)
    assert "pwned" in planted.data["Dockerfile"] and not planted.metadata.owner_references, "left as it was"
    with pytest.raises(Exception):  # noqa: B017 - nothing was pushed under the hash
        registry_digest(image_for(spec, node_registry_host, node_namespace))


def test_a_configmap_context_is_built_from_the_operators_snapshot(node_api: client.ApiClient, node_namespace: str,
                                                                  node_base_image: str,
                                                                  buildah_operator: Any) -> None:
    envs = Envs(node_api, node_namespace)
    marker = uuid.uuid4().hex[:12]
    envs.core.create_namespaced_config_map(node_namespace, {"metadata": {"name": "ctx"}, "data": {
        "Dockerfile": f"FROM {node_base_image}\nCOPY hello.txt /hello.txt\nRUN grep -q {marker} /hello.txt\n",
        "hello.txt": f"hello {marker}\n"}})
    operator = buildah_operator(node_namespace)
    envs.create(environment("byoctx", build={"configMap": {"name": "ctx"}}))
    status = envs.wait_phase("byoctx", "Ready", timeout=300, diagnostics=operator.log)
    snapshot = envs.core.read_namespaced_config_map(f"envkiln-{status['hash']}-snapshot", node_namespace)
    assert snapshot.immutable is True and snapshot.data["hello.txt"] == f"hello {marker}\n"
    assert snapshot.metadata.owner_references[0].kind == "EnvironmentBuild"
    [job] = envs.jobs()
    volumes = {v.name: v.config_map.name for v in job.spec.template.spec.volumes if v.config_map}
    assert volumes == {"context-source": snapshot.metadata.name}, "the build reads the snapshot, not the user's"


def test_a_planted_snapshot_is_refused_before_any_pod(node_api: client.ApiClient, node_namespace: str,
                                                      node_base_image: str, buildah_operator: Any) -> None:
    envs = Envs(node_api, node_namespace)
    envs.core.create_namespaced_config_map(node_namespace, {"metadata": {"name": "ctx2"}, "data": {
        "Dockerfile": f"FROM {node_base_image}\nRUN echo {uuid.uuid4().hex}\n"}})
    operator = buildah_operator(node_namespace, build_retry_limit="0")
    # The snapshot's name follows from the hash, which follows from the content: plant it first.
    from envkiln.core.definition import definition_hash
    from envkiln.core.models import EnvironmentSpec

    spec = {"build": {"configMap": {"name": "ctx2"}}}
    content = envs.core.read_namespaced_config_map("ctx2", node_namespace).data
    value = definition_hash(EnvironmentSpec.model_validate(spec), content)
    envs.core.create_namespaced_config_map(node_namespace, {
        "metadata": {"name": f"envkiln-{value}-snapshot"}, "immutable": True,
        "data": {"Dockerfile": f"FROM {node_base_image}\nRUN echo pwned\n"}})
    envs.create(environment("planted", **spec))
    status = envs.wait_phase("planted", "Failed", timeout=120, diagnostics=operator.log)
    build = envs.build(status["build"])
    assert condition(build["status"], "Succeeded")["reason"] == "ContextChanged"
    assert "envkiln did not make it" in build["status"]["logTail"]
    assert envs.jobs() == [], "refused before any pod ran"


def test_a_build_refused_by_quota_says_so_quickly_and_holds_no_slot(
        node_api: client.ApiClient, node_namespace: str, node_base_image: str, buildah_operator: Any) -> None:
    envs = Envs(node_api, node_namespace)
    envs.core.create_namespaced_resource_quota(node_namespace, {
        "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    operator = buildah_operator(node_namespace, build_retry_limit="0")
    envs.create(environment("quota", image=node_base_image, dockerSteps=unique_steps("RUN true")))
    status = envs.wait_phase("quota", "Failed", timeout=90, diagnostics=operator.log)
    build = envs.build(status["build"])
    assert condition(build["status"], "Succeeded")["reason"] == "CannotStart"
    assert "exceeded quota" in build["status"]["logTail"], build["status"]["logTail"]
    assert build["status"]["phase"] == "Failed", "a refused attempt holds no build slot"
    wait_for(lambda: envs.jobs() == [], timeout=30, what="the refused Job deleted", diagnostics=operator.log)
