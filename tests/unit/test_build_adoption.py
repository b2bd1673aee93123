"""Nothing a tenant can create is adopted (issue #22): a Job, ConfigMap, Secret or pod under a name
reserved for a build is followed only when the operator made it. The pure rules as tables
(envkiln.core.decisions.adoption), then what a Job builder does with them, over a stand-in for the
calls it makes (the real API server's 409s and ownerReferences are exercised by
tests/integration/node/test_tenant_builds.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from envkiln.adapters.builders import AttemptState, BuildCannotStart
from envkiln.adapters.builders.buildah import BuildahJobBuilder
from envkiln.adapters.builders.jobs import context_configmap
from envkiln.core.decisions.adoption import controlled_by, foreign_object_message, is_job_pod
from envkiln.core.definition import definition_hash, image_name
from envkiln.core.models import EnvironmentBuildSpec
from envkiln.core.render import render
from envkiln.core.settings import OperatorSettings
from fakes import FakeKube
from helpers import PIP_ENV, spec_of

BUILD_UID, JOB_UID = "build-uid", "job-uid"


def ref(kind: str = "EnvironmentBuild", uid: str = BUILD_UID, controller: bool | None = True,
        block: bool | None = True, name: str = "envb-x") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid, "controller": controller,
            "blockOwnerDeletion": block}


@pytest.mark.parametrize(("case", "refs", "expected"), [
    ("the-builds-controller", [ref()], True),
    ("among-other-owners", [ref("ConfigMap", "x", controller=False), ref()], True),
    ("no-owner", None, False),
    ("empty", [], False),
    ("another-uid", [ref(uid="earlier-build")], False),
    ("owner-but-not-controller", [ref(controller=False)], False),
    ("controller-unset", [ref(controller=None)], False),
    # The operator always sets blockOwnerDeletion; with OwnerReferencesPermissionEnforcement only those
    # who may update the build's finalizers can: a reference without it is not the operator's.
    ("without-block-owner-deletion", [ref(block=None)], False),
    ("another-kind-same-uid", [ref("Job")], False),
])
def test_controlled_by(case: str, refs: list[dict[str, Any]] | None, expected: bool) -> None:
    assert controlled_by(refs, "EnvironmentBuild", BUILD_UID) is expected


def test_nothing_is_controlled_by_an_unknown_uid() -> None:
    assert controlled_by([ref(uid="")], "EnvironmentBuild", "") is False
    assert controlled_by([ref()], "EnvironmentBuild", None) is False


NEW, LEGACY = "batch.kubernetes.io/controller-uid", "controller-uid"


@pytest.mark.parametrize(("case", "labels", "refs", "expected"), [
    ("made-by-the-job", {NEW: JOB_UID, LEGACY: JOB_UID, "job-name": "envkiln-x-1"}, [ref("Job", JOB_UID)], True),
    ("legacy-label-only", {LEGACY: JOB_UID}, [ref("Job", JOB_UID)], True),
    ("new-label-only", {NEW: JOB_UID}, [ref("Job", JOB_UID)], True),
    # A tenant's pod named like the Job's: job-name alone proves nothing.
    ("job-name-only", {"job-name": "envkiln-x-1"}, None, False),
    ("job-name-and-owner-no-uid-label", {"job-name": "envkiln-x-1"}, [ref("Job", JOB_UID)], False),
    ("uid-label-without-owner", {NEW: JOB_UID}, None, False),
    ("uid-label-other-owner", {NEW: JOB_UID}, [ref("Job", "another-job")], False),
    ("other-uid-label", {NEW: "another-job"}, [ref("Job", JOB_UID)], False),
    ("owner-not-controller", {NEW: JOB_UID}, [ref("Job", JOB_UID, controller=False)], False),
])
def test_is_job_pod(case: str, labels: dict[str, str], refs: list[dict[str, Any]] | None, expected: bool) -> None:
    assert is_job_pod(labels, refs, JOB_UID) is expected


@pytest.mark.parametrize(("refs", "says"), [
    (None, "it has no controller"),
    ([ref("Deployment", "d", name="web")], "its controller is Deployment web"),
    ([ref(uid="old", name="envb-x")], "its controller is an earlier EnvironmentBuild envb-x (uid old)"),
])
def test_foreign_object_message_names_the_object_and_what_to_do(refs: list[dict[str, Any]] | None,
                                                                  says: str) -> None:
    message = foreign_object_message("Job", "team", "envkiln-x-1", refs, "EnvironmentBuild", "envb-x")
    assert message.startswith("Job team/envkiln-x-1 already exists and envkiln did not make it")
    assert says in message and "kubectl -n team delete job envkiln-x-1" in message


# --- a Job builder over a stand-in for its API calls ---------------------------------------------

SETTINGS = OperatorSettings(registry="reg.local:5000", builder="buildah", operator_namespace="ops",
                            buildah_image="reg.local:5000/builder:1", buildah_push_image="reg.local:5000/push:1")
IDENTITY = {".dockerconfigjson": "dGVhbQ=="}
DIGEST = "sha256:" + "d" * 64


def the_build() -> dict[str, Any]:
    value = definition_hash(spec_of(PIP_ENV))
    spec = EnvironmentBuildSpec(hash=value, image=image_name(value, SETTINGS.registry), plan=render(spec_of(PIP_ENV),
                                                                                                   value))
    return {"apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild",
            "metadata": {"name": f"envb-{value}", "namespace": "team", "uid": BUILD_UID}, "spec": spec.to_kube()}


def owner_refs(refs: list[dict[str, Any]] | None) -> list[client.V1OwnerReference] | None:
    return None if refs is None else [client.V1OwnerReference(
        api_version=r["apiVersion"], kind=r["kind"], name=r["name"], uid=r["uid"], controller=r["controller"],
        block_owner_deletion=r["blockOwnerDeletion"]) for r in refs]


def meta(name: str, uid: str, refs: list[dict[str, Any]] | None, labels: dict[str, str] | None = None,
         created: datetime | None = None) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(name=name, namespace="team", uid=uid, owner_references=owner_refs(refs), labels=labels,
                               creation_timestamp=created or datetime(2026, 1, 1, tzinfo=UTC))


def finished_job(name: str, uid: str, refs: list[dict[str, Any]] | None) -> client.V1Job:
    return client.V1Job(metadata=meta(name, uid, refs), status=client.V1JobStatus(
        succeeded=1, conditions=[client.V1JobCondition(type="Complete", status="True")]))


def pushed_pod(name: str, labels: dict[str, str], refs: list[dict[str, Any]] | None, digest: str,
               created: datetime) -> client.V1Pod:
    state = client.V1ContainerState(terminated=client.V1ContainerStateTerminated(exit_code=0, message=digest))
    return client.V1Pod(metadata=meta(name, f"pod-{name}", refs, labels, created), status=client.V1PodStatus(
        container_statuses=[client.V1ContainerStatus(name="push", image="i", image_id="", ready=False,
                                                     restart_count=0, state=state)]))


PUSH_CREDENTIAL = ("ops", "envkiln-push-team")  # the operator's Secret for namespace team, in its own namespace


def cluster(*objects: tuple[str, Any]) -> FakeKube:
    """A cluster holding the operator's push credential and these (kind, object) in namespace team. Reading
    any other Secret fails the test: the operator reads no Secret in a build's namespace."""
    kube = FakeKube()
    kube.put("Secret", PUSH_CREDENTIAL[0], {"metadata": {"name": PUSH_CREDENTIAL[1]}, "data": IDENTITY})
    for kind, obj in objects:
        kube.put(kind, "team", obj)

    def no_secret_reads(verb: str, kind: str, namespace: str, name: str) -> None:
        if (verb, kind) == ("get", "Secret") and (namespace, name) != PUSH_CREDENTIAL:
            raise AssertionError("the operator reads no Secret in a build's namespace")
    kube.intercept = no_secret_reads
    return kube


def builder(kube: FakeKube) -> BuildahJobBuilder:
    return BuildahJobBuilder(kube, SETTINGS, {".dockerconfigjson": "b3BlcmF0b3I="})


def stored(kube: FakeKube, kind: str, name: str) -> dict[str, Any]:
    return kube.objects[(kind, "team", name)]


def names(build: dict[str, Any]) -> tuple[str, str, str]:
    value = build["spec"]["hash"]
    return f"envkiln-{value}-1", f"envkiln-{value}-1-push", f"envkiln-{value}-context"


def test_a_fresh_start_creates_everything_and_copies_the_namespaces_identity() -> None:
    build = the_build()
    job, secret, context = names(build)
    kube = cluster()
    assert builder(kube).start(build, 1) == job
    assert kube.writes == [("create", "ConfigMap", context), ("create", "Job", job), ("create", "Secret", secret)]
    body = stored(kube, "Secret", secret)
    assert body["data"] == IDENTITY  # the namespace's own identity, never the operator's credential
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": stored(kube, "Job", job)["metadata"]["uid"],
        "controller": True, "blockOwnerDeletion": True}]


def test_a_job_the_operator_made_before_is_followed() -> None:
    build = the_build()
    job, secret, _ = names(build)
    ours = client.V1Job(metadata=meta(job, JOB_UID, [ref(name=build["metadata"]["name"])]))
    kube = cluster(("Job", ours))
    assert builder(kube).start(build, 1) == job
    assert ("create", "Secret", secret) in kube.writes and ("delete", "Job", job) not in kube.writes


@pytest.mark.parametrize(("case", "refs"), [
    ("no-owner", None),
    ("forged-owner-without-block", [ref(block=None)]),
    ("earlier-build-of-the-same-name", [ref(uid="earlier")]),
    ("owned-not-controlled", [ref(controller=False)]),
])
def test_a_job_someone_else_made_is_never_adopted(case: str, refs: list[dict[str, Any]] | None) -> None:
    build = the_build()
    job, _, _ = names(build)
    planted = client.V1Job(metadata=meta(job, "tenant-job", refs))
    kube = cluster(("Job", planted))
    before = copy.deepcopy(stored(kube, "Job", job))
    with pytest.raises(BuildCannotStart) as refused:
        builder(kube).start(build, 1)
    assert refused.value.reason == "NameTaken"
    assert f"Job team/{job} already exists and envkiln did not make it" in refused.value.message
    assert f"kubectl -n team delete job {job}" in refused.value.message
    # No credential for it, and it is neither deleted nor changed.
    assert [w for w in kube.writes if w[:2] != ("create", "ConfigMap")] == []
    assert stored(kube, "Job", job) == before


def test_a_secret_under_the_push_name_is_never_used() -> None:
    build = the_build()
    job, secret, _ = names(build)
    kube = cluster(("Secret", {"metadata": {"name": secret}, "data": {".dockerconfigjson": "dGVuYW50"}}))
    before = copy.deepcopy(stored(kube, "Secret", secret))
    with pytest.raises(BuildCannotStart) as refused:
        builder(kube).start(build, 1)
    assert refused.value.reason == "NameTaken" and f"Secret team/{secret} already exists" in refused.value.message
    # The operator's own Job is deleted at once: no pod of it runs with a Secret envkiln did not make.
    assert kube.writes[-2:] == [("create", "Job", job), ("delete", "Job", job)]
    assert stored(kube, "Secret", secret) == before


@pytest.mark.parametrize(("case", "refs", "data", "reason"), [
    ("nobodys", None, None, "NameTaken"),
    ("another-owner", [ref("Deployment", "d")], None, "NameTaken"),
    ("the-builds-but-other-content", [ref()], {"Dockerfile": "FROM evil\n"}, "ContextChanged"),
])
def test_a_context_configmap_someone_else_made_is_refused_before_any_job(
        case: str, refs: list[dict[str, Any]] | None, data: dict[str, str] | None, reason: str) -> None:
    build = the_build()
    _, _, context = names(build)
    rendered = context_configmap(build)
    assert rendered is not None, "the build renders its own context"
    planted = client.V1ConfigMap(metadata=meta(context, "tenant-cm", refs), immutable=True,
                                 data=data or rendered["data"])
    kube = cluster(("ConfigMap", planted))
    with pytest.raises(BuildCannotStart) as refused:
        builder(kube).start(build, 1)
    assert refused.value.reason == reason and f"ConfigMap {'team/' if reason == 'NameTaken' else ''}{context}" in (
        refused.value.message)
    assert kube.writes == []


def test_observe_never_follows_a_job_someone_else_made() -> None:
    build = the_build()
    job, _, _ = names(build)
    planted = finished_job(job, "tenant-job", None)
    kube = cluster(("Job", planted), ("Pod", pushed_pod(
        "fake", {"job-name": job, NEW: "tenant-job"}, [ref("Job", "tenant-job")], DIGEST, datetime.now(UTC))))
    result = builder(kube).observe(build, 1)
    assert (result.state, result.reason, result.digest) == (AttemptState.FAILED, "NameTaken", None)
    assert result.log_tail is not None and f"Job team/{job} already exists" in result.log_tail
    assert kube.writes == []  # nothing of it deleted, not even a Secret by its name


def test_the_digest_comes_only_from_the_jobs_own_pods() -> None:
    """A tenant's pod labelled job-name=<job>, newer than the Job's own, with a `push` container that
    reports a digest of its choosing: ignored."""
    build = the_build()
    job, secret, _ = names(build)
    ours = finished_job(job, JOB_UID, [ref(name=build["metadata"]["name"])])
    own_pod = pushed_pod("own", {"job-name": job, NEW: JOB_UID, LEGACY: JOB_UID}, [ref("Job", JOB_UID)], DIGEST,
                         datetime(2026, 1, 1, tzinfo=UTC))
    evil = "sha256:" + "e" * 64
    fakes = [pushed_pod("by-name", {"job-name": job}, None, evil, datetime(2026, 1, 2, tzinfo=UTC)),
             pushed_pod("by-label", {"job-name": job, NEW: JOB_UID}, None, evil, datetime(2026, 1, 3, tzinfo=UTC)),
             pushed_pod("by-owner", {"job-name": job}, [ref("Job", JOB_UID)], evil, datetime(2026, 1, 4, tzinfo=UTC))]
    push_secret = {"metadata": {"name": secret, "ownerReferences": [ref("Job", JOB_UID, name=job)]}, "data": IDENTITY}
    kube = cluster(("Job", ours), ("Secret", push_secret), *[("Pod", p) for p in [own_pod, *fakes]])
    result = builder(kube).observe(build, 1)
    assert (result.state, result.digest) == (AttemptState.SUCCEEDED, DIGEST)
    # Its own credential, removed once the attempt ended.
    assert ("delete", "Secret", secret) in kube.writes and ("Secret", "team", secret) not in kube.objects
    # Without the Job's own pod, the fakes give nothing.
    alone = builder(cluster(("Job", ours), *[("Pod", p) for p in fakes])).observe(build, 1)
    assert (alone.state, alone.reason, alone.digest) == (AttemptState.FAILED, "NoDigest", None)
