"""Placement and environment of build pods on the real node (issue #23): a tainted node takes
only builds that tolerate the taint (ENVKILN_BUILD_NAMESPACES gives one namespace the toleration,
the default gives none), and a package index given through the build env (ENVKILN_BUILD_ENV,
not docker steps) reaches pip in the build, without its password reaching the image, the
EnvironmentBuild or the operator's log.

The node is shared by every node test: the taint is removed in a finally block whatever happens."""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from kubernetes import client

from harness.pypi import PackageIndex
from node_helpers import MANIFEST_ACCEPT, PROBE, PROBE_VERSION
from operator_helpers import Envs, environment, wait_for

TAINT = {"key": "envkiln.dev/builds", "value": "only", "effect": "NoSchedule"}
TOLERATION = {"key": "envkiln.dev/builds", "operator": "Equal", "value": "only", "effect": "NoSchedule"}


def own_spec(base: str, *steps: str) -> dict[str, Any]:
    """A definition of its own (no other test's image is a cache hit for it), with no index step:
    pip finds the probe only through the build env."""
    return {"image": base, "dockerSteps": [f"ENV ENVKILN_TEST_DEFINITION={uuid.uuid4().hex[:12]}", *steps],
            "pip": [f"{PROBE}=={PROBE_VERSION}"]}


def index_env(index: PackageIndex, url: str | None = None) -> str:
    return json.dumps({"PIP_INDEX_URL": url or index.url, "PIP_TRUSTED_HOST": index.host,
                       "PIP_DEFAULT_TIMEOUT": "5", "PIP_RETRIES": "0"})


@contextlib.contextmanager
def tainted_node(core: client.CoreV1Api) -> Iterator[str]:
    [node] = core.list_node().items
    name = node.metadata.name

    def without_ours() -> list[dict[str, Any]]:
        current = core.read_node(name).spec.taints or []
        return [core.api_client.sanitize_for_serialization(t) for t in current if t.key != TAINT["key"]]

    core.patch_node(name, {"spec": {"taints": [*without_ours(), TAINT]}})
    try:
        yield name
    finally:
        core.patch_node(name, {"spec": {"taints": without_ours()}})
        assert not [t for t in core.read_node(name).spec.taints or [] if t.key == TAINT["key"]]


def test_a_tainted_node_takes_only_builds_that_tolerate_it(
        node_api: client.ApiClient, node_namespace: str, second_namespace: str, node_base_image: str,
        probe_index: PackageIndex, buildah_operator: Any) -> None:
    operator = buildah_operator(node_namespace, also_watch=(second_namespace,), build_env=index_env(probe_index),
                                build_namespaces=json.dumps({second_namespace: {"tolerations": [TOLERATION]}}))
    plain, tolerating = Envs(node_api, node_namespace), Envs(node_api, second_namespace)
    with tainted_node(plain.core):
        plain.create(environment("untolerated", **own_spec(node_base_image)))
        tolerating.create(environment("tolerated", **own_spec(node_base_image)))

        def unschedulable() -> client.V1Pod | None:
            for pod in plain.core.list_namespaced_pod(node_namespace, label_selector="envkiln.dev/build").items:
                for c in pod.status.conditions or []:
                    if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                        return pod
            return None

        pending = wait_for(unschedulable, timeout=120, what="the untolerated build pod reported Unschedulable",
                           diagnostics=operator.log)
        reason = next(c for c in pending.status.conditions if c.type == "PodScheduled")
        assert "untolerated taint" in (reason.message or ""), reason.message  # the scheduler's reason
        assert not pending.spec.tolerations or TOLERATION["key"] not in {t.key for t in pending.spec.tolerations}

        status = tolerating.wait_phase("tolerated", "Ready", timeout=300, diagnostics=operator.log)
        [job] = tolerating.jobs()
        [pod] = tolerating.core.list_namespaced_pod(second_namespace,
                                                    label_selector=f"job-name={job.metadata.name}").items
        assert pod.spec.node_name and pod.status.phase == "Succeeded"
        assert TOLERATION["key"] in {t.key for t in pod.spec.tolerations}
        assert status["imageRef"].endswith("@" + status["imageDigest"])

        # Meanwhile the other build is still waiting for a node: Pending, never run.
        again = plain.core.read_namespaced_pod(pending.metadata.name, node_namespace)
        assert again.status.phase == "Pending" and not again.spec.node_name
        assert plain.status("untolerated").get("phase") == "Building"


def registry_json(url: str, accept: str | None = None) -> Any:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_package_index_from_the_build_env_reaches_pip_but_not_the_image(
        node_api: client.ApiClient, node_namespace: str, node_base_image: str, probe_index: PackageIndex,
        buildah_operator: Any) -> None:
    # A password the local index ignores (it answers everyone) but pip sends: it must show nowhere.
    password = f"pw-{uuid.uuid4().hex[:12]}"
    url = probe_index.url.replace("http://", f"http://envkiln:{password}@", 1)
    operator = buildah_operator(node_namespace, build_env=index_env(probe_index, url))
    envs = Envs(node_api, node_namespace)
    before = len(probe_index.requests)
    envs.create(environment("indexed", **own_spec(node_base_image)))
    status = envs.wait_phase("indexed", "Ready", timeout=300, diagnostics=operator.log)
    # This build's own requests (the index is shared by the session's tests): the probe's page and wheel.
    new = probe_index.requests[before:]
    assert f"/simple/{PROBE}/" in new or f"/simple/{PROBE}" in new, new
    assert any(path.startswith("/files/") and PROBE.replace("-", "_") in path for path in new), new

    # The image: neither its config (Env) nor its history holds the index or the password.
    repository = status["image"].split("/", 1)[1].rsplit(":", 1)[0]
    host = status["image"].split("/", 1)[0]
    manifest = registry_json(f"http://{host}/v2/{repository}/manifests/{status['imageDigest']}", MANIFEST_ACCEPT)
    config = json.dumps(registry_json(f"http://{host}/v2/{repository}/blobs/{manifest['config']['digest']}"))
    index_address = probe_index.base_url.split("//", 1)[1]
    # (The one-stage image's history holds envkiln's install step, which reads $PIP_INDEX_URL by name for
    # uv: the name may show there, never a value.)
    assert "PIP_INDEX_URL=" not in config and password not in config and index_address not in config

    # Nor the EnvironmentBuild, the Environment or the operator's log.
    [build] = envs.builds()
    assert password not in json.dumps(build) and password not in json.dumps(envs.get("indexed"))
    assert password not in operator.log()
