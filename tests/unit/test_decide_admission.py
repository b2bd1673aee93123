"""envkiln.core.decisions.admission and .curated: what a pod gets, when a gated pod goes, reserved names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from envkiln.core.decisions.admission import admit, condition_patch, release
from envkiln.core.decisions.curated import check_reserved_name, reserved_prefix
from envkiln.core.workloads import EnvironmentRequest, WorkloadError, parse_request

REF1 = "reg/env@sha256:" + "1" * 64
REF2 = "reg/env@sha256:" + "2" * 64
GATE = {"name": "envkiln.dev/environment"}


def environment(phase: str | None = "Ready", version: str = "2", generation: int = 4, observed: int = 4,
                versions: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "train", "generation": generation},
            "spec": {"version": version, "environmentVariables": {"A": "env", "B": "env"}},
            "status": {"phase": phase, "observedGeneration": observed, "imageRef": REF2,
                       "versions": versions if versions is not None else [
                           {"version": "1", "hash": "h1", "imageRef": REF1}, {"version": "2", "hash": "h2"}],
                       **status}}


def pod(annotations: dict[str, str] | None = None, gates: list[dict[str, str]] | None = None,
        containers: Sequence[str] = ("main",)) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "resourceVersion": "7",
                         "labels": {"envkiln.dev/environment": "train"}, "annotations": annotations or {}},
            "spec": {"containers": [{"name": n, "image": "placeholder", "env": [{"name": "B", "value": "pod"}]}
                                    for n in containers],
                     **({"schedulingGates": gates} if gates is not None else {})}}


# (id, environment, request version, container, expected image or None (gated))
ADMIT = [
    ("ready-current", environment(), None, None, REF2),
    ("ready-explicit-current", environment(), "2", None, REF2),
    ("old-version-from-history", environment(), "1", None, REF1),
    ("building-is-gated", environment(phase="Building"), None, None, None),
    ("stale-generation-is-gated", environment(observed=3), None, None, None),
    ("inline-dry-run-unknown", None, None, None, None),
    ("second-container", environment(), None, "side", REF2),
]


@pytest.mark.parametrize(("case", "env", "version", "container", "image"), ADMIT, ids=[c[0] for c in ADMIT])
def test_admit(case: str, env: dict[str, Any] | None, version: str | None, container: str | None,
               image: str | None) -> None:
    given = pod(containers=["main", "side"])
    changes = admit(given, env, "train", EnvironmentRequest("train", version, container))
    index = 1 if container == "side" else 0
    target = changes["spec"]["containers"][index]
    if image is None:
        assert target["image"] == "placeholder"
        assert changes["spec"]["schedulingGates"] == [GATE]
    else:
        assert target["image"] == image and "schedulingGates" not in changes["spec"]
    assert changes["metadata"]["labels"]["envkiln.dev/environment"] == "train"
    assert changes["metadata"]["annotations"]["envkiln.dev/container"] == target["name"]
    if env is not None:  # the pod's own variables win
        assert target["env"] == [{"name": "B", "value": "pod"}, {"name": "A", "value": "env"}]


@pytest.mark.parametrize(("version", "container", "message"), [
    ("9", None, "has no version '9'"),
    ("2", "nope", "no container named 'nope'"),
])
def test_admit_refuses(version: str, container: str | None, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        admit(pod(), environment(phase="Ready", version="2"), "train", EnvironmentRequest("train", version, container))


def test_admit_never_built_version_refused() -> None:
    env = environment(version="3", versions=[{"version": "2", "hash": "h2"}])
    with pytest.raises(WorkloadError, match="was never built"):
        admit(pod(), env, "train", EnvironmentRequest("train", "2", None))


@pytest.mark.parametrize(("labels", "annotations", "name", "version"), [
    ({"envkiln.dev/environment": "train"}, {}, "train", None),
    ({"envkiln.dev/environment": "train"}, {"envkiln.dev/environment": "train:1"}, "train", "1"),
    ({"envkiln.dev/environment": "train"}, {"envkiln.dev/environment-version": "1"}, "train", "1"),
    ({"envkiln.dev/environment": "train"}, {"envkiln.dev/environment": "train@latest"}, "train", None),
    ({"envkiln.dev/environment": "curated_sk"}, {}, "sk", None),  # curated: tests/unit/test_curated_refs.py
    ({"envkiln.dev/environment": "x"}, {"envkiln.dev/environment": "curated/sk:2"}, "sk", "2"),
])
def test_parse_request(labels: dict[str, str], annotations: dict[str, str], name: str, version: str | None) -> None:
    request = parse_request(labels, annotations)
    assert (request.name, request.version) == (name, version)


# (id, pod annotations, gates, environment, action, reason)
RELEASE = [
    ("no-gate", {}, None, environment(), "skip", ""),
    ("other-gates-only", {}, [{"name": "other"}], environment(), "skip", ""),
    ("ready", {"envkiln.dev/environment": "train"}, [GATE], environment(), "release", ""),
    ("still-building", {"envkiln.dev/environment": "train"}, [GATE], environment(phase="Building"), "wait", ""),
    ("failed", {"envkiln.dev/environment": "train"}, [GATE], environment(phase="Failed", message="x"), "report",
     "EnvironmentFailed"),
    ("missing-version", {"envkiln.dev/environment": "train:7"}, [GATE], environment(), "report",
     "EnvironmentVersionMissing"),
    ("old-version", {"envkiln.dev/environment": "train:1"}, [GATE], environment(phase="Building"), "release", ""),
]


@pytest.mark.parametrize(("case", "annotations", "gates", "env", "action", "reason"), RELEASE,
                         ids=[c[0] for c in RELEASE])
def test_release(case: str, annotations: dict[str, str], gates: list[dict[str, str]] | None, env: dict[str, Any],
                 action: str, reason: str) -> None:
    decision = release(pod(annotations, gates), env)
    assert (decision.action, decision.reason) == (action, reason)


def test_release_patch_keeps_other_gates_and_is_guarded() -> None:
    annotations = {"envkiln.dev/environment": "train", "envkiln.dev/container": "side"}
    decision = release(pod(annotations, [{"name": "other"}, GATE], containers=["main", "side"]), environment())
    assert decision.patch == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "replace", "path": "/spec/containers/1/image", "value": REF2},
        {"op": "replace", "path": "/spec/schedulingGates", "value": [{"name": "other"}]},
    ]
    only = release(pod({"envkiln.dev/environment": "train"}, [GATE]), environment())
    assert only.patch[-1] == {"op": "remove", "path": "/spec/schedulingGates"}


def test_condition_patch_said_once() -> None:
    patch = condition_patch(pod(), "EnvironmentFailed", "boom", "t1")
    assert patch is not None
    said = {**pod(), "status": {"conditions": [{"type": "Ready", "status": "False"}, *patch["status"]["conditions"]]}}
    assert condition_patch(said, "EnvironmentFailed", "boom", "t2") is None
    changed = condition_patch(said, "EnvironmentFailed", "other", "t3")
    assert changed is not None and [c["type"] for c in changed["status"]["conditions"]] == [
        "Ready", "envkiln.dev/EnvironmentReady"]


# (name, namespace, refused prefix)
CURATED = [
    ("azureml-sklearn", "team-a", "azureml-"),
    ("AzureML-sklearn", "team-a", "azureml-"),
    ("microsoft-pytorch", "team-a", "microsoft"),
    ("microsoftish", None, "microsoft"),
    ("azureml-sklearn", "envkiln-curated", None),  # the curated namespace may
    ("azureml-sklearn", "envkiln-system", "azureml-"),  # the operator's namespace is not the curated one
    ("my-azureml-env", "team-a", None),
    ("sklearn", "team-a", None),
]


@pytest.mark.parametrize(("name", "namespace", "prefix"), CURATED)
def test_curated_names(name: str, namespace: str | None, prefix: str | None) -> None:
    assert reserved_prefix(name, namespace) == prefix
    if prefix is None:
        check_reserved_name(name, namespace)
    else:
        with pytest.raises(ValueError, match="reserved prefix"):
            check_reserved_name(name, namespace)


def test_curated_namespace_is_a_setting() -> None:
    assert reserved_prefix("azureml-x", "curated", curated_namespace="curated") is None
    assert reserved_prefix("azureml-x", "envkiln-system", curated_namespace="curated") == "azureml-"
