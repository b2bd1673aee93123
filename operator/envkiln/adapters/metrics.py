"""The operator's Prometheus metrics (docs/metrics.md), served on a port of their own.

`Metrics` owns its `CollectorRegistry` (never prometheus_client's global one), so each operator
context, and each test, has its own series. The reconcilers call one method where a fact is
known; every method is O(1) and thread-safe (handler threads, the resync and the webhook call
them concurrently).

Every label takes its value from a fixed set, so the number of series is bounded whatever tenants
write: a registry host is a label of its own only when the operator's settings name it (or it is one
of a few public registries), else `other`; no label holds a namespace, a name or a message.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from envkiln.core.conditions import from_iso

# Builds take seconds (a cache-warm micromamba layer) to an hour (ENVKILN_BUILD_DEADLINE_SECONDS).
BUILD_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
# One manifest HEAD (plus a token fetch) within ENVKILN_REGISTRY_TIMEOUT_SECONDS (10s by default).
LOOKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))
BUILD_QUEUED, BUILD_RUNNING = "Pending", "Building"
BUILD_FINISHED = frozenset({"Succeeded", "Failed"})
NO_PHASE = "Unknown"
# The values each label may take; anything else is counted as OTHER (or NO_PHASE).
OTHER = "other"
BUILDERS = frozenset({"kaniko", "buildah", "local"})
PHASES = frozenset({"Pending", "Building", "Ready", "Failed", NO_PHASE})
ADMISSION_RESULTS = frozenset({"image", "gated", "refused"})
KINDS = frozenset({"Environment", "EnvironmentBuild"})
# Registries base and bring-your-own images commonly come from: labelled by host like the configured ones.
PUBLIC_REGISTRIES = frozenset({"docker.io", "ghcr.io", "quay.io", "mcr.microsoft.com", "gcr.io", "registry.k8s.io",
                               "nvcr.io", "public.ecr.aws"})


# The API server's answers a reconcile can meet; other statuses are counted by class (api_4xx...).
API_STATUSES = frozenset({400, 401, 403, 404, 409, 410, 413, 422, 429, 500, 502, 503, 504})


def error_reason(error: BaseException) -> str:
    """A bounded label for an exception: the HTTP status of an API error (a known one, else its class),
    else the exception's class name (chosen by the code, never by what a tenant writes)."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and type(error).__name__ == "ApiException":
        if status in API_STATUSES:
            return f"api_{status}"
        return f"api_{status // 100}xx" if 100 <= status <= 599 else f"api_{OTHER}"
    return type(error).__name__


def bounded(value: str | None, allowed: frozenset[str], otherwise: str = OTHER) -> str:
    return value if value in allowed else otherwise


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, registries: Iterable[str] = ()) -> None:
        """`registries`: the registry hosts the settings name (push, pull, base-image registries); they
        and PUBLIC_REGISTRIES are labelled by host, every other host as `other`."""
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registries = frozenset(registries) | PUBLIC_REGISTRIES
        r = self.registry
        self.build_duration = Histogram(
            "envkiln_build_duration_seconds", "Time from a build's start (status.startTime) to its end, by builder "
            "and outcome (succeeded, failed).", ["builder", "outcome"], buckets=BUILD_BUCKETS, registry=r)
        self.builds_in_flight = Gauge(
            "envkiln_builds_in_flight", "EnvironmentBuilds this operator follows in phase Building.", registry=r)
        self.builds_queued = Gauge(
            "envkiln_builds_queued", "EnvironmentBuilds waiting for a build slot (phase Pending).", registry=r)
        self.cache_hits = Counter(
            "envkiln_cache_hits", "Environments that became Ready from an existing build (cacheHit).", registry=r)
        self.cache_misses = Counter(
            "envkiln_cache_misses", "EnvironmentBuilds created because no build of the hash existed.", registry=r)
        self.registry_lookup_duration = Histogram(
            "envkiln_registry_lookup_duration_seconds", "Registry manifest lookups that reached the registry "
            "(answers from the cache are not timed), by registry host (configured or public; else other).",
            ["registry"], buckets=LOOKUP_BUCKETS,
            registry=r)
        self.registry_lookup_errors = Counter(
            "envkiln_registry_lookup_errors", "Registry lookups that failed (registry unavailable, refused, timed "
            "out), by registry host (configured or public; else other).", ["registry"], registry=r)
        self.reconcile_errors = Counter(
            "envkiln_reconcile_errors", "Reconciles that raised and are retried, by kind (Environment, "
            "EnvironmentBuild) and reason (api_<HTTP status> or the exception's class).", ["kind", "reason"],
            registry=r)
        self.webhook_admissions = Counter(
            "envkiln_webhook_admissions", "Pods seen by the admission webhook, by result (image: the image was "
            "set; gated: a scheduling gate waits for the environment; refused).", ["result"], registry=r)
        self.environments = Gauge(
            "envkiln_environments", "Environments by status.phase (Unknown: no status yet).", ["phase"], registry=r)
        self._lock = threading.Lock()
        self._queued: set[tuple[str, str]] = set()
        self._running: set[tuple[str, str]] = set()
        self._phase_of: dict[tuple[str, str], str] = {}
        self._phases: Tally[str] = Tally()

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics on `address:port` from a daemon thread."""
        start_http_server(port, addr=address, registry=self.registry)

    # --- builds (buildsync) ------------------------------------------------------------------------

    def build_progress(self, build: Mapping[str, Any], phase: str | None, finished: bool,
                       now: datetime | None = None) -> None:
        """A build's phase after a sync step; `finished`: this step ended it (observed once)."""
        meta = build.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        with self._lock:
            self._queued.discard(key)
            self._running.discard(key)
            if phase == BUILD_QUEUED:
                self._queued.add(key)
            elif phase == BUILD_RUNNING:
                self._running.add(key)
            self.builds_queued.set(len(self._queued))
            self.builds_in_flight.set(len(self._running))
        if not finished or phase not in BUILD_FINISHED:
            return
        started = from_iso((build.get("status") or {}).get("startTime"))
        if started is None:
            return  # refused before it started (an untrusted build): nothing ran
        builder = bounded(str((build.get("spec") or {}).get("builder")), BUILDERS)
        seconds = max(0.0, ((now or datetime.now(UTC)) - started).total_seconds())
        self.build_duration.labels(builder=builder, outcome=phase.lower()).observe(seconds)

    # --- environments (envsync, the handlers' watch events) ----------------------------------------

    def environment_synced(self, old_phase: str | None, new_phase: str, cache_hit: bool | None) -> None:
        """An Environment's status written: a cache hit when it became Ready from an existing build."""
        if new_phase == "Ready" and old_phase != "Ready" and cache_hit:
            self.cache_hits.inc()

    def build_created(self) -> None:
        self.cache_misses.inc()

    def environment_phase(self, namespace: str, name: str, phase: str | None, deleted: bool = False) -> None:
        """The phase an Environment's watch event shows (deleted: forget it). O(1): the per-phase
        gauge moves from the object's last known phase to this one."""
        key = (namespace, name)
        new = None if deleted else bounded(phase, PHASES, NO_PHASE)
        with self._lock:
            old = self._phase_of.pop(key, None)
            if new is not None:
                self._phase_of[key] = new
            if old == new:
                return
            if old is not None:
                self._phases[old] -= 1
                self.environments.labels(phase=old).set(self._phases[old])
            if new is not None:
                self._phases[new] += 1
                self.environments.labels(phase=new).set(self._phases[new])

    # --- registry, errors, webhook -----------------------------------------------------------------

    def registry_label(self, registry: str) -> str:
        """The host itself when the settings name it or it is a public registry; else `other` (tenants
        choose the hosts of their images, and each label value would be a series of its own)."""
        return bounded(registry, self.registries)

    def registry_lookup(self, registry: str, seconds: float) -> None:
        self.registry_lookup_duration.labels(registry=self.registry_label(registry)).observe(seconds)

    def registry_error(self, registry: str) -> None:
        self.registry_lookup_errors.labels(registry=self.registry_label(registry)).inc()

    def reconcile_error(self, kind: str, error: BaseException) -> None:
        self.reconcile_errors.labels(kind=bounded(kind, KINDS), reason=error_reason(error)).inc()

    def admission(self, result: str) -> None:
        self.webhook_admissions.labels(result=bounded(result, ADMISSION_RESULTS)).inc()
