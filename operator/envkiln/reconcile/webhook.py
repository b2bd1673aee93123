"""Pods that name an environment: the mutating admission webhook (reads only), the anonymous
Environments made for gated pods seen through the watch, and the scheduling-gate release.

The reads and writes are here; what to do is decided in envkiln.core.decisions.admission.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from envkiln.adapters.kube import ApiError
from envkiln.core.conditions import now_iso
from envkiln.core.decisions.admission import admit, condition_patch, refusal, release, scoped_review
from envkiln.core.decisions.anonymous import (
    REASON_ANONYMOUS_REFUSED,
    anonymous_target,
    plan_anonymous,
    rate_limit,
    waiting_inline_pod,
)
from envkiln.core.names import ENVIRONMENTS, LABEL_ENVIRONMENT
from envkiln.core.workloads import (
    GATE,
    EnvironmentRequest,
    WorkloadError,
    anonymous_environment,
    anonymous_mismatch,
    parse_request,
)
from envkiln.reconcile.context import OperatorContext

log = logging.getLogger(__name__)
# The admission function of the webhook server (Kopf's): an AdmissionReview in, a response out.
AdmissionFn = Callable[..., Awaitable[Any]]


def scoped_to_request_namespace(fn: AdmissionFn) -> AdmissionFn:
    """`fn` behind a check of each AdmissionReview: the namespace is the request's own
    (`request.namespace`, from the URL the API server was called with), the objects are given that
    namespace before `fn` sees them, and a review whose object names another namespace (or that
    names none) is refused without reaching `fn`."""

    async def checked(review: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            scoped = scoped_review(review)
        except WorkloadError as error:
            log.warning("admission request refused: %s", error)
            return refusal(review, str(error))
        return await fn(scoped, *args, **kwargs)

    return checked


def admit_pod_counted(ctx: OperatorContext, pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    """`admit_pod`, counted in envkiln_webhook_admissions by result (image, gated, refused)."""
    try:
        changes = admit_pod(ctx, pod, namespace)
    except WorkloadError:
        ctx.metrics.admission("refused")
        raise
    gated = any(g.get("name") == GATE for g in changes["spec"].get("schedulingGates") or [])
    ctx.metrics.admission("gated" if gated else "image")
    return changes


def admit_pod(ctx: OperatorContext, pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The changes to make to a new pod: {'metadata': {...}, 'spec': {...}} pieces to patch.

    Reads only: the webhook has no side effects (a dry run and a real request are answered alike).
    `namespace` is the admission request's (see scoped_to_request_namespace); a pod whose own
    metadata says another one is refused. Raises WorkloadError (the pod is refused with its message).
    """
    metadata = pod.get("metadata") or {}
    written = metadata.get("namespace")
    if written not in (None, "", namespace):
        raise WorkloadError(f"the pod says namespace {written!r} but the request is for namespace {namespace!r}; "
                            "refused")
    request = parse_request(dict(metadata.get("labels") or {}), dict(metadata.get("annotations") or {}))
    environment, name = _environment_for(ctx, request, namespace)
    return admit(pod, environment, name, request)


def _environment_for(ctx: OperatorContext, request: EnvironmentRequest, namespace: str) -> tuple[dict[str, Any], str]:
    if request.inline_spec is not None:
        # Read only: a pod whose anonymous Environment does not exist yet is gated, and the
        # operator creates the Environment when its watch sees the pod (ensure_anonymous), in the
        # namespace the API server admitted the pod into. A forged review changes nothing.
        body = anonymous_environment(request.inline_spec, namespace)
        name = body["metadata"]["name"]
        existing = ctx.kube.get(ENVIRONMENTS, namespace, name)
        if existing is None:
            return body, name
        problem = anonymous_mismatch(existing, body)
        if problem is not None:
            raise WorkloadError(problem)
        return existing, name
    assert request.name is not None
    if request.curated:
        return _curated_environment(ctx, request.name), request.name
    environment = ctx.kube.get(ENVIRONMENTS, namespace, request.name)
    if environment is None:
        raise WorkloadError(f"Environment {request.name!r} does not exist in namespace {namespace}; create it "
                            f"(kubectl get environments -n {namespace}) or fix the {LABEL_ENVIRONMENT} label")
    return environment, request.name


def _curated_environment(ctx: OperatorContext, name: str) -> dict[str, Any]:
    """The Environment `name` of the curated namespace, whatever the pod's namespace. Only its status is
    trusted (envkiln.core.decisions.admission.admit): the operator writes it from the builds it signed there."""
    curated = ctx.settings.curated_namespace
    try:
        environment = ctx.kube.get(ENVIRONMENTS, curated, name)
    except ApiError as error:
        if error.status != 403:
            raise
        raise WorkloadError(f"curated Environment {name}: the operator may not read Environments in the curated "
                            f"namespace {curated}; it must watch that namespace (ENVKILN_NAMESPACES, chart "
                            "operator.watchNamespaces)") from None
    if environment is None:
        raise WorkloadError(f"curated Environment {name!r} does not exist in the curated namespace {curated} "
                            f"(kubectl get environments -n {curated})")
    return environment


def release_pods(ctx: OperatorContext, namespace: str, name: str) -> int:
    """Set the image on gated pods waiting for `name` and remove their gate. Returns how many."""
    environment = ctx.kube.get(ENVIRONMENTS, namespace, name)
    if environment is None:
        return 0
    released = 0
    for pod in ctx.kube.list_pods(namespace, f"{LABEL_ENVIRONMENT}={name}"):
        body: dict[str, Any] = ctx.kube.to_dict(pod)
        decision = release(body, environment)
        if decision.action == "report":
            _report_pod(ctx, body, decision.reason, decision.message)
        if decision.action != "release":
            continue
        try:
            ctx.kube.patch_pod(namespace, body["metadata"]["name"], decision.patch)
            released += 1
        except ApiError as error:
            if error.status not in (404, 409, 422):
                raise
            log.info("pod %s/%s changed meanwhile (%s); the next pass releases it", namespace,
                     body["metadata"]["name"], error.status)
    return released


def _report_pod(ctx: OperatorContext, pod: dict[str, Any], reason: str, message: str) -> None:
    patch = condition_patch(pod, reason, message, now_iso())
    if patch is None:
        return  # already said
    metadata = pod["metadata"]
    try:
        ctx.kube.patch_pod_status(metadata["namespace"], metadata["name"], patch)
    except ApiError as error:
        log.warning("could not set the condition on pod %s: %s", metadata["name"], error.reason)
    ctx.kube.event({"apiVersion": "v1", "kind": "Pod", "metadata": metadata}, "Warning", reason, message)


class NamespaceRates:
    """When each namespace last had anonymous Environments made (monotonic seconds), for
    envkiln.core.decisions.anonymous.rate_limit. Thread-safe: pod events run in handler threads."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._lock = threading.Lock()
        self._made: dict[str, deque[float]] = {}

    def check(self, namespace: str, now: float) -> tuple[bool, float]:
        with self._lock:
            return rate_limit(list(self._made.get(namespace, ())), now, self.limit, self.window)

    def note(self, namespace: str, now: float) -> None:
        with self._lock:
            made = self._made.setdefault(namespace, deque(maxlen=max(1, self.limit)))
            made.append(now)


def ensure_anonymous(ctx: OperatorContext, rates: NamespaceRates, pod: dict[str, Any]) -> float | None:
    """For a pod seen through the watch: create its anonymous Environment in the pod's own namespace
    (or say on the pod why not). Returns seconds after which to look again (rate-limited), or None."""
    metadata = pod.get("metadata") or {}
    namespace = metadata.get("namespace") or ""
    if not waiting_inline_pod(pod) or not namespace:
        return None
    reserved = {ctx.settings.operator_namespace, ctx.settings.curated_namespace}
    wanted = anonymous_target(pod)
    existing = ctx.kube.get(ENVIRONMENTS, namespace, wanted) if wanted else None
    plan = plan_anonymous(pod, namespace, reserved, existing, rates.check(namespace, time.monotonic()))
    if plan.action == "refuse":
        _report_pod(ctx, pod, REASON_ANONYMOUS_REFUSED, plan.message)
    elif plan.action == "wait":
        return plan.retry_in
    elif plan.action == "create" and plan.environment is not None:
        rates.note(namespace, time.monotonic())
        created, made = ctx.kube.create_or_get(ENVIRONMENTS, namespace, plan.environment)
        if made:
            log.info("anonymous Environment %s/%s made for pod %s", namespace, created["metadata"]["name"],
                     metadata.get("name"))
    return None

