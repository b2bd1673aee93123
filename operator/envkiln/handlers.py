"""Kopf handlers: thin wrappers that call the plain reconcile functions.

Handlers are sync functions on purpose: the `kubernetes` client blocks, and Kopf runs
sync handlers in its thread pool instead of on the event loop.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client, config

from envkiln import GROUP, VERSION
from envkiln.buildsync import TERMINAL, sync_build
from envkiln.context import OperatorContext, make_context
from envkiln.envsync import sync_environment
from envkiln.kube import BUILDS, ENVIRONMENTS
from envkiln.settings import OperatorSettings
from envkiln.webhook import admit_pod, release_pods
from envkiln.webhookcert import ensure_certificate, patch_ca_bundle
from envkiln.workloads import LABEL, WorkloadError

log = logging.getLogger("envkiln")
ENV_RESOURCE = (GROUP, VERSION, ENVIRONMENTS)
BUILD_RESOURCE = (GROUP, VERSION, BUILDS)
try:
    _IMPORT_SETTINGS = OperatorSettings.from_env()
except ValueError:  # reported clearly by `envkiln run` / the startup handler
    _IMPORT_SETTINGS = OperatorSettings()
BUILD_SYNC_SECONDS = _IMPORT_SETTINGS.build_sync_seconds
ENV_SYNC_SECONDS = _IMPORT_SETTINGS.env_sync_seconds

# Set at startup. Kopf's memo is per object; the context is per operator process.
_STATE: dict[str, Any] = {}


def operator_context() -> OperatorContext:
    return _STATE["ctx"]


def api_client_from_environment() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    operator_settings = OperatorSettings.from_env()
    # Kopf's own state lives in annotations under our prefix (not in status, which the
    # CRD schema would prune).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="envkiln.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="envkiln.dev", key="last-handled-configuration")
    settings.persistence.finalizer = "envkiln.dev/finalizer"
    settings.posting.level = logging.WARNING
    settings.peering.lifetime = operator_settings.peering_lifetime_seconds
    settings.peering.stealth = False
    settings.execution.max_workers = operator_settings.workers
    settings.watching.server_timeout = operator_settings.watch_timeout_seconds
    settings.watching.client_timeout = operator_settings.watch_timeout_seconds + 30
    ctx = make_context(api_client_from_environment(), operator_settings, on_local_build_done=_after_local_build)
    _STATE["ctx"] = ctx
    if operator_settings.webhook_enabled:
        settings.admission.server = _webhook_server(ctx)
    logger.info("envkiln operator %s: builder=%s registry=%s pull=%s", ctx.instance_id[:8], operator_settings.builder,
                operator_settings.registry, operator_settings.effective_pull_registry)


def _webhook_server(ctx: OperatorContext) -> kopf.WebhookServer:
    options = ctx.settings
    certificate = ensure_certificate(ctx.kube, options.operator_namespace, options.webhook_cert_secret,
                                     options.effective_webhook_hosts())
    directory = Path(tempfile.mkdtemp(prefix="envkiln-webhook-"))
    (directory / "tls.crt").write_bytes(certificate.cert_pem)
    (directory / "tls.key").write_bytes(certificate.key_pem)
    (directory / "tls.key").chmod(0o600)
    if options.webhook_configuration:
        patch_ca_bundle(ctx.kube, options.webhook_configuration, certificate.ca_pem)
    return kopf.WebhookServer(addr=options.webhook_listen_address, port=options.webhook_port,
                              certfile=str(directory / "tls.crt"), pkeyfile=str(directory / "tls.key"),
                              cadata=certificate.ca_pem, host=options.effective_webhook_hosts()[0])


def mutate_pod(body: kopf.Body, patch: kopf.Patch, dryrun: bool, **_: Any) -> None:
    """Set the environment's image (or a scheduling gate) and variables on a new pod."""
    namespace = body.metadata.namespace or body.get("metadata", {}).get("namespace") or "default"
    try:
        changes = admit_pod(operator_context(), dict(body), namespace, dryrun)
    except WorkloadError as error:
        raise kopf.AdmissionError(str(error), code=400) from None
    for key, value in changes["metadata"].items():
        patch.metadata[key] = value
    for key, value in changes["spec"].items():
        patch.spec[key] = value


if _IMPORT_SETTINGS.webhook_enabled:
    # Registered only with a server to serve it: Kopf refuses admission handlers without one.
    kopf.on.mutate("v1", "pods", id="envkiln-environment", operations=["CREATE"], side_effects=True,
                   labels={LABEL: kopf.PRESENT})(mutate_pod)


def _release(namespace: str, name: str) -> None:
    # Only the webhook gates pods: without it, skip the pod listing on every Environment sync.
    if not operator_context().settings.webhook_enabled:
        return
    try:
        release_pods(operator_context(), namespace, name)
    except client.ApiException as error:
        log.warning("could not release pods waiting for %s/%s: %s", namespace, name, error.reason)


@kopf.on.cleanup()
def shutdown(**_: Any) -> None:
    ctx = _STATE.get("ctx")
    if ctx is not None and hasattr(ctx.builder, "shutdown"):
        ctx.builder.shutdown()


@kopf.index(*ENV_RESOURCE)
def environments_by_hash(namespace: str, name: str, status: kopf.Status, **_: Any) -> dict | None:
    value = status.get("hash")
    return {(namespace, value): name} if value else None


def _remember_index(index: kopf.Index) -> None:
    ctx = _STATE.get("ctx")
    if ctx is not None and ctx.environments_by_hash is None:
        ctx.environments_by_hash = lambda namespace, value: list(index.get((namespace, value), []))


def _sync_environment(namespace: str, name: str) -> None:
    result = sync_environment(operator_context(), namespace, name)
    if result.phase in ("Ready", "Failed"):
        _release(namespace, name)
    if result.retry_in is not None:
        raise kopf.TemporaryError(f"retrying in {result.retry_in:.0f}s", delay=result.retry_in)


@kopf.on.resume(*ENV_RESOURCE)
@kopf.on.create(*ENV_RESOURCE)
@kopf.on.update(*ENV_RESOURCE, field="spec")
def environment_changed(namespace: str, name: str, environments_by_hash: kopf.Index, **_: Any) -> None:
    _remember_index(environments_by_hash)
    _sync_environment(namespace, name)


def _environment_unsettled(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in ("Ready", "Failed")


@kopf.timer(*ENV_RESOURCE, interval=ENV_SYNC_SECONDS, initial_delay=ENV_SYNC_SECONDS, when=_environment_unsettled)
def environment_unsettled(namespace: str, name: str, **_: Any) -> None:
    # A safety net: builds and registry recoveries normally push updates sooner.
    result = sync_environment(operator_context(), namespace, name)
    if result.phase in ("Ready", "Failed"):
        _release(namespace, name)


def notify_environments(namespace: str, definition_hash: str) -> None:
    ctx = operator_context()
    names = ctx.environments_by_hash(namespace, definition_hash) if ctx.environments_by_hash else None
    if names is None:
        names = [e["metadata"]["name"] for e in ctx.kube.list(ENVIRONMENTS, namespace)
                 if (e.get("status") or {}).get("hash") == definition_hash]
    for name in names:
        try:
            sync_environment(ctx, namespace, name)
            _release(namespace, name)
        except client.ApiException as error:
            log.warning("could not update Environment %s/%s: %s", namespace, name, error.reason)


def _sync_build(namespace: str, name: str) -> None:
    result = sync_build(operator_context(), namespace, name)
    if result.changed_to_terminal:
        build = operator_context().kube.get(BUILDS, namespace, name)
        if build is not None:
            notify_environments(namespace, build["spec"]["hash"])


def _after_local_build(namespace: str, name: str) -> None:
    _sync_build(namespace, name)


@kopf.on.resume(*BUILD_RESOURCE)
@kopf.on.create(*BUILD_RESOURCE)
def build_created(namespace: str, name: str, environments_by_hash: kopf.Index, **_: Any) -> None:
    _remember_index(environments_by_hash)
    _sync_build(namespace, name)


def _build_unsettled(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL


@kopf.timer(*BUILD_RESOURCE, interval=BUILD_SYNC_SECONDS, when=_build_unsettled)
def build_progress(namespace: str, name: str, **_: Any) -> None:
    _sync_build(namespace, name)


@kopf.on.event(*BUILD_RESOURCE)
def build_event(type: str | None, namespace: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> None:
    # Covers finishes recorded by another replica or before a restart.
    if type != "DELETED" and status.get("phase") in TERMINAL and spec.get("hash"):
        notify_environments(namespace, spec["hash"])


@kopf.on.event("batch", "v1", "jobs", labels={"envkiln.dev/build": kopf.PRESENT})
def build_job_event(type: str | None, namespace: str, labels: kopf.Labels, **_: Any) -> None:
    if type == "DELETED":
        return
    _sync_build(namespace, labels["envkiln.dev/build"])
