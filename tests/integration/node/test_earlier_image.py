"""A build that starts from an earlier image of its namespace (issue 25: a one-package change), on the
real node: in-cluster buildah build Jobs, the registry, and a pod that runs the image."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from harness.pypi import PackageIndex, make_wheel
from node_helpers import MANIFEST_ACCEPT, PROBE, PROBE_SOURCE, PROBE_VERSION, index_steps, registry_digest, run_in
from operator_helpers import Envs, environment

EXTRA, EXTRA_VERSION = "envkiln-extra", "0.4.0"


@pytest.fixture()
def two_package_index(cluster: Any) -> Iterator[PackageIndex]:
    wheels = [make_wheel(PROBE, PROBE_VERSION, module="envkiln_probe", source=PROBE_SOURCE),
              make_wheel(EXTRA, EXTRA_VERSION, module="envkiln_extra", source=f'VERSION = "{EXTRA_VERSION}"\n')]
    with PackageIndex(wheels, host=str(cluster.address)) as index:
        yield index


def layers(image: str) -> list[str]:
    """The layer digests of repository:tag, from the registry."""
    name, tag = image.rsplit(":", 1)
    host, repository = name.split("/", 1)
    request = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{tag}",
                                     headers={"Accept": MANIFEST_ACCEPT})
    with urllib.request.urlopen(request, timeout=10) as response:
        return [layer["digest"] for layer in json.load(response)["layers"]]


def build_log(envs: Envs, namespace: str, build: dict[str, Any]) -> str:
    job = build["status"]["job"]
    [pod] = envs.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return str(envs.core.read_namespaced_pod_log(pod.metadata.name, namespace, container="build"))


def test_a_definition_that_adds_a_package_is_built_on_the_earlier_image(
        node_api: client.ApiClient, node_namespace: str, node_base_image: str, two_package_index: PackageIndex,
        buildah_operator: Any) -> None:
    operator = buildah_operator(node_namespace, build_on_earlier_images="true")
    envs = Envs(node_api, node_namespace)
    steps = [*index_steps(two_package_index), f"ENV ENVKILN_TEST_DEFINITION={uuid.uuid4().hex[:12]}"]
    first = [f"{PROBE}=={PROBE_VERSION}"]
    envs.create(environment("first", image=node_base_image, dockerSteps=steps, pip=first))
    a = envs.wait_phase("first", "Ready", timeout=400, diagnostics=operator.log)
    envs.create(environment("second", image=node_base_image, dockerSteps=steps,
                            pip=[*first, f"{EXTRA}=={EXTRA_VERSION}"]))
    b = envs.wait_phase("second", "Ready", timeout=400, diagnostics=operator.log)

    builds = {build["spec"]["hash"]: build for build in envs.builds()}
    first_build, second_build = builds[a["hash"]], builds[b["hash"]]
    parent = second_build["spec"]["plan"]["parent"]
    assert parent["build"] == first_build["metadata"]["name"]
    assert parent["image"] == a["image"].rsplit(":", 1)[0] + "@" + a["imageDigest"]
    assert "parent" not in first_build["spec"]["plan"]
    log = build_log(envs, node_namespace, second_build)
    assert f"starting from the earlier image {parent['image']}" in log, log[-2000:]
    assert "cannot be pulled" not in log, log[-2000:]

    # The image: the earlier image's layers, then one layer with what was added.
    assert b["imageDigest"] == registry_digest(b["image"])
    earlier, later = layers(a["image"]), layers(b["image"])
    assert later[:len(earlier)] == earlier and len(later) == len(earlier) + 1, (earlier, later)
    # The lock is the whole environment's; the image runs with both packages.
    locked = {line.split("==")[0].lower().replace("_", "-") for line in second_build["status"]["lock"]["text"]
              .splitlines() if "==" in line}
    assert {PROBE, EXTRA} <= locked, locked
    output = run_in(envs.core, node_namespace, b["image"].rsplit(":", 1)[0] + "@" + b["imageDigest"],
                    "python -c 'import envkiln_probe, envkiln_extra; print(envkiln_probe.VERSION, "
                    "envkiln_extra.VERSION)'; cat /opt/envkiln/envkiln-lock.txt")
    assert f"{PROBE_VERSION} {EXTRA_VERSION}" in output
    assert f"{EXTRA.replace('-', '_')}=={EXTRA_VERSION}".lower() in output.lower().replace("-", "_")
