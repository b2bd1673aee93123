"""Curated environments from every namespace (`curated/NAME`, `curated/NAME:VERSION`, `curated/NAME@latest`,
the label `curated_NAME`) and `NAME@latest`: parsing, what a pod gets, and where the webhook reads them (tables)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from envkiln.core.decisions.admission import admit
from envkiln.core.names import ENVIRONMENTS
from envkiln.core.workloads import EnvironmentRequest, WorkloadError, latest_version, parse_request
from envkiln.reconcile.webhook import admit_pod
from fakes import FakeKube

REF1 = "reg/envkiln/envkiln-system/env_1@sha256:" + "1" * 64
REF2 = "reg/envkiln/envkiln-system/env_2@sha256:" + "2" * 64
REF3 = "reg/envkiln/envkiln-system/env_3@sha256:" + "3" * 64
TENANT_REF = "reg/envkiln/team-a/env_9@sha256:" + "9" * 64
LABEL = "envkiln.dev/environment"
ANNOTATION = "envkiln.dev/environment"
GATE = {"name": "envkiln.dev/environment"}
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")  # Kubernetes' label value syntax


def curated_env(phase: str | None = "Ready", version: str = "3", generation: int = 5, observed: int = 5,
                versions: list[dict[str, Any]] | None = None, namespace: str = "envkiln-system",
                image_ref: str = REF3, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "azureml-sklearn-1.5", "namespace": namespace, "generation": generation},
            "spec": {"version": version, "environmentVariables": {"MLFLOW": "curated"}},
            "status": {"phase": phase, "observedGeneration": observed, "imageRef": image_ref,
                       "versions": versions if versions is not None else [
                           {"version": "1", "hash": "h1", "imageRef": REF1},
                           {"version": "2", "hash": "h2", "imageRef": REF2},
                           {"version": "3", "hash": "h3", "imageRef": REF3}],
                       **status}}


def pod(label: str, annotations: dict[str, str] | None = None, namespace: str = "team-a") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace, "labels": {LABEL: label},
                         "annotations": annotations or {}},
            "spec": {"containers": [{"name": "main", "image": "placeholder"}]}}


# --- parsing: (id, label, annotation, (name, version, curated, latest) or the refusal) ---------------------------
PARSE = [
    ("local", "train", None, ("train", None, False, False)),
    ("local-version", "train", "train:2", ("train", "2", False, False)),
    ("local-latest", "train", "train@latest", ("train", None, False, True)),
    ("curated-annotation", "curated", "curated/azureml-sklearn-1.5", ("azureml-sklearn-1.5", None, True, False)),
    ("curated-version", "x", "curated/azureml-sklearn-1.5:2", ("azureml-sklearn-1.5", "2", True, False)),
    ("curated-latest", "x", "curated/azureml-sklearn-1.5@latest", ("azureml-sklearn-1.5", None, True, True)),
    ("curated-label", "curated_azureml-sklearn-1.5", None, ("azureml-sklearn-1.5", None, True, False)),
    ("annotation-wins-over-label", "curated_azureml-sklearn-1.5", "train:1", ("train", "1", False, False)),
    ("other-tag", "x", "curated/azureml-sklearn-1.5@stable", "only 'latest' is known"),
    ("version-and-latest", "x", "train:2@latest", "only 'latest' is known"),
    ("curated-no-name", "x", "curated/", "is not an Environment name"),
    ("curated-bad-name", "x", "curated/Bad_Name", "is not an Environment name"),
    ("curated-nested", "x", "curated/ns/name", "is not an Environment name"),
    ("curated-bad-version", "x", "curated/azureml-sklearn-1.5:a b", "is not a version label"),
]


@pytest.mark.parametrize(("case", "label", "annotation", "expected"), PARSE, ids=[c[0] for c in PARSE])
def test_parse(case: str, label: str, annotation: str | None, expected: tuple[Any, ...] | str) -> None:
    annotations = {ANNOTATION: annotation} if annotation else {}
    if isinstance(expected, str):
        with pytest.raises(WorkloadError, match=re.escape(expected)):
            parse_request({LABEL: label}, annotations)
        return
    request = parse_request({LABEL: label}, annotations)
    assert (request.name, request.version, request.curated, request.latest) == expected


# --- @latest: the newest entry of status.versions that was built ---------------------------------------------------
LATEST = [
    ("newest", curated_env(), "3"),
    ("newest-still-building", curated_env(versions=[{"version": "1", "hash": "h1", "imageRef": REF1},
                                                    {"version": "2", "hash": "h2"}]), "1"),
    ("order-not-numbers", curated_env(versions=[{"version": "10", "hash": "a", "imageRef": REF1},
                                                {"version": "9", "hash": "b", "imageRef": REF2}]), "9"),
    ("none-built", curated_env(versions=[{"version": "1", "hash": "h1"}]), None),
    ("no-status", {"metadata": {"name": "x"}, "spec": {}}, None),
]


@pytest.mark.parametrize(("case", "env", "version"), LATEST, ids=[c[0] for c in LATEST])
def test_latest_version(case: str, env: dict[str, Any], version: str | None) -> None:
    assert latest_version(env) == version


# --- what a pod naming a curated environment gets: (id, env, version, latest, image, recorded annotation) ----------
NAME = "azureml-sklearn-1.5"
ADMIT = [
    ("ready-current", curated_env(), None, False, REF3, f"curated/{NAME}"),
    ("explicit-version", curated_env(), "1", False, REF1, f"curated/{NAME}:1"),
    ("latest", curated_env(), None, True, REF3, f"curated/{NAME}:3"),
    ("latest-while-a-new-version-builds", curated_env(phase="Building", version="4", versions=[
        {"version": "2", "hash": "h2", "imageRef": REF2}, {"version": "4", "hash": "h4"}]), None, True, REF2,
     f"curated/{NAME}:2"),
    ("old-version-while-failed", curated_env(phase="Failed", message="x"), "2", False, REF2, f"curated/{NAME}:2"),
]


@pytest.mark.parametrize(("case", "env", "version", "latest", "image", "recorded"), ADMIT, ids=[c[0] for c in ADMIT])
def test_curated_admit(case: str, env: dict[str, Any], version: str | None, latest: bool, image: str,
                       recorded: str) -> None:
    changes = admit(pod("curated"), env, NAME, EnvironmentRequest(NAME, version, None, curated=True, latest=latest))
    [container] = changes["spec"]["containers"]
    assert container["image"] == image and "schedulingGates" not in changes["spec"], "never gated"
    assert container["env"] == [{"name": "MLFLOW", "value": "curated"}]
    assert changes["metadata"]["annotations"][ANNOTATION] == recorded
    label = changes["metadata"]["labels"][LABEL]
    assert label == f"curated_{NAME}" and LABEL_VALUE.fullmatch(label) and len(label) <= 63
    # What was recorded reads back as the same request, resolved.
    again = parse_request({LABEL: label}, {ANNOTATION: recorded})
    assert (again.name, again.curated, again.latest) == (NAME, True, False)


# (id, env, version, latest, message): curated pods never wait behind a gate; a version not built is refused.
REFUSED = [
    ("building", curated_env(phase="Building", versions=[]), None, False,
     "is not built for its current version (phase Building); pods get a curated environment only once it is "
     "built, they do not wait for it: retry when it is Ready"),
    ("building-with-history", curated_env(phase="Building", version="4"), None, False,
     f"name a built version (curated/{NAME}:3, or curated/{NAME}@latest)"),
    ("stale-generation", curated_env(observed=4, versions=[]), None, False, "phase Ready"),
    ("failed", curated_env(phase="Failed", message="resolution impossible", versions=[]), None, False,
     "(phase Failed: resolution impossible)"),
    ("never-reconciled", {"metadata": {"name": NAME, "namespace": "envkiln-system"}, "spec": {}}, None, False,
     "phase not reconciled yet"),
    ("latest-none-built", curated_env(phase="Building", versions=[{"version": "3", "hash": "h3"}]), None, True,
     "is not built for its current version"),
    ("unknown-version", curated_env(), "7", False, "has no version '7'"),
    ("version-never-built", curated_env(versions=[{"version": "2", "hash": "h2"}]), "2", False, "was never built"),
]


@pytest.mark.parametrize(("case", "env", "version", "latest", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_curated_admit_refuses(case: str, env: dict[str, Any], version: str | None, latest: bool,
                               message: str) -> None:
    with pytest.raises(WorkloadError, match=re.escape(message)):
        admit(pod("curated"), env, NAME, EnvironmentRequest(NAME, version, None, curated=True, latest=latest))


def test_local_latest_resolves_or_waits_for_the_current_version() -> None:
    local = curated_env(namespace="team-a")
    changes = admit(pod("train"), local, "train", EnvironmentRequest("train", None, None, latest=True))
    assert changes["spec"]["containers"][0]["image"] == REF3
    assert changes["metadata"]["annotations"][ANNOTATION] == "train:3"
    assert changes["metadata"]["labels"][LABEL] == "train"
    nothing_built = curated_env(phase="Building", namespace="team-a", versions=[{"version": "3", "hash": "h3"}])
    gated = admit(pod("train"), nothing_built, "train", EnvironmentRequest("train", None, None, latest=True))
    assert gated["spec"]["schedulingGates"] == [GATE], "a namespace's own environment is waited for, as before"
    assert gated["metadata"]["annotations"][ANNOTATION] == "train", "released when the current version is Ready"


# --- the webhook reads curated environments from the curated namespace only ---------------------------------------

def ctx_with(objects: dict[tuple[str, str], dict[str, Any]], curated_namespace: str = "envkiln-system",
             forbidden: set[str] | None = None) -> Any:
    """What admit_pod reads: a cluster holding these Environments, where reading in a `forbidden`
    namespace is refused (403) as for an operator that does not watch it."""
    kube = FakeKube()
    for (namespace, name), env in objects.items():
        kube.put(ENVIRONMENTS, namespace, {**env, "metadata": {**env["metadata"], "name": name}})

    def refuse(verb: str, kind: str, namespace: str, name: str) -> None:
        if namespace in (forbidden or set()):
            raise client.ApiException(status=403, reason="Forbidden")
    kube.intercept = refuse
    return SimpleNamespace(kube=kube, settings=SimpleNamespace(curated_namespace=curated_namespace))


def test_webhook_reads_the_curated_namespace_never_the_pods() -> None:
    # A tenant's own Environment with the curated name does not stand in for the curated one.
    planted = {**curated_env(namespace="team-a", image_ref=TENANT_REF), "metadata": {
        "name": NAME, "namespace": "team-a", "generation": 5}}
    ctx = ctx_with({("team-a", NAME): planted, ("ml-curated", NAME): curated_env(namespace="ml-curated")},
                   curated_namespace="ml-curated")
    changes = admit_pod(ctx, pod("curated", {ANNOTATION: f"curated/{NAME}@latest"}), "team-a")
    assert changes["spec"]["containers"][0]["image"] == REF3
    assert ctx.kube.calls == [("get", ENVIRONMENTS, "ml-curated", NAME)]
    # The plain name is the namespace's own.
    local = admit_pod(ctx, pod(NAME), "team-a")
    assert local["spec"]["containers"][0]["image"] == TENANT_REF


@pytest.mark.parametrize(("objects", "forbidden", "message"), [
    ({}, None, f"curated Environment '{NAME}' does not exist in the curated namespace envkiln-system "
               "(kubectl get environments -n envkiln-system)"),
    ({}, {"envkiln-system"}, "may not read Environments in the curated namespace envkiln-system; it must watch "
                             "that namespace"),
], ids=["missing", "not-watched"])
def test_webhook_refuses_what_it_cannot_find(objects: dict[tuple[str, str], dict[str, Any]],
                                             forbidden: set[str] | None, message: str) -> None:
    ctx = ctx_with(objects, forbidden=forbidden)
    with pytest.raises(WorkloadError, match=re.escape(message)):
        admit_pod(ctx, pod(f"curated_{NAME}"), "team-a")
