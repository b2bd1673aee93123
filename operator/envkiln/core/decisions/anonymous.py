"""Anonymous Environments (inline specs on pods): when the operator creates one, and how often.

The webhook never creates anything: it gates a pod whose inline spec has no Environment yet. The
operator sees that pod through its watch (so the API server really admitted it, in the namespace
the pod is in) and decides here what to do: create `anonymous-<hash>` in the pod's own namespace,
say why not on the pod, wait for the namespace's rate limit, or nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from envkiln.core.models import EnvironmentSpec
from envkiln.core.workloads import (
    GATE,
    SPEC_ANNOTATION,
    WorkloadError,
    anonymous_environment,
    anonymous_mismatch,
    anonymous_name,
    parse_inline_spec,
)

REASON_ANONYMOUS_REFUSED = "AnonymousEnvironmentRefused"


@dataclass(frozen=True)
class AnonymousPlan:
    action: Literal["none", "create", "refuse", "wait"]
    environment: dict[str, Any] | None = None  # the body to create (create)
    message: str = ""  # why not (refuse)
    retry_in: float | None = None  # wait


def waiting_inline_pod(pod: Mapping[str, Any]) -> bool:
    """A pod that carries an inline spec and still waits behind envkiln's gate."""
    metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    gated = any(g.get("name") == GATE for g in spec.get("schedulingGates") or [])
    return gated and SPEC_ANNOTATION in (metadata.get("annotations") or {}) and not metadata.get("deletionTimestamp")


def anonymous_target(pod: Mapping[str, Any]) -> str | None:
    """The name of the anonymous Environment a waiting pod's inline spec stands for (None: not
    such a pod, or its annotations cannot be read; plan_anonymous then says why)."""
    if not waiting_inline_pod(pod):
        return None
    try:
        return anonymous_name(_inline_spec(pod))
    except WorkloadError:
        return None


def plan_anonymous(pod: Mapping[str, Any], namespace: str, reserved: Collection[str],
                   existing: Mapping[str, Any] | None, allowed: tuple[bool, float]) -> AnonymousPlan:
    """What to do for a pod seen through the watch in `namespace`.

    `reserved`: namespaces where no anonymous Environment may be made (the operator's and the
    curated one: an Environment there would be used by, or sit beside, every tenant);
    `existing`: the Environment of that name, if any; `allowed`: the namespace's rate limit
    answer (see rate_limit)."""
    if not waiting_inline_pod(pod):
        return AnonymousPlan("none")
    try:
        spec = _inline_spec(pod)
    except WorkloadError as error:
        return AnonymousPlan("refuse", message=str(error))
    if namespace in reserved:
        return AnonymousPlan("refuse", message=(
            f"annotation {SPEC_ANNOTATION}: anonymous environments are not made in namespace {namespace} "
            "(it is envkiln's own or the curated one); run the pod in a tenant namespace, or name an Environment"))
    body = anonymous_environment(spec, namespace)
    if existing is not None:
        problem = anonymous_mismatch(dict(existing), body)
        return AnonymousPlan("none") if problem is None else AnonymousPlan("refuse", message=problem)
    ok, retry_in = allowed
    if not ok:
        return AnonymousPlan("wait", retry_in=retry_in)
    return AnonymousPlan("create", environment=body)


def _inline_spec(pod: Mapping[str, Any]) -> EnvironmentSpec:
    """The pod's inline spec, read from its annotation alone (after admission the pod's label and
    reference annotation name the anonymous Environment; the spec is what decides which one)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return parse_inline_spec(str(annotations.get(SPEC_ANNOTATION, "")))


def rate_limit(recent: Sequence[float], now: float, limit: int, window: float) -> tuple[bool, float]:
    """(allowed, seconds until the next one may be) for a namespace that made its anonymous
    Environments at the monotonic times `recent`: at most `limit` in any `window` seconds."""
    inside = sorted(t for t in recent if now - t < window)
    if len(inside) < limit:
        return True, 0.0
    return False, max(0.0, inside[len(inside) - limit] + window - now)
