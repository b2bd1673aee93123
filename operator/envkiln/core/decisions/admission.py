"""Pods that name an environment: what a new pod gets at admission, and when a gated pod is released.

The webhook (envkiln.reconcile.webhook) looks the Environment up and applies these answers; the answers
themselves depend only on the pod and the Environment, as plain JSON dicts. Also decided here:
which namespace an admission request is about (the request's own, never the posted object's),
and when the webhook's certificates are re-issued (envkiln.adapters.webhookcert applies that).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from envkiln.core.names import POD_CONDITION, REASON_ENVIRONMENT_FAILED, REASON_ENVIRONMENT_VERSION_MISSING
from envkiln.core.workloads import (
    ANNOTATION,
    CONTAINER_ANNOTATION,
    GATE,
    LABEL,
    EnvironmentRequest,
    WorkloadError,
    container_index,
    image_for_version,
    latest_version,
    with_environment_variables,
)


def admit(pod: dict[str, Any], environment: dict[str, Any] | None, name: str,
          request: EnvironmentRequest) -> dict[str, Any]:
    """The changes to make to a new pod: {'metadata': {...}, 'spec': {...}} pieces to patch.

    `environment` is the Environment the pod names (None: not known yet, e.g. an inline one in a
    dry run). The pod gets the environment's image when that version is built, otherwise a
    scheduling gate; always the environment's variables (the pod's own values win) and the
    labels/annotations recording what was resolved (`@latest` becomes the version it resolved to).
    Raises WorkloadError (the pod is refused).

    A curated environment (`request.curated`: read from the curated namespace) is used only when the
    version is built: its Ready status, or a version record, both written by the operator from builds it
    signed there. Otherwise the pod is refused, never gated: gated pods are released by their own
    namespace's Environments.
    """
    metadata = pod.get("metadata") or {}
    labels, annotations = dict(metadata.get("labels") or {}), dict(metadata.get("annotations") or {})
    index = container_index(pod, request.container)
    containers = [dict(c) for c in pod["spec"]["containers"]]
    variables = ((environment or {}).get("spec") or {}).get("environmentVariables") or {}
    containers[index] = with_environment_variables(containers[index], variables)
    version = request.version
    if request.latest and environment:
        version = latest_version(environment)  # None: nothing built yet, so the current version
    image = image_for_version(environment, version) if environment else None
    if request.curated and image is None:
        raise WorkloadError(curated_not_built(environment, name, version))
    changes: dict[str, Any] = {"metadata": {}, "spec": {}}
    recorded = dataclasses.replace(request, name=name, version=version, latest=False)
    # Record what was resolved, so the gate release (and humans) know the request.
    changes["metadata"]["labels"] = {**labels, LABEL: recorded.label}
    changes["metadata"]["annotations"] = {**annotations, ANNOTATION: recorded.reference,
                                          CONTAINER_ANNOTATION: containers[index]["name"]}
    if image is not None:
        containers[index]["image"] = image
    else:
        gates = [g for g in pod["spec"].get("schedulingGates") or [] if g.get("name") != GATE]
        changes["spec"]["schedulingGates"] = [*gates, {"name": GATE}]
    changes["spec"]["containers"] = containers
    return changes


def curated_not_built(environment: dict[str, Any] | None, name: str, version: str | None) -> str:
    """Why a pod naming a curated environment is refused when that version is not built."""
    metadata, status = (environment or {}).get("metadata") or {}, (environment or {}).get("status") or {}
    namespace = metadata.get("namespace", "?")
    phase = status.get("phase") or "not reconciled yet"
    what = f"version {version}" if version else "its current version"
    why = f": {status['message']}" if phase == "Failed" and status.get("message") else ""
    built = [str(r["version"]) for r in status.get("versions") or [] if r.get("imageRef") and r.get("version")]
    hint = (f"name a built version (curated/{name}:{built[-1]}, or curated/{name}@latest)" if built
            else "retry when it is Ready")
    return (f"curated Environment {name} (namespace {namespace}) is not built for {what} (phase {phase}{why}); pods "
            f"get a curated environment only once it is built, they do not wait for it: {hint}")


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


# --- the admission request itself ----------------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


def request_namespace(review: Mapping[str, Any]) -> str:
    """The namespace an AdmissionReview is about: `request.namespace`, which the API server takes
    from the request's URL, never the posted object's `metadata.namespace`.

    Raises WorkloadError (the request is refused) when the request names no valid namespace, or
    when the object (or the old object) says another one.
    """
    request = review.get("request")
    if not isinstance(request, Mapping):
        raise WorkloadError("not an AdmissionReview: it has no request")
    namespace = request.get("namespace")
    if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace):
        raise WorkloadError(f"the admission request names no valid namespace ({namespace!r}); "
                            "envkiln admits namespaced pods only")
    for key in ("object", "oldObject"):
        obj = request.get(key)
        if obj is None:
            continue
        metadata = (obj.get("metadata") or {}) if isinstance(obj, Mapping) else None
        if not isinstance(metadata, Mapping):
            raise WorkloadError(f"request.{key} is not an object with metadata")
        written = metadata.get("namespace")
        if written not in (None, "", namespace):
            raise WorkloadError(f"request.{key}.metadata.namespace is {written!r} but the request is for namespace "
                                f"{namespace!r}; refused")
    return namespace


def scoped_review(review: Mapping[str, Any]) -> dict[str, Any]:
    """The review with its objects' `metadata.namespace` set to the request's namespace, so that
    whoever reads the objects sees only that one. Raises WorkloadError as request_namespace does."""
    namespace = request_namespace(review)
    request = dict(review["request"])
    for key in ("object", "oldObject"):
        obj = request.get(key)
        if obj is not None:
            request[key] = {**obj, "metadata": {**(obj.get("metadata") or {}), "namespace": namespace}}
    return {**review, "request": request}


def refusal(review: Mapping[str, Any], message: str, code: int = 400) -> dict[str, Any]:
    """The AdmissionReview response refusing `review` with `message` (shown to whoever sent the pod)."""
    request = review.get("request")
    uid = request.get("uid") if isinstance(request, Mapping) else None
    version = review.get("apiVersion")
    return {"apiVersion": version if version in _REVIEW_VERSIONS else _REVIEW_VERSIONS[0], "kind": "AdmissionReview",
            "response": {"uid": uid if isinstance(uid, str) else "", "allowed": False,
                         "status": {"code": code, "message": message}}}


# --- the webhook's certificates -------------------------------------------------------------------

# A certificate is re-issued when less than this share of its lifetime is left: a 90-day serving
# certificate after 60 days, a 10-year CA after about 6 years 8 months.
RENEW_FRACTION = 1 / 3
CertificateAction = Literal["keep", "issue", "rotate-ca"]


@dataclass(frozen=True)
class Validity:
    not_before: datetime.datetime
    not_after: datetime.datetime


@dataclass(frozen=True)
class StoredCertificates:
    """What the webhook's Secrets hold now (None: missing or unreadable)."""

    ca: Validity | None
    serving: Validity | None
    serving_from_ca: bool = True  # the serving certificate is signed by the kept CA
    serving_names: frozenset[str] = frozenset()  # its DNS names and IP addresses


def renewal_due(validity: Validity | None, now: datetime.datetime, fraction: float = RENEW_FRACTION) -> bool:
    """True when the certificate should be replaced: missing, not valid yet, or less than `fraction`
    of its lifetime left (expired included)."""
    if validity is None:
        return True
    lifetime = validity.not_after - validity.not_before
    if lifetime <= datetime.timedelta(0) or now < validity.not_before:
        return True
    return validity.not_after - now < lifetime * fraction


def certificate_action(stored: StoredCertificates, names: Collection[str], now: datetime.datetime) -> CertificateAction:
    """What to do with the webhook's certificates now.

    - `rotate-ca`: no CA kept, or it is due: make a new one (the old one stays in the CA bundle
      until it expires, so certificates it signed keep working meanwhile);
    - `issue`: a new serving certificate from the CA: none yet, not from this CA, for other
      names than `names`, or due;
    - `keep`: nothing to do.
    """
    if renewal_due(stored.ca, now):
        return "rotate-ca"
    if (stored.serving is None or not stored.serving_from_ca or stored.serving_names != frozenset(names)
            or renewal_due(stored.serving, now)):
        return "issue"
    return "keep"
