"""Kube retries what a real API server throttles: API Priority and Fairness answers 429 + Retry-After.

A ServiceAccount gets its own priority level with a few seats, no borrowing and no queue
(`Reject`), so a request beyond those seats is refused by the API server itself. The seats are
held on purpose: a LIST of large ConfigMaps whose answer is not read keeps its seat while the
server waits to write. With every seat held, a plain client call fails with 429 (after urllib3's
own three Retry-After retries); the same call through Kube waits, retries, and succeeds once the
seats free up, and Kube counted its retries.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client, config

from envkiln.adapters.kube import Kube
from envkiln.core.decisions.retry import RetryPolicy
from harness.controlplane import ControlPlane

CONFIGMAPS = 24
PAYLOAD = "x" * 900_000  # ~21 MB per LIST: far more than the socket buffers, so the server blocks writing
MAX_HOLDERS = 40
HOLD_SECONDS = 6.0  # longer than urllib3's own retries (3 x Retry-After: 1s), so Kube's loop must act


@dataclass
class Throttled:
    namespace: str
    user: client.ApiClient  # the throttled ServiceAccount
    holders: list[Any] = field(default_factory=list)

    def hold_every_seat(self) -> None:
        """Open unread LISTs until a small request of the same account is refused."""
        core = client.CoreV1Api(self.user)
        while len(self.holders) < MAX_HOLDERS:
            holder = core.list_namespaced_config_map(self.namespace, _preload_content=False)
            assert holder.status == 200
            self.holders.append(holder)
            try:
                core.list_namespaced_pod(self.namespace, limit=1)
            except client.ApiException as error:
                assert error.status == 429
                return
        raise AssertionError(f"{MAX_HOLDERS} held requests did not exhaust the priority level")

    def release(self) -> None:
        for holder in self.holders:
            holder.close()
        self.holders.clear()


def _service_account_client(plane: ControlPlane, admin: client.ApiClient, namespace: str, name: str
                            ) -> client.ApiClient:
    token = client.CoreV1Api(admin).create_namespaced_service_account_token(
        name, namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=3600))).status.token
    configuration = client.Configuration()
    configuration.host = plane.url
    configuration.ssl_ca_cert = admin.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    configuration.connection_pool_maxsize = MAX_HOLDERS + 4
    return client.ApiClient(configuration)


def _throttle(admin: client.ApiClient, namespace: str, account: str) -> str:
    """A priority level of one nominal share (a few seats), no borrowing, no queue, for `account`.
    Returns the FlowSchema's UID."""
    flowcontrol = client.FlowcontrolApiserverV1Api(admin)
    name = f"envkiln-throttled-{namespace}"
    flowcontrol.create_priority_level_configuration({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 1, "lendablePercent": 0, "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"}}},
    })
    schema = flowcontrol.create_flow_schema({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": name},
            "matchingPrecedence": 200,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": account, "namespace": namespace}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"],
                                   "clusterScope": True}],
            }],
        },
    })
    return str(schema.metadata.uid)


def _wait_in_effect(user: client.ApiClient, namespace: str, schema_uid: str, timeout: float = 60) -> None:
    """Until the API server classifies the account's requests under the new FlowSchema (APF names the
    FlowSchema's UID in a response header)."""
    core = client.CoreV1Api(user)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, headers = core.list_namespaced_pod_with_http_info(namespace, limit=1)
        if (headers or {}).get("X-Kubernetes-PF-FlowSchema-UID") == schema_uid:
            return
        time.sleep(0.2)
    raise AssertionError("the FlowSchema never took effect")


@pytest.fixture(scope="module")
def throttled() -> Iterator[Throttled]:
    with ControlPlane() as plane:
        admin = config.new_client_from_config(str(plane.kubeconfig))
        namespace, account = f"retry-{uuid.uuid4().hex[:8]}", "throttled"
        core = client.CoreV1Api(admin)
        core.create_namespace({"metadata": {"name": namespace}})
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
        rbac = client.RbacAuthorizationV1Api(admin)
        rbac.create_namespaced_role(namespace, {"metadata": {"name": "reader"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps", "pods"], "verbs": ["get", "list"]}]})
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})
        for index in range(CONFIGMAPS):
            core.create_namespaced_config_map(namespace, {"metadata": {"name": f"big-{index}"},
                                                          "data": {"payload": PAYLOAD}})
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "small"}, "data": {"a": "1"}})
        schema_uid = _throttle(admin, namespace, account)
        user = _service_account_client(plane, admin, namespace, account)
        _wait_in_effect(user, namespace, schema_uid)
        state = Throttled(namespace, user)
        try:
            yield state
        finally:
            state.release()
            user.close()
            admin.close()


def test_a_plain_call_is_refused_with_retry_after(throttled: Throttled) -> None:
    throttled.hold_every_seat()
    try:
        with pytest.raises(client.ApiException) as refused:
            client.CoreV1Api(throttled.user).read_namespaced_config_map("small", throttled.namespace)
    finally:
        throttled.release()
    assert refused.value.status == 429
    assert (refused.value.headers or {}).get("Retry-After")


def test_kube_waits_out_the_throttling_and_counts_its_retries(throttled: Throttled) -> None:
    kube = Kube(throttled.user, policy=RetryPolicy(attempts=20, base_seconds=0.1, cap_seconds=2.0,
                                                   max_retry_after_seconds=5.0, deadline_seconds=60.0))
    throttled.hold_every_seat()
    releaser = threading.Timer(HOLD_SECONDS, throttled.release)
    releaser.start()
    started = time.monotonic()
    try:
        configmap = kube.read_configmap(throttled.namespace, "small")
        pods = kube.list_pods(throttled.namespace, "")
    finally:
        releaser.cancel()
        throttled.release()
    assert configmap is not None and configmap.data == {"a": "1"} and pods == []
    assert kube.retries["429"] >= 1, kube.retries
    assert set(kube.retries) == {"429"}, kube.retries
    assert time.monotonic() - started >= HOLD_SECONDS - 1, "succeeded before the seats were free"
