"""The harness is real: a real API server enforces schemas and subresources, a real registry stores images."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client, watch

from harness.buildah import build_and_push
from harness.registry import MANIFEST_ACCEPT, Registry

GROUP, VERSION = "envkiln.dev", "v1alpha1"


def environment(name: str, **spec: object) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Environment", "metadata": {"name": name}, "spec": spec}


def test_apiserver_reports_its_pinned_version(api_client: client.ApiClient) -> None:
    assert client.VersionApi(api_client).get_code().git_version == "v1.34.4"


def test_custom_resource_and_status_subresource(api_client: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api_client)
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "environments",
        environment("py", image="python:3.11-slim", pip=["numpy==2.1.3"]),
    )
    assert created["spec"]["version"] == "1", "the CRD's default for spec.version is applied by the server"
    assert created["metadata"]["generation"] == 1

    # A status written through the main resource is ignored; through /status it sticks.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "environments", "py",
                                          {"status": {"phase": "Ready"}})
    unwritten = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "environments", "py")
    assert unwritten["status"] == {"observedGeneration": 0}, "only the CRD's default status (kstatus: InProgress)"
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "environments", "py",
                                                 {"status": {"phase": "Building", "hash": "ab" * 16}})
    read = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "environments", "py")
    # A merge patch over the CRD's default status keeps its observedGeneration (the operator sets it).
    assert read["status"] == {"phase": "Building", "hash": "ab" * 16, "observedGeneration": 0}
    assert read["metadata"]["generation"] == 1, "status writes do not bump the generation"


def test_schema_rejects_invalid_objects(api_client: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api_client)
    with pytest.raises(client.ApiException) as error:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "environments", environment("bad", image="python", pip="numpy"))
    assert error.value.status == 422
    assert "spec.pip" in error.value.body

    with pytest.raises(client.ApiException) as error:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "environments", environment("bad2", version="not a version!", image="x"))
    assert error.value.status == 422 and "spec.version" in error.value.body


def test_image_affecting_fields_are_immutable_per_version(api_client: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "environments",
        environment("imm", image="python:3.11-slim", pip=["numpy==2.1.3"], description="first"))
    # Runtime metadata may change freely.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "environments", "imm",
                                          {"spec": {"description": "second", "environmentVariables": {"A": "1"}}})
    with pytest.raises(client.ApiException) as error:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "environments", "imm",
                                              {"spec": {"pip": ["numpy==2.2.0"]}})
    assert error.value.status == 422
    assert "bump spec.version" in error.value.body
    # Same change with a new version is accepted.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "environments", "imm",
                                          {"spec": {"pip": ["numpy==2.2.0"], "version": "2"}})
    read = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "environments", "imm")
    assert read["spec"]["pip"] == ["numpy==2.2.0"] and read["spec"]["version"] == "2"


def test_conda_spec_changes_are_caught_by_the_immutability_rule(api_client: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api_client)
    conda = {"channels": ["conda-forge"], "dependencies": ["python=3.11", "pip", {"pip": ["six==1.16.0"]}]}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "environments",
                                           environment("conda", image="debian:bookworm-slim", conda=conda))
    changed = {"channels": ["conda-forge"], "dependencies": ["python=3.11", "pip", {"pip": ["six==1.17.0"]}]}
    with pytest.raises(client.ApiException) as error:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "environments", "conda",
                                              {"spec": {"conda": changed}})
    assert error.value.status == 422


def test_watch_sees_changes(api_client: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api_client)
    seen: list[tuple[str, str]] = []

    def follow() -> None:
        stream = watch.Watch()
        for event in stream.stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                                   "environments", timeout_seconds=10):
            seen.append((event["type"], event["object"]["metadata"]["name"]))
            if len(seen) >= 2:
                stream.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.5)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "environments",
                                           environment("w", image="python:3.11-slim", pip=["six"]))
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "environments", "w")
    thread.join(timeout=15)
    assert seen == [("ADDED", "w"), ("DELETED", "w")]


def test_batch_job_is_validated_and_stored(api_client: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api_client)
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}},
    }
    created = batch.create_namespaced_job(namespace, job)
    assert created.spec.template.spec.restart_policy == "Never"
    bad = dict(job, metadata={"name": "bad"})
    bad["spec"] = dict(job["spec"], template={"spec": {"restartPolicy": "Always", "containers": job["spec"][
        "template"]["spec"]["containers"]}})
    with pytest.raises(client.ApiException) as error:
        batch.create_namespaced_job(namespace, bad)
    assert error.value.status == 422 and "restartPolicy" in error.value.body


def test_buildah_build_push_and_read_manifest_back(registry: Registry, base_image: str, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo harness > /harness.txt\n")
    destination = f"{registry.host}/envkiln-test/harness:probe"
    result = build_and_push(tmp_path, destination)
    assert result.digest.startswith("sha256:")

    request = urllib.request.Request(f"{registry.url}/v2/envkiln-test/harness/manifests/probe",
                                     headers={"Accept": MANIFEST_ACCEPT})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        assert response.headers["Docker-Content-Digest"] == result.digest
    manifest = json.loads(body)
    assert manifest["schemaVersion"] == 2
    assert len(manifest["layers"]) >= 2, "base layer plus the RUN layer"
    assert "probe" in registry.tags("envkiln-test/harness")


def test_the_package_index_link_is_shared_by_every_download(tmp_path: Path) -> None:
    """bench.builds --link-mbps: the index's wheels leave at most that fast, all downloads together."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from harness.pypi import PackageIndex

    (tmp_path / "big-1.0-py3-none-any.whl").write_bytes(os.urandom(1 << 20))

    def fetch(index: PackageIndex) -> int:
        with urllib.request.urlopen(f"{index.base_url}/files/big-1.0-py3-none-any.whl", timeout=30) as answer:
            return len(answer.read())

    with PackageIndex(directory=tmp_path, link_bytes_per_second=2 << 20) as index:  # 2 MiB/s
        start = time.monotonic()
        assert fetch(index) == 1 << 20
        alone = time.monotonic() - start
        start = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(fetch, [index, index])) == [1 << 20, 1 << 20]
        together = time.monotonic() - start
    assert alone >= 0.45 and together >= 0.95, (alone, together)  # 1 MiB, then 2 MiB, over one 2 MiB/s link
