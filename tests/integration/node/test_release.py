"""`make release` for real (#24 item 4): scripts/release.py builds the operator image with buildah from
the lock, pushes it to the harness registry, pins its digest into the packaged chart, pushes the chart
as an OCI artifact and builds the wheel; then `helm install oci://...` on the node runs the operator
from exactly that digest until it is Ready."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

import envkiln
from harness.controlplane import REPO_ROOT, cache_dir
from node_helpers import delete_crds_except, operator_logs, ready_operator_pod, registry_digest
from operator_helpers import wait_for

pytestmark = [pytest.mark.timeout(900), pytest.mark.kube_proxy]  # the operator's pods reach the API server's Service

MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def _registry_json(url: str, accept: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def image_labels(host: str, repository: str, reference: str) -> dict[str, str]:
    """The labels in the config of repository:reference, read from the registry itself."""
    manifest = _registry_json(f"http://{host}/v2/{repository}/manifests/{reference}", MANIFEST_ACCEPT)
    config = _registry_json(f"http://{host}/v2/{repository}/blobs/{manifest['config']['digest']}")
    return dict(config.get("config", {}).get("Labels") or {})


@pytest.fixture(scope="module")
def released(node_registry_host: str, node_base_image: str, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[dict[str, Any], str]:
    """scripts/release.py against the harness registry (plain HTTP), a path of its own."""
    out = tmp_path_factory.mktemp("release")
    registry = f"{node_registry_host}/release-{uuid.uuid4().hex[:6]}"
    version = envkiln.__version__
    command = [sys.executable, str(REPO_ROOT / "scripts" / "release.py"), "--version", version,
               "--registry", registry, "--plain-http", "--allow-dirty", "--base-image", node_base_image,
               "--helm", str(cache_dir() / "bin" / "helm"), "--buildah-root", str(cache_dir() / "buildah"),
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((out / f"release-{version}.json").read_text())
    return record, result.stdout


def test_release_pushes_a_labelled_image_a_pinned_chart_and_a_wheel(
        released: tuple[dict[str, Any], str], node_registry_host: str) -> None:
    record, stdout = released
    version = envkiln.__version__
    repository = record["image"].rsplit(":", 1)[0]
    digest = record["image_digest"]
    # the image: the tag is the digest the release pinned, labelled with version, source and revision
    assert registry_digest(record["image"]) == digest
    assert record["image_ref"] == f"{repository}@{digest}"
    labels = image_labels(node_registry_host, repository.split("/", 1)[1], digest)
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"] in (head, f"{head}-dirty")
    assert labels["org.opencontainers.image.source"].startswith("https://")
    # the chart: in the registry as an OCI artifact, its values pinning that digest
    helm = str(cache_dir() / "bin" / "helm")
    shown = subprocess.run([helm, "show", "values", record["chart"], "--version", version, "--plain-http"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    image = yaml.safe_load(shown.stdout)["image"]
    assert image["repository"] == repository
    assert image.get("digest") == digest or image["tag"] == f"{version}@{digest}", image
    chart = subprocess.run([helm, "show", "chart", record["chart"], "--version", version, "--plain-http"],
                           capture_output=True, text=True, timeout=120)
    assert yaml.safe_load(chart.stdout)["appVersion"] == version
    # the wheel: the same version
    wheel = Path(record["wheel"])
    assert wheel.name == f"envkiln-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"envkiln-{version}.dist-info/METADATA").decode()
    assert f"\nVersion: {version}\n" in metadata
    assert f"{record['image_ref']}" in stdout and record["chart"] in stdout and str(wheel) in stdout


@pytest.fixture(scope="module")
def installed(released: tuple[dict[str, Any], str], cluster: Any, node_api: client.ApiClient,
              node_registry_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`helm install` of the released chart by its OCI reference; the release namespace."""
    record, _ = released
    core = client.CoreV1Api(node_api)
    extensions = client.ApiextensionsV1Api(node_api)
    crds_before = {crd.metadata.name for crd in extensions.list_custom_resource_definition().items}
    suffix = uuid.uuid4().hex[:6]
    namespace, tenant = f"envkiln-rel-{suffix}", f"tenant-rel-{suffix}"
    core.create_namespace({"metadata": {"name": tenant}})
    values: dict[str, Any] = {
        "replicas": 1,
        "curated": {"enabled": False},
        "operator": {"registry": node_registry_host, "insecureRegistry": True, "watchNamespaces": [tenant],
                     "buildah": {"installSeccompProfile": False}},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    }
    chart_values = yaml.safe_load((REPO_ROOT / "charts" / "envkiln" / "values.yaml").read_text())
    if "crds" in chart_values:
        values["crds"] = {"install": False}  # the session's CRDs are there already (api_client installs them)
    values_file = tmp_path_factory.mktemp("release-values") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm = [str(cache_dir() / "bin" / "helm"), "--kubeconfig", str(cluster.kubeconfig)]
    install = subprocess.run(
        [*helm, "install", "envkiln", record["chart"], "--version", record["chart_version"], "--plain-http",
         "-n", namespace, "--create-namespace", "-f", str(values_file), "--wait", "--timeout", "4m"],
        capture_output=True, text=True, timeout=300)
    try:
        assert install.returncode == 0, install.stdout + install.stderr + "\n" + operator_logs(core, namespace)
        yield namespace
    finally:
        subprocess.run([*helm, "uninstall", "envkiln", "-n", namespace, "--wait", "--timeout", "2m"],
                       capture_output=True, timeout=200)
        for name in (tenant, namespace):
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(name)
        delete_crds_except(extensions, crds_before)


def test_the_chart_installed_by_its_oci_reference_runs_the_pinned_digest(
        released: tuple[dict[str, Any], str], installed: str, node_api: client.ApiClient) -> None:
    record, _ = released
    core = client.CoreV1Api(node_api)
    pod = wait_for(lambda: ready_operator_pod(core, installed), timeout=120, what="a Ready operator pod",
                   diagnostics=lambda: operator_logs(core, installed))
    operator = next(c for c in pod.spec.containers if c.name == "operator")
    assert operator.image.endswith(f"@{record['image_digest']}"), operator.image
    assert operator.image.startswith(record["image"].rsplit(":", 1)[0]), operator.image
    status = next(s for s in pod.status.container_statuses if s.name == operator.name)
    assert status.ready and status.image_id.endswith(record["image_digest"]), status
