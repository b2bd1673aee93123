"""Tenant isolation on the real node: a hostile tenant can neither make the operator act elsewhere
(a forged admission review changes nothing) nor freeze it (hostile git and registry servers that
drip, hang or flood while a victim's pods are admitted and its Environment is built for real)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from harness.pypi import PackageIndex
from node_helpers import PROBE, PROBE_VERSION, index_steps
from operator_helpers import Envs, environment, hash_of, wait_for

GATE = "envkiln.dev/environment"


class HostileServer:
    """A TCP server on 127.0.0.1 that reads a request and then answers in one hostile way:
    `drip` (one byte a second, forever), `hang` (nothing, connection open), `flood` (endless bytes).
    The bytes are git pkt-lines, so a git client keeps reading until its deadline or byte cap."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError), connection:
            connection.settimeout(1)
            with contextlib.suppress(OSError):
                connection.recv(65536)
            if self.mode == "drip":  # a git pkt-line header announcing 65520 bytes, then one byte a second
                connection.sendall(b"fff0")
                while not self.stop.wait(1):
                    connection.sendall(b"x")
            elif self.mode == "flood":  # git pkt-lines (or an HTTP body) without end
                chunk = b"fff0" + b"x" * (0xFFF0 - 4)
                while not self.stop.is_set():
                    connection.sendall(chunk)
            else:
                self.stop.wait(120)


def _namespace(api: client.ApiClient) -> str:
    name = f"n-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture()
def hostile_namespace(node_api: client.ApiClient) -> Iterator[str]:
    name = _namespace(node_api)
    yield name
    with contextlib.suppress(client.ApiException):
        client.CoreV1Api(node_api).delete_namespace(name)


def _victim_pod(name: str, env: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"envkiln.dev/environment": env}},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "containers": [{"name": "trainer", "image": "placeholder", "command": ["true"]}]}}


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_hostile_servers_freeze_neither_admission_nor_another_tenant(
        node_api: client.ApiClient, node_namespace: str, hostile_namespace: str, node_base_image: str,
        probe_index: PackageIndex, buildah_operator: Any, webhook: dict[str, str]) -> None:
    """20 git Environments on drip/hang/flood servers and 10 on a hanging registry, in the hostile
    namespace; meanwhile the victim namespace's pods are admitted (p99 well under the API server's
    10 s webhook timeout) and its Environment is built on the node to Ready."""
    with HostileServer("drip") as drip, HostileServer("hang") as hang, HostileServer("flood") as flood:
        operator = buildah_operator(node_namespace, also_watch=(hostile_namespace,),
                                    allowed_private_hosts="127.0.0.1", git_timeout_seconds="10", **webhook)
        hostile = Envs(node_api, hostile_namespace)
        servers = [drip, hang, flood]
        for i in range(20):
            port = servers[i % 3].port
            hostile.create(environment(f"git-{i}", build={"git": {"url": f"git://127.0.0.1:{port}/r{i}.git",
                                                                  "ref": "main"}}))
        for i in range(10):
            hostile.create(environment(f"reg-{i}", image=f"127.0.0.1:{hang.port}/hostile/base{i}:latest",
                                       pip=["anything==1.0"]))
        wait_for(lambda: drip.connections + hang.connections + flood.connections >= 6,
                 what="the hostile servers to be called", diagnostics=operator.log)

        victim = Envs(node_api, node_namespace)
        spec = {"image": node_base_image, "pip": [f"{PROBE}=={PROBE_VERSION}"],
                "dockerSteps": [*index_steps(probe_index), f"ENV ENVKILN_TEST_DEFINITION={uuid.uuid4().hex[:12]}"]}
        started = time.monotonic()
        victim.create(environment("victim", **spec))
        core = client.CoreV1Api(node_api)
        latencies = []
        for i in range(30):
            before = time.monotonic()
            created = core.create_namespaced_pod(node_namespace, _victim_pod(f"victim-{i}", "victim"))
            latencies.append(time.monotonic() - before)
            assert created.metadata.labels["envkiln.dev/environment"] == "victim"
        building = victim.wait_phase("victim", "Building", timeout=30, diagnostics=operator.log)
        to_building = time.monotonic() - started
        status = victim.wait_phase("victim", "Ready", timeout=300, diagnostics=operator.log)
        to_ready = time.monotonic() - started
        assert status["hash"] == building["hash"] == hash_of(spec)

        # The hostile Environments are told what is wrong, in their own status, without the servers' bytes.
        def reported() -> list[str]:
            return [str(hostile.status(f"git-{i}").get("message") or "") for i in range(3)]

        messages = wait_for(lambda: all(reported()) and reported(), timeout=60, what="the hostile git errors",
                            diagnostics=operator.log)
        assert not any("HTTP/1.1" in m or "xxxx" in m for m in messages), messages
    summary = {"admission_p50_s": round(statistics.median(latencies), 3),
               "admission_p99_s": round(_p(latencies, .99), 3), "admission_max_s": round(max(latencies), 3),
               "victim_building_s": round(to_building, 1),
               "victim_ready_s": round(to_ready, 1)}
    print("tenant isolation under attack:", json.dumps(summary))
    assert summary["admission_p99_s"] < 3.0, summary
    assert to_building < 30, summary


def test_a_forged_review_posted_to_the_webhook_changes_nothing(
        node_api: client.ApiClient, node_namespace: str, hostile_namespace: str, buildah_operator: Any,
        webhook: dict[str, str]) -> None:
    """Anyone who reaches the webhook (no client CA, as with the chart's defaults) can post an
    AdmissionReview naming any namespace, the operator's own included, with dryRun false. The
    webhook only answers: no anonymous Environment appears anywhere, and no pod."""
    operator = buildah_operator(node_namespace, also_watch=(hostile_namespace,), **webhook)
    core = client.CoreV1Api(node_api)
    secrets = webhook["operator_namespace"]
    wait_for(lambda: core.read_namespaced_secret("envkiln-webhook-tls", secrets), timeout=60,
             what="the webhook certificate", diagnostics=operator.log)
    bundle = base64.b64decode(core.read_namespaced_secret("envkiln-webhook-tls", secrets).data["ca.crt"])

    def listening() -> bool:  # the certificate is written before the server starts
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", int(webhook["webhook_port"])), timeout=2):
            return True
        return False

    wait_for(listening, timeout=60, what="the webhook listening", diagnostics=operator.log)
    spec = {"image": "python:3.11-slim", "pip": ["forged-run==6.6.6"]}
    name = f"anonymous-{hash_of(spec)}"
    answers = []
    for target in (hostile_namespace, node_namespace, secrets, "kube-system"):
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": f"forged-{target}", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
            "namespace": target, "userInfo": {"username": "mallory"}, "dryRun": False,
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": "forged", "namespace": target, "labels": {"envkiln.dev/environment": "inline"},
                "annotations": {"envkiln.dev/environment-spec": yaml.safe_dump(spec)}},
                "spec": {"containers": [{"name": "c", "image": "placeholder"}]}}}}
        context = ssl.create_default_context(cadata=bundle.decode())
        connection = http.client.HTTPSConnection("127.0.0.1", int(webhook["webhook_port"]), context=context,
                                                 timeout=10)
        try:
            connection.request("POST", "/envkiln-environment", body=json.dumps(review),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())["response"]))
        finally:
            connection.close()
    # Answered (a gate: the Environment does not exist), and nothing else.
    assert [status for status, _ in answers] == [200, 200, 200, 200], answers
    assert all(answer["allowed"] for _, answer in answers), answers
    time.sleep(5)  # the operator's pod watch would have acted by now, had any pod been admitted
    everywhere = client.CustomObjectsApi(node_api).list_cluster_custom_object(
        "envkiln.dev", "v1alpha1", "environments")["items"]
    assert [e["metadata"]["namespace"] for e in everywhere if e["metadata"]["name"] == name] == []
    for namespace in (hostile_namespace, node_namespace, secrets):
        assert core.list_namespaced_pod(namespace, label_selector="envkiln.dev/environment").items == []
