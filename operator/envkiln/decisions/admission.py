"""Pods that name an environment: what a new pod gets at admission, and when a gated pod is released.

The webhook (envkiln.webhook) looks the Environment up and applies these answers; the answers
themselves depend only on the pod and the Environment, as plain JSON dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from envkiln.names import POD_CONDITION, REASON_ENVIRONMENT_FAILED, REASON_ENVIRONMENT_VERSION_MISSING
from envkiln.workloads import (
    ANNOTATION,
    CONTAINER_ANNOTATION,
    GATE,
    LABEL,
    EnvironmentRequest,
    WorkloadError,
    container_index,
    image_for_version,
    with_environment_variables,
)


def admit(pod: dict[str, Any], environment: dict[str, Any] | None, name: str,
          request: EnvironmentRequest) -> dict[str, Any]:
    """The changes to make to a new pod: {'metadata': {...}, 'spec': {...}} pieces to patch.

    `environment` is the Environment the pod names (None: not known yet, e.g. an inline one in a
    dry run). The pod gets the environment's image when that version is built, otherwise a
    scheduling gate; always the environment's variables (the pod's own values win) and the
    labels/annotations recording what was resolved. Raises WorkloadError (the pod is refused).
    """
    metadata = pod.get("metadata") or {}
    labels, annotations = dict(metadata.get("labels") or {}), dict(metadata.get("annotations") or {})
    index = container_index(pod, request.container)
    containers = [dict(c) for c in pod["spec"]["containers"]]
    variables = ((environment or {}).get("spec") or {}).get("environmentVariables") or {}
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


@dataclass(frozen=True)
class Release:
    """What to do with one pod when its Environment may have changed.

    - `skip`: the pod carries no envkiln gate;
    - `wait`: not built yet; nothing to do;
    - `report`: the pod can never be released as it is: set a pod condition (reason, message);
    - `release`: apply `patch` (a JSON patch: set the image, drop the gate, guarded by resourceVersion).
    """

    action: Literal["skip", "wait", "report", "release"]
    patch: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    message: str = ""


def release(pod: dict[str, Any], environment: dict[str, Any]) -> Release:
    """The decision for one gated pod (`pod` in API JSON form) given its Environment."""
    spec, metadata = pod.get("spec") or {}, pod.get("metadata") or {}
    gates = [g.get("name") for g in spec.get("schedulingGates") or []]
    if GATE not in gates:
        return Release("skip")
    name = environment["metadata"]["name"]
    annotations = metadata.get("annotations") or {}
    version = annotations.get(ANNOTATION, name).partition(":")[2] or None
    try:
        image = image_for_version(environment, version)
    except WorkloadError as error:
        return Release("report", reason=REASON_ENVIRONMENT_VERSION_MISSING, message=str(error))
    if image is None:
        status = environment.get("status") or {}
        if status.get("phase") == "Failed":
            return Release("report", reason=REASON_ENVIRONMENT_FAILED,
                           message=f"Environment {name} failed: {status.get('message', '')}")
        return Release("wait")
    wanted = annotations.get(CONTAINER_ANNOTATION)
    containers = spec.get("containers") or []
    index = next((i for i, c in enumerate(containers) if c.get("name") == wanted), 0)
    remaining = [{"name": g} for g in gates if g != GATE]
    operations: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": metadata.get("resourceVersion")},
        {"op": "replace", "path": f"/spec/containers/{index}/image", "value": image},
        {"op": "replace", "path": "/spec/schedulingGates", "value": remaining} if remaining
        else {"op": "remove", "path": "/spec/schedulingGates"},
    ]
    return Release("release", patch=operations)


def condition_patch(pod: dict[str, Any], reason: str, message: str, now: str) -> dict[str, Any] | None:
    """The status patch that sets envkiln's pod condition; None when the pod already says so."""
    conditions = list((pod.get("status") or {}).get("conditions") or [])
    existing = next((c for c in conditions if c.get("type") == POD_CONDITION), None)
    if existing is not None and existing.get("reason") == reason and existing.get("message") == message:
        return None
    condition = {"type": POD_CONDITION, "status": "False", "reason": reason, "message": message,
                 "lastTransitionTime": now}
    others = [c for c in conditions if c.get("type") != POD_CONDITION]
    return {"status": {"conditions": [*others, condition]}}
