"""envkiln.adapters.metrics: each hook moves the right series, on a registry of its own."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from envkiln.adapters.metrics import Metrics, error_reason
from envkiln.adapters.registryclient import RegistryClient, RegistryUnavailable
from envkiln.core.settings import OperatorSettings

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def build(name: str = "envb-1", start: str | None = "2026-01-01T11:58:00Z", builder: str = "kaniko") -> dict[str, Any]:
    return {"metadata": {"namespace": "team-a", "name": name}, "spec": {"builder": builder},
            "status": {"startTime": start} if start else {}}


Sample = tuple[str, dict[str, str], float | None]  # (sample name, labels, expected value; None: absent)
Hook = Callable[[Metrics], None]


def steps(*hooks: Hook) -> Hook:
    """One hook calling `hooks` in order."""
    def run(metrics: Metrics) -> None:
        for hook in hooks:
            hook(metrics)
    return run


CASES: list[tuple[str, Hook, list[Sample]]] = [
    ("a queued build", lambda m: m.build_progress(build(), "Pending", False),
     [("envkiln_builds_queued", {}, 1), ("envkiln_builds_in_flight", {}, 0)]),
    ("queued, then started", steps(lambda m: m.build_progress(build(), "Pending", False),
                                   lambda m: m.build_progress(build(), "Building", False)),
     [("envkiln_builds_queued", {}, 0), ("envkiln_builds_in_flight", {}, 1)]),
    ("the same build seen twice counts once", steps(lambda m: m.build_progress(build(), "Building", False),
                                                    lambda m: m.build_progress(build(), "Building", False)),
     [("envkiln_builds_in_flight", {}, 1)]),
    ("a build that succeeds after 120s", steps(lambda m: m.build_progress(build(), "Building", False),
                                               lambda m: m.build_progress(build(), "Succeeded", True, now=NOW)),
     [("envkiln_builds_in_flight", {}, 0),
      ("envkiln_build_duration_seconds_count", {"builder": "kaniko", "outcome": "succeeded"}, 1),
      ("envkiln_build_duration_seconds_sum", {"builder": "kaniko", "outcome": "succeeded"}, 120),
      ("envkiln_build_duration_seconds_bucket", {"builder": "kaniko", "outcome": "succeeded", "le": "60.0"}, 0),
      ("envkiln_build_duration_seconds_bucket", {"builder": "kaniko", "outcome": "succeeded", "le": "120.0"}, 1)]),
    ("a failed buildah build", lambda m: m.build_progress(build(builder="buildah"), "Failed", True, now=NOW),
     [("envkiln_build_duration_seconds_count", {"builder": "buildah", "outcome": "failed"}, 1)]),
    ("a build refused before it started is not timed",
     lambda m: m.build_progress(build(start=None), "Failed", True, now=NOW),
     [("envkiln_build_duration_seconds_count", {"builder": "kaniko", "outcome": "failed"}, None)]),
    ("a finished build seen again is not timed again", lambda m: m.build_progress(build(), "Succeeded", False),
     [("envkiln_build_duration_seconds_count", {"builder": "kaniko", "outcome": "succeeded"}, None)]),
    ("a cache hit", lambda m: m.environment_synced(None, "Ready", True),
     [("envkiln_cache_hits_total", {}, 1), ("envkiln_cache_misses_total", {}, 0)]),
    ("Ready after its own build is no hit", lambda m: m.environment_synced("Building", "Ready", False),
     [("envkiln_cache_hits_total", {}, 0)]),
    ("Ready again (a resync) is no new hit", lambda m: m.environment_synced("Ready", "Ready", True),
     [("envkiln_cache_hits_total", {}, 0)]),
    ("a build created is a miss", lambda m: m.build_created(), [("envkiln_cache_misses_total", {}, 1)]),
    ("registry lookup timed", lambda m: m.registry_lookup("localhost:5000", 0.02),
     [("envkiln_registry_lookup_duration_seconds_count", {"registry": "localhost:5000"}, 1),
      ("envkiln_registry_lookup_duration_seconds_bucket", {"registry": "localhost:5000", "le": "0.025"}, 1)]),
    ("registry error", lambda m: m.registry_error("localhost:5000"),
     [("envkiln_registry_lookup_errors_total", {"registry": "localhost:5000"}, 1)]),
    ("a registry the settings do not name is other", steps(lambda m: m.registry_lookup("evil.example:1", 0.02),
                                                           lambda m: m.registry_error("tenant.example")),
     [("envkiln_registry_lookup_duration_seconds_count", {"registry": "other"}, 1),
      ("envkiln_registry_lookup_errors_total", {"registry": "other"}, 1),
      ("envkiln_registry_lookup_errors_total", {"registry": "tenant.example"}, None)]),
    ("a public registry keeps its host", lambda m: m.registry_error("docker.io"),
     [("envkiln_registry_lookup_errors_total", {"registry": "docker.io"}, 1)]),
    ("an unknown builder is other", lambda m: m.build_progress(build(builder="x" * 300), "Failed", True, now=NOW),
     [("envkiln_build_duration_seconds_count", {"builder": "other", "outcome": "failed"}, 1)]),
    ("reconcile error from the API", lambda m: m.reconcile_error("Environment", client.ApiException(status=500)),
     [("envkiln_reconcile_errors_total", {"kind": "Environment", "reason": "api_500"}, 1)]),
    ("reconcile error in the code", lambda m: m.reconcile_error("EnvironmentBuild", KeyError("x")),
     [("envkiln_reconcile_errors_total", {"kind": "EnvironmentBuild", "reason": "KeyError"}, 1)]),
    ("an API status out of range", lambda m: m.reconcile_error("Environment", client.ApiException(status=1234)),
     [("envkiln_reconcile_errors_total", {"kind": "Environment", "reason": "api_other"}, 1)]),
    ("webhook admissions", steps(lambda m: m.admission("image"), lambda m: m.admission("image"),
                                 lambda m: m.admission("refused")),
     [("envkiln_webhook_admissions_total", {"result": "image"}, 2),
      ("envkiln_webhook_admissions_total", {"result": "refused"}, 1),
      ("envkiln_webhook_admissions_total", {"result": "gated"}, None)]),
    ("environments by phase follow transitions",
     steps(lambda m: m.environment_phase("a", "x", None), lambda m: m.environment_phase("a", "y", "Building"),
           lambda m: m.environment_phase("a", "x", "Building"), lambda m: m.environment_phase("a", "y", "Ready")),
     [("envkiln_environments", {"phase": "Unknown"}, 0), ("envkiln_environments", {"phase": "Building"}, 1),
      ("envkiln_environments", {"phase": "Ready"}, 1)]),
    ("a phase envkiln never writes is Unknown", lambda m: m.environment_phase("a", "x", "Hacked"),
     [("envkiln_environments", {"phase": "Unknown"}, 1), ("envkiln_environments", {"phase": "Hacked"}, None)]),
    ("a deleted Environment leaves its phase",
     steps(lambda m: m.environment_phase("a", "x", "Ready"), lambda m: m.environment_phase("a", "x", "Ready"),
           lambda m: m.environment_phase("a", "x", "Ready", deleted=True),
           lambda m: m.environment_phase("a", "gone", None, deleted=True)),
     [("envkiln_environments", {"phase": "Ready"}, 0), ("envkiln_environments", {"phase": "Unknown"}, None)]),
]


@pytest.mark.parametrize(("hook", "samples"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_hook_moves_its_series(hook: Hook, samples: list[Sample]) -> None:
    metrics = Metrics(registries={"localhost:5000"})  # the registry the settings name
    hook(metrics)
    for name, labels, expected in samples:
        assert metrics.registry.get_sample_value(name, labels) == expected, (name, labels)


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.build_created()
    assert first.registry.get_sample_value("envkiln_cache_misses_total") == 1
    assert second.registry.get_sample_value("envkiln_cache_misses_total") == 0


def test_error_reason_is_bounded() -> None:
    assert error_reason(client.ApiException(status=409)) == "api_409"
    assert error_reason(RuntimeError("anything at all")) == "RuntimeError"


@pytest.mark.parametrize(("configured", "label"), [({"127.0.0.1:1"}, "127.0.0.1:1"), (set(), "other")])
def test_registry_client_times_lookups_and_counts_errors(configured: set[str], label: str) -> None:
    metrics = Metrics(registries=configured)
    registry = RegistryClient(timeout=0.5, metrics=metrics)
    with pytest.raises(RegistryUnavailable):  # nothing listens on port 1
        registry.lookup("127.0.0.1:1/x:1")
    assert metrics.registry.get_sample_value("envkiln_registry_lookup_errors_total", {"registry": label}) == 1
    assert metrics.registry.get_sample_value("envkiln_registry_lookup_duration_seconds_count",
                                             {"registry": label}) == 1


def series(metrics: Metrics) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (metric, labels) the registry exports, histogram buckets folded into their metric."""
    return {(family.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le")))
            for family in metrics.registry.collect() for sample in family.samples}


def test_a_thousand_hostile_values_make_a_bounded_number_of_series() -> None:
    """Tenants choose the registry hosts of their images (and could write builders or phases where a
    bug let them): the series that 100 distinct hostile values of every label make are all that 1,000
    make, and no label holds what was written."""
    metrics = Metrics(registries={"registry.internal:5000"})
    for _, hook, _ in CASES:  # every series the hooks make, with ordinary values
        hook(metrics)

    def hostile(index: int) -> None:
        host = f"tenant-{index}.evil.example:{index}"
        metrics.registry_lookup(host, 0.01)
        metrics.registry_error(host)
        metrics.build_progress(build(name=f"b{index}", builder=f"builder-{index}"), "Failed", True, now=NOW)
        metrics.environment_phase("ns", f"env-{index}", f"Phase{index}")
        metrics.reconcile_error(f"Kind{index}", client.ApiException(status=index * 7))
        metrics.admission(f"result-{index}")

    errors = metrics.registry.get_sample_value("envkiln_registry_lookup_errors_total", {"registry": "other"}) or 0
    for index in range(100):
        hostile(index)
    after_100 = series(metrics)
    for index in range(100, 1000):
        hostile(index)
    after_1000 = series(metrics)
    assert after_1000 == after_100
    assert len(after_1000) < 60
    values = {value for _, labels in after_1000 for _, value in labels}
    assert not [v for v in values if v.startswith(("tenant-", "builder-", "Phase", "Kind", "result-"))], values
    assert metrics.registry.get_sample_value("envkiln_registry_lookup_errors_total",
                                             {"registry": "other"}) == errors + 1000, "all counted, as other"


def test_error_reasons_are_a_fixed_set() -> None:
    reasons = {error_reason(client.ApiException(status=status)) for status in range(-5, 2000)}
    assert reasons == {f"api_{s}" for s in (400, 401, 403, 404, 409, 410, 413, 422, 429, 500, 502, 503, 504)} | {
        "api_1xx", "api_2xx", "api_3xx", "api_4xx", "api_5xx", "api_other"}


def test_setting_and_serving() -> None:
    assert OperatorSettings.from_env({}).metrics_port == 8000
    assert OperatorSettings.from_env({"ENVKILN_METRICS_PORT": "0"}).metrics_port == 0
    from harness.ports import free_port

    port = free_port()
    metrics = Metrics()
    metrics.build_created()
    metrics.serve(port, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "envkiln_cache_misses_total 1.0" in text and "envkiln_builds_in_flight" in text
    assert "python_gc" not in text, "only envkiln's series: not the default registry"
