"""Kopf registration: which events the operator reacts to, and one-line delegators to the work
(envkiln.runtime.resync), the webhook (envkiln.reconcile.webhook) and the indexes.

Nothing happens at import: `register(settings, registry)` puts the handlers on a Kopf registry
(the webhook comes from the settings), and `envkiln run` calls it once, then starts Kopf with the
settings in the operator's memo. The startup handler builds the one runtime object
(envkiln.runtime.state.Runtime) and keeps it in the memo (`memo.runtime`), which Kopf copies into
every object's memo; handlers take it from there. No module state.

Handlers are sync functions on purpose: the `kubernetes` client blocks, and Kopf runs sync
handlers in its thread pool instead of on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import kopf

from envkiln.adapters.kube import ApiError, api_message
from envkiln.adapters.kubeclient import api_client_from_environment
from envkiln.core.decisions.anonymous import waiting_inline_pod
from envkiln.core.decisions.resync import build_finished_event, build_needs_sync, environment_needs_sync
from envkiln.core.names import (
    BUILDS,
    ENVIRONMENTS,
    FINALIZER,
    GROUP,
    KOPF_PREFIX,
    LABEL_BUILD,
    LABEL_ENVIRONMENT,
    VERSION,
)
from envkiln.core.settings import OperatorSettings
from envkiln.core.workloads import SPEC_ANNOTATION, WorkloadError
from envkiln.reconcile.context import OperatorContext, make_context
from envkiln.reconcile.webhook import admit_pod_counted, scoped_to_request_namespace
from envkiln.runtime.resync import build, environment, gated_pod, notify_environments, resync_forever
from envkiln.runtime.state import PeeringState, Runtime
from envkiln.runtime.webhookserver import ClosingWebhookServer

log = logging.getLogger("envkiln")
ENV_RESOURCE = (GROUP, VERSION, ENVIRONMENTS)
BUILD_RESOURCE = (GROUP, VERSION, BUILDS)


def register(settings: OperatorSettings, registry: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
    """Every handler, on `registry`. The only place that decides what the operator reacts to.

    Environments and EnvironmentBuilds are followed with `on.event` handlers that decide for
    themselves whether an event needs work (envkiln.core.decisions.resync): Kopf then writes nothing
    onto them (no progress or diff-base annotations, no finalizer), so a cache hit costs one status
    write and one Event. Instead of a Kopf timer per object, one periodic resync revisits the
    unfinished objects from in-memory indexes (`Indexes`, kept by these handlers), and retries the
    objects that asked for it.
    """
    # Kopf's own API access logs in as the kubernetes client does (kubeconfig or in-cluster).
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.startup(registry=registry)(start_resync)
    kopf.on.cleanup(registry=registry)(stop_resync)
    kopf.on.cleanup(registry=registry)(shutdown)
    kopf.on.event(*ENV_RESOURCE, registry=registry)(environment_changed)
    kopf.on.event(*BUILD_RESOURCE, registry=registry)(build_event)
    # Kopf writes nothing onto Jobs watched with on.event and a label filter.
    kopf.on.event("batch", "v1", "jobs", labels={LABEL_BUILD: kopf.PRESENT}, registry=registry)(build_job_event)
    if settings.webhook_enabled:
        # Registered only with a server to serve it: Kopf refuses admission handlers without one.
        # No side effects: the webhook reads, decides and answers (a dry run is answered alike).
        kopf.on.mutate("v1", "pods", id="envkiln-environment", operations=["CREATE"], side_effects=False,
                       labels={LABEL_ENVIRONMENT: kopf.PRESENT}, registry=registry)(mutate_pod)
        # Pods with an inline spec, as admitted: the operator makes their anonymous Environment.
        kopf.on.event("v1", "pods", labels={LABEL_ENVIRONMENT: kopf.PRESENT},
                      annotations={SPEC_ANNOTATION: kopf.PRESENT}, registry=registry)(pod_event)
    return registry


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """No last-handled state: envkiln has no Kopf change handlers (only `on.event`, which decide
    from `metadata.generation` and `status.observedGeneration`), yet Kopf builds the state for
    every watch event (a deep copy of the whole object) and would keep it in an annotation."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Startup: Kopf's settings, then the operator context (once per process) into the memo."""
    options: OperatorSettings = memo.get("settings") or OperatorSettings.from_env()
    memo.settings = options
    # Kopf's own state lives in annotations under our prefix (not in status, which the
    # CRD schema would prune).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING
    settings.peering.lifetime = options.peering_lifetime_seconds
    settings.peering.stealth = False
    settings.execution.max_workers = options.workers
    # Bounded per-object workers that exit soon after their object's last event: an unbounded
    # number of them (one per object with recent events) is most of Kopf's memory at scale.
    settings.queueing.worker_limit = options.worker_limit
    settings.queueing.idle_timeout = options.worker_idle_seconds
    settings.watching.server_timeout = options.watch_timeout_seconds
    settings.watching.client_timeout = options.watch_timeout_seconds + 30
    settings.watching.chunk_size = options.list_chunk_size or None

    def after_local_build(namespace: str, name: str) -> None:
        build(memo.runtime, namespace, name)

    # Handler threads, the resync, the webhook and the builder share the client's connections.
    connections = options.workers + options.resync_workers + options.webhook_workers + 4
    ctx = make_context(api_client_from_environment(connections), options, on_local_build_done=after_local_build)
    rt = Runtime(options, ctx, settings.execution.executor, peering=PeeringState.attach())
    indexes = rt.indexes
    ctx.environments_by_hash = indexes.environments_with
    ctx.earlier_builds = indexes.earlier_builds
    # Every EnvironmentBuild before any event is handled, so that an Environment finds its build in
    # memory from the start; the build watch keeps the index current from then on.
    try:
        for build in ctx.kube.list_in(BUILDS, options.namespaces):
            indexes.note_build(build["metadata"]["namespace"], build["metadata"]["name"], build)
    except ApiError as error:  # then builds are read (409 on create) until the watch brings them
        logger.warning("could not list EnvironmentBuilds at start: %s", api_message(error))
    memo.runtime = rt
    if options.metrics_port:
        ctx.metrics.serve(options.metrics_port)
    if options.webhook_enabled:
        server = _webhook_server(ctx)
        # Every review passes envkiln's check first: the namespace is the request's own.
        settings.admission.server = lambda fn: server(scoped_to_request_namespace(fn))
    logger.info("envkiln operator %s: builder=%s registry=%s pull=%s", ctx.instance_id[:8], options.builder,
                options.registry, options.effective_pull_registry)


def _webhook_server(ctx: OperatorContext) -> ClosingWebhookServer:
    """Kopf's server (each answer closing its connection) with the certificate envkiln keeps (and
    renews) in Secrets (WebhookTLS; Kopf reloads the file when it changes). With a client CA
    configured, only callers presenting a certificate from it (the API server) complete the TLS
    handshake."""
    from envkiln.adapters.webhookcert import WebhookTLS  # cryptography (8 MiB resident) only with the webhook

    options = ctx.settings
    tls = WebhookTLS(ctx.kube, options).start()
    client_ca = options.webhook_client_ca_file
    return ClosingWebhookServer(addr=options.webhook_listen_address, port=options.webhook_port,
                              certfile=str(tls.pem_file), pkeyfile=str(tls.pem_file), cadata=tls.ca_bundle,
                              host=options.effective_webhook_hosts()[0],
                              verify_mode=ssl.CERT_REQUIRED if client_ca else None, verify_cafile=client_ca)


def shutdown(memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime | None = memo.get("runtime")
    if rt is None:
        return
    stop = getattr(rt.ctx.builder, "shutdown", None)
    if stop is not None:
        stop()
    rt.close()


async def mutate_pod(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Set the environment's image (or a scheduling gate) and variables on a new pod. Reads only,
    on the webhook's own threads, answered within `webhook_answer_seconds`."""
    rt: Runtime = memo.runtime
    namespace = body.metadata.namespace or body.get("metadata", {}).get("namespace") or "default"
    loop = asyncio.get_running_loop()
    try:
        changes = await asyncio.wait_for(
            loop.run_in_executor(rt.webhook, admit_pod_counted, rt.ctx, dict(body), namespace),
            rt.settings.webhook_answer_seconds)
    except WorkloadError as error:
        raise kopf.AdmissionError(str(error), code=400) from None
    except TimeoutError:
        rt.ctx.metrics.admission("refused")
        raise kopf.AdmissionError("envkiln could not look up the pod's environment in time (the API server is "
                                  "slow or busy); create the pod again", code=503) from None
    for key, value in changes["metadata"].items():
        patch.metadata[key] = value
    for key, value in changes["spec"].items():
        patch.spec[key] = value


def _namespaced(namespace: str | None) -> str:
    if not namespace:  # Environments and EnvironmentBuilds are namespaced; Kopf always says which
        raise kopf.PermanentError("no namespace")
    return namespace


async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.resync_task = asyncio.create_task(resync_forever(memo.runtime), name="envkiln resync")


async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task: asyncio.Task[None] | None = memo.get("resync_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def environment_changed(type: str | None, namespace: str | None, name: str, body: kopf.Body,
                              meta: kopf.Meta, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    """Every event of an Environment: note it in the indexes (on the event loop, no thread); if it
    is new, its spec changed or it is seen at start, reconcile it from the event's body in a
    handler thread (its status write is guarded by that body's resourceVersion; a conflict reads
    it again)."""
    rt: Runtime = memo.runtime
    namespace = _namespaced(namespace)
    rt.indexes.note_environment(namespace, name, None if type == "DELETED" else status, body.get("spec"))
    rt.ctx.metrics.environment_phase(namespace, name, status.get("phase"), deleted=type == "DELETED")
    if environment_needs_sync(type, meta, status):
        await asyncio.get_running_loop().run_in_executor(rt.handlers, environment, rt, namespace, name, dict(body))


async def build_event(type: str | None, namespace: str | None, name: str, body: kopf.Body, meta: kopf.Meta,
                      spec: kopf.Spec, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    namespace = _namespaced(namespace)
    rt.indexes.note_build(namespace, name, None if type == "DELETED" else body)
    loop = asyncio.get_running_loop()
    if build_finished_event(type, status):
        # Covers finishes recorded by this process, by another replica or before a restart.
        if spec.get("hash"):
            await loop.run_in_executor(rt.handlers, notify_environments, rt, namespace, spec["hash"])
    elif build_needs_sync(type, meta, status):
        await loop.run_in_executor(rt.handlers, build, rt, namespace, name)


def build_job_event(type: str, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        return
    build(memo.runtime, _namespaced(namespace), labels[LABEL_BUILD])


async def pod_event(type: str | None, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo,
                    **_: Any) -> None:
    """A pod with an inline spec waiting behind the gate, as the API server admitted it: its
    anonymous Environment is made (in the pod's own namespace) by the operator, not the webhook."""
    if type == "DELETED" or not waiting_inline_pod(body):
        return
    rt: Runtime = memo.runtime
    await asyncio.get_running_loop().run_in_executor(rt.handlers, gated_pod, rt, _namespaced(namespace), name,
                                                     dict(body))
