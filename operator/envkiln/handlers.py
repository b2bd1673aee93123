"""Kopf handlers: thin wrappers that call the plain reconcile functions.

Nothing happens at import: `register(settings, registry)` puts the handlers on a Kopf registry
(timer intervals and the webhook come from the settings), and `envkiln run` calls it once, then
starts Kopf with the settings in the operator's memo. The startup handler builds the operator
context from them and keeps it in the memo (`memo.ctx`), which Kopf copies into every object's
memo; handlers take it from there. No module state.

Handlers are sync functions on purpose: the `kubernetes` client blocks, and Kopf runs sync
handlers in its thread pool instead of on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
from typing import Any

import kopf
from kubernetes import client, config

from envkiln.buildsync import TERMINAL, sync_build
from envkiln.context import OperatorContext, make_context
from envkiln.envsync import sync_environment
from envkiln.kube import ApiError
from envkiln.names import (
    BUILDS,
    ENVIRONMENTS,
    FINALIZER,
    GROUP,
    KOPF_DIFFBASE_KEY,
    KOPF_PREFIX,
    LABEL_BUILD,
    LABEL_ENVIRONMENT,
    VERSION,
)
from envkiln.settings import OperatorSettings
from envkiln.webhook import admit_pod, release_pods, scoped_to_request_namespace
from envkiln.webhookcert import WebhookTLS
from envkiln.workloads import WorkloadError

log = logging.getLogger("envkiln")
ENV_RESOURCE = (GROUP, VERSION, ENVIRONMENTS)
BUILD_RESOURCE = (GROUP, VERSION, BUILDS)
SETTLED = ("Ready", "Failed")


def api_client_from_environment() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def register(settings: OperatorSettings, registry: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
    """Every handler, on `registry`. The only place that decides what the operator reacts to."""
    # Kopf's own API access logs in as the kubernetes client does (kubeconfig or in-cluster).
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(shutdown)
    kopf.index(*ENV_RESOURCE, registry=registry)(environments_by_hash)
    kopf.on.resume(*ENV_RESOURCE, registry=registry)(environment_changed)
    kopf.on.create(*ENV_RESOURCE, registry=registry)(environment_changed)
    kopf.on.update(*ENV_RESOURCE, field="spec", registry=registry)(environment_changed)
    # A safety net: builds and registry recoveries normally push updates sooner.
    kopf.timer(*ENV_RESOURCE, interval=settings.env_sync_seconds, initial_delay=settings.env_sync_seconds,
               when=_environment_unsettled, registry=registry)(environment_unsettled)
    kopf.on.resume(*BUILD_RESOURCE, registry=registry)(build_created)
    kopf.on.create(*BUILD_RESOURCE, registry=registry)(build_created)
    kopf.timer(*BUILD_RESOURCE, interval=settings.build_sync_seconds, when=_build_unsettled,
               registry=registry)(build_progress)
    kopf.on.event(*BUILD_RESOURCE, registry=registry)(build_event)
    # Kopf writes nothing onto Jobs watched with on.event and a label filter.
    kopf.on.event("batch", "v1", "jobs", labels={LABEL_BUILD: kopf.PRESENT}, registry=registry)(build_job_event)
    if settings.webhook_enabled:
        # Registered only with a server to serve it: Kopf refuses admission handlers without one.
        kopf.on.mutate("v1", "pods", id="envkiln-environment", operations=["CREATE"], side_effects=True,
                       labels={LABEL_ENVIRONMENT: kopf.PRESENT}, registry=registry)(mutate_pod)
    return registry


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Kopf's last-handled state as a digest of the spec, not the spec itself.

    Kopf keeps the whole last-handled spec (plus labels and annotations) in one annotation, and all
    annotations of an object share 256 KiB: a spec within the CRD's bounds (a long pip list, an
    EnvironmentBuild's rendered plan) would push it over, and every later patch would fail. The only
    diff-based handler envkiln has is "the spec changed", and a digest answers that.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        spec = json.dumps(essence.get("spec") or {}, sort_keys=True, separators=(",", ":"))
        return {"spec": {"sha256": hashlib.sha256(spec.encode("utf-8")).hexdigest()}}


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Startup: Kopf's settings, then the operator context (once per process) into the memo."""
    options: OperatorSettings = memo.get("settings") or OperatorSettings.from_env()
    memo.settings = options
    # Kopf's own state lives in annotations under our prefix (not in status, which the
    # CRD schema would prune).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(prefix=KOPF_PREFIX, key=KOPF_DIFFBASE_KEY)
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING
    settings.peering.lifetime = options.peering_lifetime_seconds
    settings.peering.stealth = False
    settings.execution.max_workers = options.workers
    settings.watching.server_timeout = options.watch_timeout_seconds
    settings.watching.client_timeout = options.watch_timeout_seconds + 30

    def after_local_build(namespace: str, name: str) -> None:
        _sync_build(memo.ctx, namespace, name)

    ctx = make_context(api_client_from_environment(), options, on_local_build_done=after_local_build)
    index: kopf.Index[Any, str] = kwargs["environments_by_hash"]  # every index, by name; Kopf keeps it current
    ctx.environments_by_hash = lambda namespace, value: list(index.get((namespace, value), []))
    memo.ctx = ctx
    if options.webhook_enabled:
        server = _webhook_server(ctx)
        # Every review passes envkiln's check first: the namespace is the request's own.
        settings.admission.server = lambda fn: server(scoped_to_request_namespace(fn))
    logger.info("envkiln operator %s: builder=%s registry=%s pull=%s", ctx.instance_id[:8], options.builder,
                options.registry, options.effective_pull_registry)


def _webhook_server(ctx: OperatorContext) -> kopf.WebhookServer:
    """Kopf's server with the certificate envkiln keeps (and renews) in Secrets (WebhookTLS; Kopf
    reloads the file when it changes). With a client CA configured, only callers presenting a
    certificate from it (the API server) complete the TLS handshake."""
    options = ctx.settings
    tls = WebhookTLS(ctx.kube, options).start()
    client_ca = options.webhook_client_ca_file
    return kopf.WebhookServer(addr=options.webhook_listen_address, port=options.webhook_port,
                              certfile=str(tls.pem_file), pkeyfile=str(tls.pem_file), cadata=tls.ca_bundle,
                              host=options.effective_webhook_hosts()[0],
                              verify_mode=ssl.CERT_REQUIRED if client_ca else None, verify_cafile=client_ca)


def shutdown(memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext | None = memo.get("ctx")
    stop = getattr(ctx.builder, "shutdown", None) if ctx is not None else None
    if stop is not None:
        stop()


def mutate_pod(body: kopf.Body, patch: kopf.Patch, dryrun: bool, memo: kopf.Memo, **_: Any) -> None:
    """Set the environment's image (or a scheduling gate) and variables on a new pod."""
    namespace = body.metadata.namespace or body.get("metadata", {}).get("namespace") or "default"
    try:
        changes = admit_pod(memo.ctx, dict(body), namespace, dryrun)
    except WorkloadError as error:
        raise kopf.AdmissionError(str(error), code=400) from None
    for key, value in changes["metadata"].items():
        patch.metadata[key] = value
    for key, value in changes["spec"].items():
        patch.spec[key] = value


def _release(ctx: OperatorContext, namespace: str, name: str) -> None:
    # Only the webhook gates pods: without it, skip the pod listing on every Environment sync.
    if not ctx.settings.webhook_enabled:
        return
    try:
        release_pods(ctx, namespace, name)
    except ApiError as error:
        log.warning("could not release pods waiting for %s/%s: %s", namespace, name, error.reason)


def _namespaced(namespace: str | None) -> str:
    if not namespace:  # Environments and EnvironmentBuilds are namespaced; Kopf always says which
        raise kopf.PermanentError("no namespace")
    return namespace


def environments_by_hash(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[Any, str] | None:
    value = status.get("hash")
    return {(namespace, value): name} if value else None


def _sync_environment(ctx: OperatorContext, namespace: str, name: str) -> float | None:
    """Sync, release the pods waiting for it once it is settled; returns when to retry (None: no need)."""
    result = sync_environment(ctx, namespace, name)
    if result.phase in SETTLED:
        _release(ctx, namespace, name)
    return result.retry_in


def environment_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    retry_in = _sync_environment(memo.ctx, _namespaced(namespace), name)
    if retry_in is not None:
        raise kopf.TemporaryError(f"retrying in {retry_in:.0f}s", delay=retry_in)


def _environment_unsettled(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in SETTLED


def environment_unsettled(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _sync_environment(memo.ctx, _namespaced(namespace), name)  # the timer itself is the retry


def notify_environments(ctx: OperatorContext, namespace: str, definition_hash: str) -> None:
    names = ctx.environments_by_hash(namespace, definition_hash) if ctx.environments_by_hash else None
    if names is None:
        names = [e["metadata"]["name"] for e in ctx.kube.list(ENVIRONMENTS, namespace)
                 if (e.get("status") or {}).get("hash") == definition_hash]
    for name in names:
        try:
            sync_environment(ctx, namespace, name)
            _release(ctx, namespace, name)
        except ApiError as error:
            log.warning("could not update Environment %s/%s: %s", namespace, name, error.reason)


def _sync_build(ctx: OperatorContext, namespace: str, name: str) -> None:
    result = sync_build(ctx, namespace, name)
    if result.changed_to_terminal:
        build = ctx.kube.get(BUILDS, namespace, name)
        if build is not None:
            notify_environments(ctx, namespace, build["spec"]["hash"])


def build_created(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _sync_build(memo.ctx, _namespaced(namespace), name)


def _build_unsettled(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL


def build_progress(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _sync_build(memo.ctx, _namespaced(namespace), name)


def build_event(type: str, namespace: str | None, spec: kopf.Spec, status: kopf.Status, memo: kopf.Memo,
                **_: Any) -> None:
    # Covers finishes recorded by another replica or before a restart.
    if type != "DELETED" and status.get("phase") in TERMINAL and spec.get("hash"):
        notify_environments(memo.ctx, _namespaced(namespace), spec["hash"])


def build_job_event(type: str, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        return
    _sync_build(memo.ctx, _namespaced(namespace), labels[LABEL_BUILD])
