"""Helpers for operator tests: start an operator, wait for conditions, play the kubelet's part."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from envkiln.core.definition import definition_hash, image_name
from envkiln.core.models import EnvironmentSpec

GROUP, VERSION = "envkiln.dev", "v1alpha1"


def environment(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Environment", "metadata": {"name": name}, "spec": spec}


def hash_of(spec: dict[str, Any]) -> str:
    return definition_hash(EnvironmentSpec.model_validate(spec))


def image_for(spec: dict[str, Any], registry: str, namespace: str) -> str:
    """Where the operator pushes `spec` built in `namespace` (the default image template)."""
    return image_name(hash_of(spec), registry, namespace=namespace)


def wait_for(check: Callable[[], Any], timeout: float = 60, interval: float = 0.3, what: str = "condition",
             diagnostics: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    extra = diagnostics() if diagnostics else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{extra}")


class Envs:
    def __init__(self, api: client.ApiClient, namespace: str):
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        # Strict, as kubectl does by default: unknown fields are errors, not silently pruned.
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "environments", body,
                                                           field_validation="Strict")

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "environments", name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def builds(self) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                         "environmentbuilds")["items"]

    def build(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "environmentbuilds", name)

    def jobs(self) -> list[client.V1Job]:
        return self.batch.list_namespaced_job(self.namespace, label_selector="envkiln.dev/build").items

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event(self.namespace).items if e.involved_object.name == name]

    def wait_phase(self, name: str, phase: str, timeout: float = 60, diagnostics: Callable[[], str] | None = None
                   ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get(name)
            status = obj.get("status") or {}
            current = status.get("observedGeneration") == obj["metadata"]["generation"]
            if status.get("phase") == phase and current:
                return status
            if status.get("phase") == "Failed" and phase != "Failed" and current:
                builds = {b["metadata"]["name"]: b.get("status") for b in self.builds()}
                raise AssertionError(f"Environment {name} Failed while waiting for {phase}: {status}\n{builds}")
            return None

        return wait_for(check, timeout, what=f"Environment {name} phase {phase}", diagnostics=diagnostics)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for item in status.get("conditions") or []:
        if item["type"] == type_:
            return item
    raise AssertionError(f"no {type_} condition in {status}")


def play_kaniko_pod(api: client.ApiClient, namespace: str, job: client.V1Job, exit_code: int, message: str) -> None:
    """Do what the Job controller and kubelet would: a pod for the Job, terminated with `message`."""
    core = client.CoreV1Api(api)
    template = job.spec.template
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        # The API server put the Job's controller-uid labels on its template; the Job controller makes
        # each pod controlled by the Job (envkiln reads only such pods, never by job-name alone).
        "metadata": {"name": f"{job.metadata.name}-pod", "namespace": namespace,
                     "labels": {**(template.metadata.labels or {}), "job-name": job.metadata.name,
                                "batch.kubernetes.io/job-name": job.metadata.name},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job.metadata.name,
                                          "uid": job.metadata.uid, "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": api.sanitize_for_serialization(template.spec),
    }
    core.create_namespaced_pod(namespace, pod)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def ended(container: Any, code: int, text: str) -> dict[str, Any]:
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": text,
                      "startedAt": now, "finishedAt": now}
        return {"name": container.name, "image": container.image, "imageID": "", "ready": False,
                "restartCount": 0, "started": False, "state": {"terminated": terminated}}

    # The build pod: init containers `context` and `build` (Kaniko, --no-push), then `push`, whose
    # termination message is the digest. A failure is the build container's, with its log.
    *context, build = template.spec.init_containers
    [push] = template.spec.containers
    if exit_code == 0:
        init = [ended(c, 0, "") for c in (*context, build)]
        main = [ended(push, 0, message)]
    else:
        init = [*(ended(c, 0, "") for c in context), ended(build, exit_code, message)]
        main = [{"name": push.name, "image": push.image, "imageID": "", "ready": False, "restartCount": 0,
                 "started": False, "state": {"waiting": {"reason": "PodInitializing"}}}]
    core.patch_namespaced_pod_status(f"{job.metadata.name}-pod", namespace, {"status": {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "initContainerStatuses": init, "containerStatuses": main}})


def finish_job(api: client.ApiClient, namespace: str, job: client.V1Job, succeeded: bool) -> None:
    """Write the Job status the Job controller writes when its pod ends."""
    batch = client.BatchV1Api(api)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if succeeded:
        status = {"startTime": now, "completionTime": now, "succeeded": 1, "active": 0, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods", "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods", "lastTransitionTime": now, "lastProbeTime": now},
        ]}
    else:
        status = {"startTime": now, "failed": 1, "active": 0, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit", "lastTransitionTime": now,
             "lastProbeTime": now},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit", "lastTransitionTime": now,
             "lastProbeTime": now},
        ]}
    batch.patch_namespaced_job_status(job.metadata.name, namespace, {"status": status})
