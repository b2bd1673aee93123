"""Kopf handlers: thin wrappers that call the plain reconcile functions.

Nothing happens at import: `register(settings, registry)` puts the handlers on a Kopf registry
(the webhook comes from the settings), and `envkiln run` calls it once, then
starts Kopf with the settings in the operator's memo. The startup handler builds the operator
context from them and keeps it in the memo (`memo.ctx`), which Kopf copies into every object's
memo; handlers take it from there. No module state.

Handlers are sync functions on purpose: the `kubernetes` client blocks, and Kopf runs sync
handlers in its thread pool instead of on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

import kopf

from envkiln.adapters.kube import ApiError, api_message
from envkiln.adapters.kubeclient import api_client_from_environment
from envkiln.adapters.webhookcert import WebhookTLS
from envkiln.core.decisions.resync import (
    SETTLED,
    build_finished_event,
    build_needs_sync,
    build_unsettled,
    due,
    environment_needs_sync,
    environment_unsettled,
    follows_git_ref,
    watched_base,
)
from envkiln.core.names import (
    ANNOTATION_SIGNATURE,
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
from envkiln.core.workloads import WorkloadError
from envkiln.reconcile.buildsync import sync_build
from envkiln.reconcile.context import OperatorContext, make_context
from envkiln.reconcile.envsync import check_bases, sync_environment
from envkiln.reconcile.webhook import admit_pod_counted, release_pods, scoped_to_request_namespace

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
        kopf.on.mutate("v1", "pods", id="envkiln-environment", operations=["CREATE"], side_effects=True,
                       labels={LABEL_ENVIRONMENT: kopf.PRESENT}, registry=registry)(mutate_pod)
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
    memo.resync = Resync()
    memo.peering = PeeringState.attach()
    memo.executor = settings.execution.executor
    indexes = memo.indexes = Indexes()

    def after_local_build(namespace: str, name: str) -> None:
        _build(memo, namespace, name)

    # Handler threads, the resync and the builder share the client's connections.
    ctx = make_context(api_client_from_environment(options.workers + 4), options,
                       on_local_build_done=after_local_build)
    ctx.environments_by_hash = indexes.environments_with
    # Every EnvironmentBuild before any event is handled, so that an Environment finds its build in
    # memory from the start; the build watch keeps the index current from then on.
    try:
        for build in ctx.kube.list_in(BUILDS, options.namespaces):
            indexes.note_build(build["metadata"]["namespace"], build["metadata"]["name"], build)
    except ApiError as error:  # then builds are read (409 on create) until the watch brings them
        logger.warning("could not list EnvironmentBuilds at start: %s", api_message(error))
    memo.ctx = ctx
    if options.metrics_port:
        ctx.metrics.serve(options.metrics_port)
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
        changes = admit_pod_counted(memo.ctx, dict(body), namespace, dryrun)
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


class Indexes:
    """What the handlers keep in memory from the watch events: every EnvironmentBuild (as the API
    server last sent it: its signature, spec and status, which is all an Environment needs to
    follow it), and of the Environments their hash and whether they are unsettled.

    Not Kopf indexes: Kopf holds back every handler until each listed object is indexed, inside
    the object's worker, so with fewer workers than listed objects (`worker_limit`) it never
    starts. Written on the event loop (async handlers), read from handler threads: one lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builds: dict[tuple[str, str], dict[str, Any]] = {}
        self._hash_of: dict[tuple[str, str], str] = {}
        self._by_hash: dict[tuple[str, str], set[str]] = {}
        self._unsettled: set[tuple[str, str]] = set()
        self._bases: dict[tuple[str, str], tuple[str, str | None]] = {}  # -> (base reference, built-on digest)
        self._git: set[tuple[str, str]] = set()  # Environments following a git branch or tag

    def note_build(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """The build as seen in an event (None: deleted)."""
        with self._lock:
            if body is None:
                self._builds.pop((namespace, name), None)
            else:
                self._builds[(namespace, name)] = _trimmed_build(body)

    def build(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._builds.get((namespace, name))

    def builds(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._builds.values())

    def unsettled_builds(self) -> list[tuple[str, str]]:
        with self._lock:
            return [key for key, build in self._builds.items() if build_unsettled(build["status"])]

    def note_environment(self, namespace: str, name: str, status: Mapping[str, Any] | None,
                         spec: Mapping[str, Any] | None = None) -> None:
        """The Environment's status (and spec) as seen in an event (None: deleted)."""
        key = (namespace, name)
        value = (status or {}).get("hash")
        base = watched_base(spec or {}, status or {}) if status is not None else None
        with self._lock:
            if base is not None and status is not None:
                self._bases[key] = (base, status.get("baseImageDigest"))
            else:
                self._bases.pop(key, None)
            if status is not None and spec is not None and follows_git_ref(spec):
                self._git.add(key)
            else:
                self._git.discard(key)
            old = self._hash_of.get(key)
            if old != value and old is not None:
                names = self._by_hash.get((namespace, old))
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self._by_hash[(namespace, old)]
                del self._hash_of[key]
            if value and status is not None:
                self._hash_of[key] = value
                self._by_hash.setdefault((namespace, value), set()).add(name)
            if status is not None and environment_unsettled(status):
                self._unsettled.add(key)
            else:
                self._unsettled.discard(key)

    def environments_with(self, namespace: str, definition_hash: str) -> list[str]:
        with self._lock:
            return sorted(self._by_hash.get((namespace, definition_hash), ()))

    def unsettled_environments(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._unsettled)

    def base_images(self) -> dict[str, list[tuple[str, str, str | None]]]:
        """base reference -> the Environments built on it: (namespace, name, the digest built on)."""
        with self._lock:
            found: dict[str, list[tuple[str, str, str | None]]] = {}
            for (namespace, name), (base, digest) in self._bases.items():
                found.setdefault(base, []).append((namespace, name, digest))
            return found

    def git_environments(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._git)


def _trimmed_build(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                     "resourceVersion": meta.get("resourceVersion"), "generation": meta.get("generation"),
                     "labels": dict(meta.get("labels") or {}),
                     "annotations": {k: v for k, v in annotations.items() if k == ANNOTATION_SIGNATURE}},
        "spec": dict(body.get("spec") or {}), "status": _without_lock_text(body.get("status") or {}),
    }


def _without_lock_text(status: Mapping[str, Any]) -> dict[str, Any]:
    """A build's status without the lock's text (kilobytes per build; Environments need its summary)."""
    lock = status.get("lock")
    if not isinstance(lock, Mapping) or "text" not in lock:
        return dict(status)
    return {**status, "lock": {k: v for k, v in lock.items() if k != "text"}}


class Resync:
    """Retries the handlers asked for ((kind, namespace, name) -> when, monotonic seconds).
    Thread-safe: handlers run in Kopf's threads, the resync loop on its event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[tuple[str, str, str], float] = {}

    def retry(self, kind: str, namespace: str, name: str, delay: float) -> None:
        when = time.monotonic() + delay
        with self._lock:
            key = (kind, namespace, name)
            self._due[key] = min(when, self._due.get(key, when))

    def take_due(self, now: float) -> list[tuple[str, str, str]]:
        with self._lock:
            keys = due(self._due, now)
            for key in keys:
                del self._due[key]
        return keys

    def __len__(self) -> int:
        return len(self._due)


class PeeringState(logging.Filter):
    """Whether Kopf paused this replica in favour of another (peering). Kopf stops its watches
    then, but tells nothing else: the resync loop, which is not a Kopf task, learns it from Kopf's
    own peering log records (the messages the peering tests look for too)."""

    PAUSING = ("Pausing operations in favour of", "Pausing all operators")
    RESUMING = "Resuming operations"

    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(self.PAUSING):
            self.paused = True
        elif message.startswith(self.RESUMING):
            self.paused = False
        return True

    @classmethod
    def attach(cls) -> PeeringState:
        state = cls()
        peering = logging.getLogger("kopf._core.engines.peering")
        if peering.getEffectiveLevel() > logging.INFO:
            peering.setLevel(logging.INFO)  # the records must be made for the filter to see them
        peering.addFilter(state)
        return state


async def start_resync(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    memo.resync_task = asyncio.create_task(resync_forever(memo, settings.execution.executor), name="envkiln resync")


async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task: asyncio.Task[None] | None = memo.get("resync_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def resync_forever(memo: kopf.Memo, executor: concurrent.futures.Executor) -> None:
    """Every `env_sync_seconds` the unsettled Environments, every `build_sync_seconds` the
    unfinished EnvironmentBuilds, and at any tick the retries that are due: one pass at a time, in
    one of the handler threads. The indexes are read here, on the event loop Kopf updates them on."""
    options: OperatorSettings = memo.settings
    loop = asyncio.get_running_loop()
    now = time.monotonic()
    next_envs, next_builds = now + options.env_sync_seconds, now + options.build_sync_seconds
    # The first base check soon after start (the latest digests live in memory only).
    next_bases, next_git = now + min(options.base_check_seconds, 5.0), now + options.git_ref_ttl_seconds
    tick = min(1.0, options.env_sync_seconds, options.build_sync_seconds)
    while True:
        await asyncio.sleep(tick)
        if memo.peering.paused:  # another replica acts (Kopf stopped this one's watches and timers too)
            continue
        now = time.monotonic()
        work = memo.resync.take_due(now)
        indexes: Indexes = memo.indexes
        if now >= next_envs:
            next_envs = now + options.env_sync_seconds
            work += [("env", namespace, name) for namespace, name in indexes.unsettled_environments()]
        if now >= next_builds:
            next_builds = now + options.build_sync_seconds
            work += [("build", namespace, name) for namespace, name in indexes.unsettled_builds()]
        if now >= next_git and options.git_ref_ttl_seconds > 0:
            next_git = now + options.git_ref_ttl_seconds
            work += [("env", namespace, name) for namespace, name in indexes.git_environments()]
        if now >= next_bases:
            next_bases = now + options.base_check_seconds
            try:
                moved = await loop.run_in_executor(executor, check_bases, memo.ctx, indexes.base_images())
            except Exception:
                log.exception("base image check failed")
            else:
                work += [("env", namespace, name) for namespace, name in moved]
        if work:
            try:
                await loop.run_in_executor(executor, _resync, memo, list(dict.fromkeys(work)))
            except Exception:  # never end the loop: the next pass tries again
                log.exception("periodic resync failed")


def _resync(memo: kopf.Memo, work: list[tuple[str, str, str]]) -> None:
    for kind, namespace, name in work:
        if kind == "env":
            _environment(memo, namespace, name)
        else:
            _build(memo, namespace, name)


def _environment(memo: kopf.Memo, namespace: str, name: str, env: dict[str, Any] | None = None) -> None:
    """Sync one Environment; release the pods waiting for it once it is settled; schedule the retry
    it asks for. Failures are logged and retried (as Kopf retried a handler's errors)."""
    ctx: OperatorContext = memo.ctx
    try:
        result = sync_environment(ctx, namespace, name, env, memo.indexes.build)
    except Exception as error:
        retry = float(ctx.settings.registry_retry_seconds)
        if isinstance(error, ApiError):
            log.warning("Environment %s/%s: %s; retrying in %.0fs", namespace, name, api_message(error), retry)
        else:
            log.exception("Environment %s/%s failed; retrying in %.0fs", namespace, name, retry)
        ctx.metrics.reconcile_error("Environment", error)
        memo.resync.retry("env", namespace, name, retry)
        return
    if result.phase in SETTLED:
        _release(ctx, namespace, name)
    if result.retry_in is not None:
        memo.resync.retry("env", namespace, name, result.retry_in)


def _build(memo: kopf.Memo, namespace: str, name: str) -> None:
    ctx: OperatorContext = memo.ctx
    try:
        result = sync_build(ctx, namespace, name, memo.indexes.builds)
    except Exception as error:
        retry = ctx.settings.build_sync_seconds
        if isinstance(error, ApiError):
            log.warning("EnvironmentBuild %s/%s: %s; retrying in %.0fs", namespace, name, api_message(error), retry)
        else:
            log.exception("EnvironmentBuild %s/%s failed; retrying in %.0fs", namespace, name, retry)
        ctx.metrics.reconcile_error("EnvironmentBuild", error)
        memo.resync.retry("build", namespace, name, retry)
        return
    if result.retry_in is not None:
        memo.resync.retry("build", namespace, name, result.retry_in)


async def environment_changed(type: str | None, namespace: str | None, name: str, body: kopf.Body,
                              meta: kopf.Meta, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    """Every event of an Environment: note it in the indexes (on the event loop, no thread); if it
    is new, its spec changed or it is seen at start, reconcile it from the event's body in a
    handler thread (its status write is guarded by that body's resourceVersion; a conflict reads
    it again)."""
    namespace = _namespaced(namespace)
    memo.indexes.note_environment(namespace, name, None if type == "DELETED" else status, body.get("spec"))
    memo.ctx.metrics.environment_phase(namespace, name, status.get("phase"), deleted=type == "DELETED")
    if environment_needs_sync(type, meta, status):
        await asyncio.get_running_loop().run_in_executor(memo.executor, _environment, memo, namespace, name,
                                                         dict(body))


def notify_environments(memo: kopf.Memo, namespace: str, definition_hash: str) -> None:
    ctx: OperatorContext = memo.ctx
    names = ctx.environments_by_hash(namespace, definition_hash) if ctx.environments_by_hash else None
    if names is None:
        names = [e["metadata"]["name"] for e in ctx.kube.list(ENVIRONMENTS, namespace)
                 if (e.get("status") or {}).get("hash") == definition_hash]
    for name in names:
        _environment(memo, namespace, name)


async def build_event(type: str | None, namespace: str | None, name: str, body: kopf.Body, meta: kopf.Meta,
                      spec: kopf.Spec, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    namespace = _namespaced(namespace)
    memo.indexes.note_build(namespace, name, None if type == "DELETED" else body)
    loop = asyncio.get_running_loop()
    if build_finished_event(type, status):
        # Covers finishes recorded by this process, by another replica or before a restart.
        if spec.get("hash"):
            await loop.run_in_executor(memo.executor, notify_environments, memo, namespace, spec["hash"])
    elif build_needs_sync(type, meta, status):
        await loop.run_in_executor(memo.executor, _build, memo, namespace, name)


def build_job_event(type: str, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        return
    _build(memo, _namespaced(namespace), labels[LABEL_BUILD])
