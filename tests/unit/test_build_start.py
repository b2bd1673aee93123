"""What a Job builder decides before a build pod exists: whose push identity it gets, and whether
the ConfigMap context still holds the bytes that were hashed. A stand-in for the three reads the
decisions need come from the unit tests' FakeKube (the Kube wrapper itself is tested against the real API
server)."""

from __future__ import annotations

from typing import Any

import pytest

from envkiln.adapters.builders import BuildCannotStart
from envkiln.adapters.builders.jobs import JobBuilder
from envkiln.core.definition import context_digest, definition_hash
from envkiln.core.models import EnvironmentBuildSpec
from envkiln.core.render import render
from envkiln.core.settings import OperatorSettings
from fakes import FakeKube
from helpers import PIP_ENV, spec_of

OPERATOR = {".dockerconfigjson": "b3BlcmF0b3I="}
TEAM = {".dockerconfigjson": "dGVhbQ=="}


Objects = dict[tuple[str, str], dict[str, Any]]  # (namespace, name) -> the object's body but its name


def cluster(kind: str, objects: Objects) -> FakeKube:
    """A FakeKube holding `objects`, all of one kind (Secrets, or ConfigMaps)."""
    kube = FakeKube()
    for (namespace, name), body in objects.items():
        kube.put(kind, namespace, {**body, "metadata": {**body.get("metadata", {}), "name": name}})
    return kube


def builder(kube: FakeKube, operator_credential: dict[str, str] | None, **settings: Any) -> JobBuilder:
    return JobBuilder(kube, OperatorSettings(operator_namespace="ops", curated_namespace="curated", **settings),
                      operator_credential)


TEAM_SECRET: Objects = {("ops", "envkiln-push-team"): {"data": TEAM}}

# (id, Secrets, operator credential, settings, namespace, expected data or the refusal's reason)
CASES: list[tuple[str, Objects, dict[str, str] | None, dict[str, Any], str, Any]] = [
    ("own-identity", TEAM_SECRET, OPERATOR, {}, "team", TEAM),
    ("own-identity-without-operator-credential", TEAM_SECRET, None, {}, "team", TEAM),
    ("curated-uses-the-operators", TEAM_SECRET, OPERATOR, {}, "curated", OPERATOR),
    ("none-configured-anywhere", {}, None, {}, "team", None),
    ("missing-identity-is-refused", {}, OPERATOR, {}, "team", "NoPushIdentity"),
    # The operator's own credential is never copied into a tenant's namespace (there is no shared mode).
    ("operators-credential-is-never-shared", {("ops", "envkiln-push-curated"): {"data": TEAM}}, OPERATOR,
     {}, "team", "NoPushIdentity"),
    ("template", {("ops", "push-team"): {"data": TEAM}}, OPERATOR,
     {"push_secret_template": "push-{namespace}"}, "team", TEAM),
    ("secret-without-key-is-refused", {("ops", "envkiln-push-team"): {"data": {"x": "y"}}}, OPERATOR,
     {}, "team", "NoPushIdentity"),
]


@pytest.mark.parametrize(("case", "objects", "credential", "settings", "namespace", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_push_identity(case: str, objects: Objects, credential: dict[str, str] | None,
                       settings: dict[str, Any], namespace: str, expected: Any) -> None:
    job_builder = builder(cluster("Secret", objects), credential, **settings)
    if isinstance(expected, str):
        with pytest.raises(BuildCannotStart) as refused:
            job_builder.push_identity(namespace)
        assert refused.value.reason == expected
        assert f"ops/envkiln-push-{namespace}" in refused.value.message
        assert "never copied" in refused.value.message and "SHARED" not in refused.value.message
    else:
        assert job_builder.push_identity(namespace) == expected


CONTENT = {"Dockerfile": "FROM python:3.11\nCOPY a /a\n", "a": "hello\n"}
SPEC = {"build": {"configMap": {"name": "ctx"}}}


def configmap_build() -> dict[str, Any]:
    doc = {**PIP_ENV, "spec": SPEC}
    value = definition_hash(spec_of(doc), CONTENT)
    plan = render(spec_of(doc), value).model_copy(update={"context_digest": context_digest(CONTENT)})
    spec = EnvironmentBuildSpec(hash=value, image=f"r/envkiln/team/env_{value}:{value}", plan=plan)
    return {"metadata": {"name": f"envb-{value}", "namespace": "team", "uid": "u"}, "spec": spec.to_kube()}


def owner(uid: str, controller: bool = True, block: bool | None = True) -> dict[str, Any]:
    return {"apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild", "name": "envb-x", "uid": uid,
            "controller": controller, "blockOwnerDeletion": block}


def cm(data: dict[str, str], immutable: bool | None = None, owners: list[dict[str, Any]] | None = None
       ) -> dict[str, Any]:
    return {"data": data, "immutable": immutable, "metadata": {"ownerReferences": owners}}


@pytest.mark.parametrize(("case", "user", "snapshot", "expected"), [
    ("unchanged-is-snapshotted", CONTENT, None, "created"),
    ("changed-after-hashing", {**CONTENT, "a": "evil\n"}, None, "ContextChanged"),
    ("deleted-after-hashing", None, None, "ContextChanged"),
    ("snapshot-already-made", {"Dockerfile": "changed later"}, cm(CONTENT, True, [owner("u")]), "nothing"),
    ("planted-snapshot", CONTENT, cm({"Dockerfile": "FROM evil"}, True, [owner("u")]), "ContextChanged"),
    ("mutable-snapshot", CONTENT, cm(CONTENT, None, [owner("u")]), "ContextChanged"),
    # The right bytes are not enough: envkiln follows only a snapshot this build made.
    ("right-bytes-but-nobodys", CONTENT, cm(CONTENT, True), "ContextChanged"),
    ("right-bytes-earlier-build", CONTENT, cm(CONTENT, True, [owner("old")]), "ContextChanged"),
    ("right-bytes-not-controller", CONTENT, cm(CONTENT, True, [owner("u", controller=False)]), "ContextChanged"),
])
def test_configmap_context_snapshot(case: str, user: dict[str, str] | None, snapshot: dict[str, Any] | None,
                                    expected: str) -> None:
    build = configmap_build()
    value = build["spec"]["hash"]
    objects: Objects = {}
    if user is not None:
        objects[("team", "ctx")] = cm(user)
    if snapshot is not None:
        objects[("team", f"envkiln-{value}-snapshot")] = snapshot
    kube = cluster("ConfigMap", objects)
    job_builder = builder(kube, None)
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    if expected == "ContextChanged":
        with pytest.raises(BuildCannotStart) as refused:
            job_builder._snapshot_context(build, spec)
        assert refused.value.reason == "ContextChanged"
        return
    job_builder._snapshot_context(build, spec)
    created = [kube.objects[(kind, "team", name)] for verb, kind, name in kube.writes
               if (verb, kind) == ("create", "ConfigMap")]
    if expected == "nothing":
        assert created == []
    else:
        [body] = created
        assert body["metadata"]["name"] == f"envkiln-{value}-snapshot" and body["immutable"] is True
        assert body["data"] == CONTENT and body["metadata"]["ownerReferences"][0]["uid"] == "u"
