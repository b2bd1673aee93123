"""Idempotent Kubernetes writes: create-or-get, status patches with retries, Events."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from kubernetes import client

from envkiln import GROUP, VERSION
from envkiln.conditions import now_iso

log = logging.getLogger(__name__)

ENVIRONMENTS = "environments"
BUILDS = "environmentbuilds"


class Kube:
    """The few API calls envkiln makes, on one ApiClient."""

    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)

    # --- custom resources -------------------------------------------------------------

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, plural: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        result = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural,
                                                           label_selector=label_selector)
        return list(result.get("items", []))

    def create_or_get(self, plural: str, namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(object, created). A 409 means someone else created it first: follow theirs."""
        try:
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body), True
        except client.ApiException as error:
            if error.status != 409:
                raise
        existing = self.get(plural, namespace, body["metadata"]["name"])
        if existing is None:  # deleted between the 409 and the read: try once more
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body), True
        return existing, False

    def patch_status(
        self, plural: str, namespace: str, name: str,
        compute: Callable[[dict[str, Any]], dict[str, Any] | None], attempts: int = 8,
    ) -> dict[str, Any] | None:
        """Read, compute a status patch from the fresh object, write it guarded by resourceVersion.

        `compute` returns None when nothing needs writing. On 409 (someone wrote in between)
        the object is read again and the patch recomputed, so no write is lost or stale.
        """
        for attempt in range(attempts):
            current = self.get(plural, namespace, name)
            if current is None:
                return None
            patch = compute(current)
            if patch is None:
                return current
            body = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "status": patch}
            try:
                return self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, body)
            except client.ApiException as error:
                if error.status == 404:
                    return None
                if error.status != 409:
                    raise
                time.sleep(min(0.05 * (2**attempt), 1.0))
        raise RuntimeError(f"status of {plural}/{namespace}/{name}: too many conflicting writes")

    # --- core objects ------------------------------------------------------------------

    def create_or_get_configmap(self, namespace: str, body: dict[str, Any]) -> client.V1ConfigMap:
        try:
            return self.core.create_namespaced_config_map(namespace, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            return self.core.read_namespaced_config_map(body["metadata"]["name"], namespace)

    def read_configmap(self, namespace: str, name: str) -> client.V1ConfigMap | None:
        try:
            return self.core.read_namespaced_config_map(name, namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def create_or_get_job(self, namespace: str, body: dict[str, Any]) -> tuple[client.V1Job, bool]:
        try:
            return self.batch.create_namespaced_job(namespace, body), True
        except client.ApiException as error:
            if error.status != 409:
                raise
            return self.batch.read_namespaced_job(body["metadata"]["name"], namespace), False

    def read_job(self, namespace: str, name: str) -> client.V1Job | None:
        try:
            return self.batch.read_namespaced_job(name, namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def job_pods(self, namespace: str, job_name: str) -> list[client.V1Pod]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        return sorted(pods, key=lambda p: p.metadata.creation_timestamp or 0)

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str,
              component: str = "envkiln") -> None:
        """Post a core/v1 Event about `obj`; never fails the caller."""
        metadata = obj.get("metadata", {})
        namespace = metadata.get("namespace") or "default"
        stamp = now_iso()
        body = {
            "metadata": {"name": f"{metadata.get('name', 'obj')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": metadata.get("name"),
                "namespace": namespace, "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": component}, "reportingComponent": component,
            "reportingInstance": component, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            self.core.create_namespaced_event(namespace, body)
        except client.ApiException as error:
            log.warning("could not post event %s on %s: %s", reason, metadata.get("name"), error.reason)
