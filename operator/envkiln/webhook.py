"""Pods that name an environment: the mutating admission webhook and the scheduling-gate release."""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client

from envkiln.conditions import now_iso
from envkiln.context import OperatorContext
from envkiln.kube import ENVIRONMENTS
from envkiln.workloads import (
    ANNOTATION,
    CONTAINER_ANNOTATION,
    GATE,
    LABEL,
    POD_CONDITION,
    EnvironmentRequest,
    WorkloadError,
    anonymous_environment,
    container_index,
    image_for_version,
    parse_request,
    with_environment_variables,
)

log = logging.getLogger(__name__)


def admit_pod(ctx: OperatorContext, pod: dict[str, Any], namespace: str, dry_run: bool) -> dict[str, Any]:
    """The changes to make to a new pod: {'metadata': {...}, 'spec': {...}} pieces to patch.

    Raises WorkloadError (the pod is refused with its message).
    """
    metadata = pod.get("metadata") or {}
    labels, annotations = dict(metadata.get("labels") or {}), dict(metadata.get("annotations") or {})
    request = parse_request(labels, annotations)
    environment, name = _environment_for(ctx, request, namespace, dry_run)
    index = container_index(pod, request.container)
    containers = [dict(c) for c in pod["spec"]["containers"]]
    variables = (environment.get("spec") or {}).get("environmentVariables") or {}
    containers[index] = with_environment_variables(containers[index], variables)
    image = image_for_version(environment, request.version) if environment else None
    changes: dict[str, Any] = {"metadata": {}, "spec": {}}
    reference = name + (f":{request.version}" if request.version else "")
    # Record what was resolved, so the gate release (and humans) know the request.
    changes["metadata"]["labels"] = {**labels, LABEL: name}
    changes["metadata"]["annotations"] = {**annotations, ANNOTATION: reference,
                                          CONTAINER_ANNOTATION: containers[index]["name"]}
    if image is not None:
        containers[index]["image"] = image
    else:
        gates = [g for g in pod["spec"].get("schedulingGates") or [] if g.get("name") != GATE]
        changes["spec"]["schedulingGates"] = [*gates, {"name": GATE}]
    changes["spec"]["containers"] = containers
    return changes


def _environment_for(ctx: OperatorContext, request: EnvironmentRequest, namespace: str,
                     dry_run: bool) -> tuple[dict[str, Any], str]:
    if request.inline_spec is not None:
        body = anonymous_environment(request.inline_spec, namespace)
        name = body["metadata"]["name"]
        existing = ctx.kube.get(ENVIRONMENTS, namespace, name)
        if existing is not None:
            return existing, name
        if dry_run:
            return body, name
        created, _ = ctx.kube.create_or_get(ENVIRONMENTS, namespace, body)
        return created, name
    assert request.name is not None
    environment = ctx.kube.get(ENVIRONMENTS, namespace, request.name)
    if environment is None:
        raise WorkloadError(f"Environment {request.name!r} does not exist in namespace {namespace}; create it "
                            f"(kubectl get environments -n {namespace}) or fix the {LABEL} label")
    return environment, request.name


def release_pods(ctx: OperatorContext, namespace: str, name: str) -> int:
    """Set the image on gated pods waiting for `name` and remove their gate. Returns how many."""
    environment = ctx.kube.get(ENVIRONMENTS, namespace, name)
    if environment is None:
        return 0
    status = environment.get("status") or {}
    pods = ctx.kube.core.list_namespaced_pod(namespace, label_selector=f"{LABEL}={name}").items
    released = 0
    for pod in pods:
        gates = [g.name for g in pod.spec.scheduling_gates or []]
        if GATE not in gates:
            continue
        annotations = pod.metadata.annotations or {}
        version = annotations.get(ANNOTATION, name).partition(":")[2] or None
        try:
            image = image_for_version(environment, version)
        except WorkloadError as error:
            _report_pod(ctx, pod, "EnvironmentVersionMissing", str(error))
            continue
        if image is None:
            if status.get("phase") == "Failed":
                _report_pod(ctx, pod, "EnvironmentFailed",
                            f"Environment {name} failed: {status.get('message', '')}")
            continue
        wanted = annotations.get(CONTAINER_ANNOTATION)
        index = next((i for i, c in enumerate(pod.spec.containers) if c.name == wanted), 0)
        remaining = [{"name": g} for g in gates if g != GATE]
        operations = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": pod.metadata.resource_version},
            {"op": "replace", "path": f"/spec/containers/{index}/image", "value": image},
        ]
        operations.append({"op": "replace", "path": "/spec/schedulingGates", "value": remaining} if remaining
                          else {"op": "remove", "path": "/spec/schedulingGates"})
        try:
            ctx.kube.core.patch_namespaced_pod(pod.metadata.name, namespace, operations)
            released += 1
        except client.ApiException as error:
            if error.status not in (404, 409, 422):
                raise
            log.info("pod %s/%s changed meanwhile (%s); the next pass releases it", namespace,
                     pod.metadata.name, error.status)
    return released


def _report_pod(ctx: OperatorContext, pod: client.V1Pod, reason: str, message: str) -> None:
    existing = next((c for c in (pod.status.conditions or []) if c.type == POD_CONDITION), None) if pod.status else None
    if existing is not None and existing.reason == reason and existing.message == message:
        return  # already said
    condition = {"type": POD_CONDITION, "status": "False", "reason": reason, "message": message,
                 "lastTransitionTime": now_iso()}
    others = [ctx.kube.api_client.sanitize_for_serialization(c) for c in (pod.status.conditions or [])
              if c.type != POD_CONDITION] if pod.status else []
    try:
        ctx.kube.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace,
                                                  {"status": {"conditions": [*others, condition]}})
    except client.ApiException as error:
        log.warning("could not set the condition on pod %s: %s", pod.metadata.name, error.reason)
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": ctx.kube.api_client.sanitize_for_serialization(
        pod.metadata)}
    ctx.kube.event(body, "Warning", reason, message)
