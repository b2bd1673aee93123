"""Every Kubernetes API call envkiln makes, on one ApiClient: idempotent, and retried.

- Idempotent writes: create-or-get (a 409 means someone else created it: follow theirs), status
  patches guarded by resourceVersion and recomputed on conflict, Events that never fail the caller.
- Retries: 429, 5xx and broken connections are retried with capped, jittered exponential backoff,
  honouring `Retry-After` (envkiln.core.decisions.retry); `retries` counts them by cause. (Below this
  loop, urllib3's default policy already retries a 429 with Retry-After up to three times; what
  reaches Kube is what outlasted those.)

Nothing else in the product constructs a `kubernetes.client.*Api` (an import-linter contract and
a unit test keep it so).
"""

from __future__ import annotations

import builtins
import json
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import urllib3
from kubernetes import client

from envkiln.core.conditions import now_iso
from envkiln.core.decisions.retry import RetryPolicy, backoff_seconds, parse_retry_after, should_retry
from envkiln.core.names import BUILDS, COMPONENT, ENVIRONMENTS, GROUP, JOB_NAME_LABEL, VERSION

# The typed objects some callers read (a Job and its pods), so that they need not import kubernetes.
V1Job = client.V1Job
V1Pod = client.V1Pod
V1ContainerStatus = client.V1ContainerStatus


__all__ = ["BUILDS", "ENVIRONMENTS", "ApiError", "Kube"]

log = logging.getLogger(__name__)
T = TypeVar("T")
ApiError = client.ApiException  # what callers catch; `.status` is the HTTP status


def api_message(error: ApiError) -> str:
    """The API server's own words for a refusal (its Status message), else status and reason."""
    try:
        message = json.loads(error.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else f"{error.status} {error.reason}"
# Failures without a response: connection reset or refused, read timeout.
_CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def unreachable(error: BaseException) -> str | None:
    """What went wrong, in one line, when `error` is the API server not answering (refused, reset, timed
    out: nothing to debug in envkiln's code, so no traceback); None for any other error."""
    if not isinstance(error, _CONNECTION_ERRORS):
        return None
    reason = getattr(error, "reason", None)  # urllib3's MaxRetryError wraps the cause
    return f"{type(error).__name__}: {reason or error}"


class Kube:
    """The API calls envkiln makes. Thread-safe: Kopf runs sync handlers in a thread pool."""

    def __init__(self, api_client: client.ApiClient, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep, jitter: Callable[[], float] = random.random):
        self.api_client = api_client
        self.policy = policy or RetryPolicy()
        self.retries: Counter[str] = Counter()  # cause ("429", "503", "connection") -> retries made
        self._sleep, self._jitter = sleep, jitter
        self._lock = threading.Lock()
        # Typed Any: the generated clients' annotations say `object` for most answers.
        self._custom: Any = client.CustomObjectsApi(api_client)
        self._core: Any = client.CoreV1Api(api_client)
        self._batch: Any = client.BatchV1Api(api_client)
        self._admission: Any = client.AdmissionregistrationV1Api(api_client)

    # --- the retry loop ----------------------------------------------------------------

    def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """method(*args, **kwargs), retried on 429, 5xx and broken connections."""
        retry, waited = 0, 0.0
        while True:
            try:
                return method(*args, **kwargs)
            except client.ApiException as error:
                status: int | None = error.status
                header = (error.headers or {}).get("Retry-After") if status == 429 or (status or 0) >= 500 else None
                retry += 1
                if not should_retry(self.policy, status, retry, waited):
                    raise
                cause = str(status)
            except _CONNECTION_ERRORS as error:
                status, header = None, None
                retry += 1
                if not should_retry(self.policy, status, retry, waited):
                    raise
                cause = "connection"
                log.debug("API call %s: %s", getattr(method, "__name__", method), error)
            delay = backoff_seconds(self.policy, retry, parse_retry_after(header), self._jitter())
            with self._lock:
                self.retries[cause] += 1
            log.info("API call %s: %s; retry %d in %.2fs", getattr(method, "__name__", "?"), cause, retry, delay)
            self._sleep(delay)
            waited += delay

    def _absent_is_none(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            return self.call(method, *args, **kwargs)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def to_dict(self, obj: Any) -> Any:
        """A generated model object as the JSON-ready dict the API would send."""
        return self.api_client.sanitize_for_serialization(obj)

    # --- custom resources -------------------------------------------------------------

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._absent_is_none(self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)

    def list(self, plural: str, namespace: str, label_selector: str = "") -> builtins.list[dict[str, Any]]:
        result = self.call(self._custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural,
                           label_selector=label_selector)
        return builtins.list(result.get("items", []))

    def list_in(self, plural: str, namespaces: builtins.list[str] | None,
                label_selector: str = "") -> builtins.list[dict[str, Any]]:
        """Objects in the given namespaces (None or empty: all namespaces)."""
        if not namespaces:
            result = self.call(self._custom.list_cluster_custom_object, GROUP, VERSION, plural,
                               label_selector=label_selector)
            return builtins.list(result.get("items", []))
        return [item for namespace in namespaces for item in self.list(plural, namespace, label_selector)]

    def create_or_get(self, plural: str, namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(object, created). A 409 means someone else created it first: follow theirs."""
        create = self._custom.create_namespaced_custom_object
        try:
            return self.call(create, GROUP, VERSION, namespace, plural, body), True
        except client.ApiException as error:
            if error.status != 409:
                raise
        existing = self.get(plural, namespace, body["metadata"]["name"])
        if existing is None:  # deleted between the 409 and the read: try once more
            return self.call(create, GROUP, VERSION, namespace, plural, body), True
        return existing, False

    def delete(self, plural: str, namespace: str, name: str) -> None:
        """Delete the object if it is there (a 404 is success)."""
        self._absent_is_none(self._custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)

    def patch_status(
        self, plural: str, namespace: str, name: str,
        compute: Callable[[dict[str, Any]], dict[str, Any] | None], attempts: int = 8,
        current: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Read, compute a status patch from the fresh object, write it guarded by resourceVersion.

        `compute` returns None when nothing needs writing. On 409 (someone wrote in between)
        the object is read again and the patch recomputed, so no write is lost or stale.
        `current`: the object as the caller already has it (e.g. from a watch event), used for the
        first attempt instead of a read; if it is stale, the guarded write fails and the loop reads.
        """
        for attempt in range(attempts):
            if attempt > 0 or current is None:
                current = self.get(plural, namespace, name)
            if current is None:
                return None
            patch = compute(current)
            if patch is None:
                return current
            body = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "status": patch}
            try:
                result: dict[str, Any] = self.call(self._custom.patch_namespaced_custom_object_status,
                                                   GROUP, VERSION, namespace, plural, name, body)
                return result
            except client.ApiException as error:
                if error.status == 404:
                    return None
                if error.status != 409:
                    raise
                self._sleep(min(0.05 * (2**attempt), 1.0))
        raise RuntimeError(f"status of {plural}/{namespace}/{name}: too many conflicting writes")

    # --- ConfigMaps and Secrets ----------------------------------------------------------

    def create_or_get_configmap(self, namespace: str, body: dict[str, Any]) -> Any:
        try:
            return self.call(self._core.create_namespaced_config_map, namespace, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            return self.call(self._core.read_namespaced_config_map, body["metadata"]["name"], namespace)

    def read_configmap(self, namespace: str, name: str) -> Any | None:
        return self._absent_is_none(self._core.read_namespaced_config_map, name, namespace)

    def read_service_account(self, namespace: str, name: str) -> Any | None:
        return self._absent_is_none(self._core.read_namespaced_service_account, name, namespace)

    def read_secret(self, namespace: str, name: str) -> Any | None:
        return self._absent_is_none(self._core.read_namespaced_secret, name, namespace)

    def create_or_get_secret(self, namespace: str, body: dict[str, Any]) -> tuple[Any, bool]:
        """(secret, created): the first writer wins, the others read theirs."""
        try:
            return self.call(self._core.create_namespaced_secret, namespace, body), True
        except client.ApiException as error:
            if error.status != 409:
                raise
        return self.call(self._core.read_namespaced_secret, body["metadata"]["name"], namespace), False

    def create_secret(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create the Secret: True, or False when one of that name exists (never read: the operator
        reads no Secret in a build's namespace)."""
        try:
            self.call(self._core.create_namespaced_secret, namespace, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            return False
        return True

    def delete_secret(self, namespace: str, name: str) -> None:
        """Delete the Secret if it is there (a 404 is success)."""
        self._absent_is_none(self._core.delete_namespaced_secret, name, namespace)

    def replace_secret_if_unchanged(self, namespace: str, body: dict[str, Any],
                                    resource_version: str) -> tuple[Any, bool]:
        """(secret, replaced): replace the Secret only if nobody wrote it since `resource_version`.

        A 409 means someone else wrote it first: theirs is returned, unchanged. A Secret deleted
        meanwhile is created again (create-or-get).
        """
        name = body["metadata"]["name"]
        guarded = {**body, "metadata": {**body["metadata"], "resourceVersion": resource_version}}
        try:
            return self.call(self._core.replace_namespaced_secret, name, namespace, guarded), True
        except client.ApiException as error:
            if error.status not in (404, 409):
                raise
        current = self.read_secret(namespace, name)
        if current is None:
            return self.create_or_get_secret(namespace, body)
        return current, False

    def create_or_patch_secret(self, namespace: str, body: dict[str, Any]) -> Any:
        """Create the Secret, or bring an existing one's data up to date."""
        try:
            return self.call(self._core.create_namespaced_secret, namespace, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
        return self.call(self._core.patch_namespaced_secret, body["metadata"]["name"], namespace,
                         {"data": body.get("data") or {}})

    # --- Jobs and pods -------------------------------------------------------------------

    def create_or_get_job(self, namespace: str, body: dict[str, Any]) -> tuple[Any, bool]:
        try:
            return self.call(self._batch.create_namespaced_job, namespace, body), True
        except client.ApiException as error:
            if error.status != 409:
                raise
            return self.call(self._batch.read_namespaced_job, body["metadata"]["name"], namespace), False

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete the Job and its pods (a 404 is success)."""
        self._absent_is_none(self._batch.delete_namespaced_job, name, namespace, propagation_policy="Background")

    def job_pod_refusals(self, namespace: str, job_name: str) -> builtins.list[str]:
        """Why the Job controller could not create the Job's pods (its FailedCreate Events): quota,
        admission, policy."""
        events = self.call(self._core.list_namespaced_event, namespace,
                           field_selector=f"involvedObject.kind=Job,involvedObject.name={job_name}").items
        return [str(e.message) for e in events if e.reason == "FailedCreate" and e.message]

    def read_job(self, namespace: str, name: str) -> Any | None:
        return self._absent_is_none(self._batch.read_namespaced_job, name, namespace)

    def list_jobs(self, namespaces: builtins.list[str] | None, label_selector: str) -> builtins.list[Any]:
        """Jobs with the labels in the given namespaces (None or empty: all namespaces)."""
        if not namespaces:
            everywhere = self.call(self._batch.list_job_for_all_namespaces, label_selector=label_selector)
            return builtins.list(everywhere.items)
        return [job for namespace in namespaces
                for job in self.call(self._batch.list_namespaced_job, namespace, label_selector=label_selector).items]

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A pod as the JSON-ready dict the API sends (None: gone)."""
        pod = self._absent_is_none(self._core.read_namespaced_pod, name, namespace)
        return None if pod is None else dict(self.to_dict(pod))

    def list_pods(self, namespace: str, label_selector: str) -> builtins.list[Any]:
        return builtins.list(self.call(self._core.list_namespaced_pod, namespace, label_selector=label_selector).items)

    def job_pods(self, namespace: str, job_name: str) -> builtins.list[Any]:
        pods = self.list_pods(namespace, f"{JOB_NAME_LABEL}={job_name}")
        return sorted(pods, key=lambda p: p.metadata.creation_timestamp or 0)

    def patch_pod(self, namespace: str, name: str, body: builtins.list[dict[str, Any]] | dict[str, Any]) -> Any:
        """A JSON patch (a list of operations) or a merge patch (a mapping) of a pod."""
        return self.call(self._core.patch_namespaced_pod, name, namespace, body)

    def patch_pod_status(self, namespace: str, name: str, body: dict[str, Any]) -> Any:
        return self.call(self._core.patch_namespaced_pod_status, name, namespace, body)

    def stream_pod_log(self, namespace: str, name: str, container: str) -> Iterator[bytes]:
        """A pod's log as the container writes it (`envkiln logs -f`), chunk by chunk."""
        response = self.call(self._core.read_namespaced_pod_log, name, namespace, container=container, follow=True,
                             _preload_content=False)
        try:
            yield from response.stream(65536)
        finally:
            response.release_conn()

    def read_pod_log(self, namespace: str, name: str, container: str | None = None,
                     tail_lines: int | None = None) -> str:
        kwargs: dict[str, Any] = {}
        if container:
            kwargs["container"] = container
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        return str(self.call(self._core.read_namespaced_pod_log, name, namespace, **kwargs))

    # --- admission --------------------------------------------------------------------------

    def read_mutating_webhook_configuration(self, name: str) -> Any:
        return self.call(self._admission.read_mutating_webhook_configuration, name)

    def patch_mutating_webhook_configuration(self, name: str, body: dict[str, Any]) -> Any:
        return self.call(self._admission.patch_mutating_webhook_configuration, name, body)

    # --- Events -----------------------------------------------------------------------------

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str,
              component: str = COMPONENT) -> None:
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
            self.call(self._core.create_namespaced_event, namespace, body)
        except (client.ApiException, *_CONNECTION_ERRORS) as error:
            log.warning("could not post event %s on %s: %s", reason, metadata.get("name"), error)
