"""Private registries (issue #23): pull credentials of builds, the registry CA bundle, credential
helpers and the push container's workload identity. The pure merge of docker configs and the
credential helper names as tables; the pull-auth script run by sh; the build pod each Job builder
makes (which container holds which credential); the operator's lookups through a helper; and what
a Job builder creates, over the stand-in for the API (the real flow runs on the node:
tests/integration/node/test_private_registry.py)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from envkiln.adapters.builders import BuildCannotStart
from envkiln.adapters.builders.buildah import BuildahJobBuilder, buildah_job
from envkiln.adapters.builders.jobs import PULL_AUTH_SCRIPT, BuildAccess
from envkiln.adapters.builders.kaniko import kaniko_job
from envkiln.adapters.registryclient import (
    CredentialHelperFailed,
    Credentials,
    RegistryClient,
    RegistryUnavailable,
    run_credential_helper,
)
from envkiln.core.placement import BuildPlacement, effective_placement
from envkiln.core.registryauth import DockerConfigError, credential_helpers, merge_auths
from envkiln.core.settings import OperatorSettings, SettingsError
from fakes import FakeKube
from helpers import PIP_ENV, build_for

A = {"auths": {"r1:5000": {"auth": "YTpi"}, "r2": {"username": "u", "password": "p"}}}
B = {"auths": {"r1:5000": {"auth": "Yzpk"}, "r3": {"auth": "ZTpm"}}}


# (id, documents, expected auths or the error's words)
MERGES: list[tuple[str, list[tuple[str, Any]], dict[str, Any] | str]] = [
    ("one", [("s1", A)], A["auths"]),
    ("first-wins-per-registry", [("s1", A), ("s2", B)], {**B["auths"], **A["auths"]}),
    ("other-keys-left-out", [("s1", {**A, "credHelpers": {"x": "ecr-login"}, "credsStore": "desktop"})], A["auths"]),
    ("no-auths", [("s1", {})], {}),
    ("not-json", [("Secret ops/pull", "{nope")], "Secret ops/pull: .dockerconfigjson is not JSON"),
    ("auths-not-an-object", [("s1", {"auths": []})], "s1: .dockerconfigjson `auths` is not an object"),
    ("entry-not-an-object", [("s1", {"auths": {"r": "x"}})], "auths['r'] is not an object"),
]


@pytest.mark.parametrize(("case", "documents", "expected"), MERGES, ids=[m[0] for m in MERGES])
def test_merge_auths(case: str, documents: list[tuple[str, Any]], expected: dict[str, Any] | str) -> None:
    raw = [(source, doc if isinstance(doc, str) else json.dumps(doc)) for source, doc in documents]
    if isinstance(expected, str):
        with pytest.raises(DockerConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            merge_auths(raw)
        return
    merged = merge_auths(raw)
    assert json.loads(merged) == {"auths": expected}
    assert "\n" not in merged and " " not in merged  # compact: the pull-auth script reads one line


@pytest.mark.parametrize(("helpers", "expected"), [
    ({"123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login"}, {"123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login"}),
    ({"https://index.docker.io/v1/": "desktop"}, {"docker.io": "desktop"}),
    ({"europe-docker.pkg.dev": "gcloud", "myacr.azurecr.io": "acr-env"},
     {"europe-docker.pkg.dev": "gcloud", "myacr.azurecr.io": "acr-env"}),
    ({"r": "../../bin/sh"}, "must be a helper name"),
    ({"r": "a b"}, "must be a helper name"),
    ({"r": 3}, "must be a helper name"),
])
def test_credential_helpers(helpers: dict[str, Any], expected: dict[str, str] | str) -> None:
    raw = json.dumps({"auths": {}, "credHelpers": helpers})
    if isinstance(expected, str):
        with pytest.raises(DockerConfigError, match=expected):
            credential_helpers(raw)
    else:
        assert credential_helpers(raw) == expected


def run_pull_auth(tmp_path: Path, documents: list[str | None]) -> tuple[subprocess.CompletedProcess[str], str]:
    out = tmp_path / "pull-auth"
    out.mkdir()
    sources = []
    for index, document in enumerate(documents):
        path = tmp_path / f"source-{index}" / "config.json"
        if document is not None:
            path.parent.mkdir()
            path.write_text(document)
        sources.append(str(path))
    result = subprocess.run(["sh", "-c", PULL_AUTH_SCRIPT.replace("/pull-auth", str(out))], capture_output=True,
                            text=True, env={"ENVKILN_PULL_SOURCES": " ".join(sources), "PATH": os.environ["PATH"]})
    return result, (out / "config.json").read_text()


# (id, documents the pull-auth container finds (None: an optional Secret that is absent), merged auths,
#  words on stderr)
PULL_AUTHS: list[tuple[str, list[str | None], dict[str, Any], str]] = [
    ("none", [], {}, ""),
    ("compact", [json.dumps(A)], A["auths"], ""),
    ("the-later-source-wins", [json.dumps(A), json.dumps(B)], {**A["auths"], **B["auths"]}, ""),
    ("pretty-printed", [json.dumps(B, indent=2)], B["auths"], ""),
    ("absent-optional-secret", [None, json.dumps(A)], A["auths"], ""),
    ("empty-auths", [json.dumps({"auths": {}}), json.dumps(A)], A["auths"], ""),
    ("helpers-skipped", [json.dumps({"auths": {"x": {"auth": "eDp5"}}, "credHelpers": {"r": "h"}}), json.dumps(A)],
     A["auths"], "not a dockerconfigjson"),
    ("legacy-dockercfg-skipped", ['{"r1:5000": {"auth": "YTpi"}}'], {}, "not a dockerconfigjson"),
]


@pytest.mark.parametrize(("case", "documents", "expected", "says"), PULL_AUTHS, ids=[p[0] for p in PULL_AUTHS])
def test_the_pull_auth_script_merges_what_it_finds(tmp_path: Path, case: str, documents: list[str | None],
                                                    expected: dict[str, Any], says: str) -> None:
    result, merged = run_pull_auth(tmp_path, documents)
    assert result.returncode == 0, result.stderr
    assert json.loads(merged) == {"auths": expected}
    assert says in result.stderr
    assert "YTpi" not in result.stdout + result.stderr  # it never prints a credential


SETTINGS = OperatorSettings(registry="registry.test:5000", builder="buildah")
ACCESS = BuildAccess(pull_secret="envkiln-x-1-pull", tenant_pull_secrets=("team-pull", "team-mirror"),
                     ca_configmap="envkiln-x-ca")


def containers(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pod = job["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}


def mounted_volumes(container: dict[str, Any]) -> set[str]:
    return {m["name"] for m in container.get("volumeMounts", [])}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


@pytest.mark.parametrize("make_job", [buildah_job, kaniko_job], ids=["buildah", "kaniko"])
def test_only_pull_auth_mounts_the_pull_credentials_and_the_build_gets_one_file(make_job: Any) -> None:
    build = build_for(PIP_ENV["spec"])
    job = make_job(build, 1, SETTINGS, "envkiln-x-1-push", ACCESS)
    by_name = containers(job)
    pod = job["spec"]["template"]["spec"]
    order = [c["name"] for c in pod["initContainers"]]
    assert order.index("pull-auth") < order.index("build")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["pull-admin"]["secret"] == {"secretName": "envkiln-x-1-pull", "optional": False,
                                               "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}
    assert [volumes[f"pull-tenant-{i}"]["secret"]["secretName"] for i in (0, 1)] == ["team-pull", "team-mirror"]
    assert all(volumes[f"pull-tenant-{i}"]["secret"]["optional"] for i in (0, 1))
    sources = {"pull-admin", "pull-tenant-0", "pull-tenant-1"}
    for name, container in by_name.items():
        holds = mounted_volumes(container) & (sources | {"docker-config"})
        expected = sources if name == "pull-auth" else {"docker-config"} if name == "push" else set()
        assert holds == expected, name  # each credential reaches only the container that uses it
    assert env_of(by_name["pull-auth"])["ENVKILN_PULL_SOURCES"].split() == [
        "/pull-sources/pull-admin/config.json", "/pull-sources/pull-tenant-0/config.json",
        "/pull-sources/pull-tenant-1/config.json"]  # the namespace's own come last: they win
    build_env = env_of(by_name["build"])
    assert build_env["REGISTRY_AUTH_FILE"] == "/pull-auth/config.json" and build_env["DOCKER_CONFIG"] == "/pull-auth"
    assert {"name": "pull-auth", "mountPath": "/pull-auth", "readOnly": True} in by_name["build"]["volumeMounts"]
    assert "pull-auth" not in mounted_volumes(by_name["push"])
    assert by_name["pull-auth"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("make_job", [buildah_job, kaniko_job], ids=["buildah", "kaniko"])
def test_the_ca_bundle_reaches_the_build_and_push_containers(make_job: Any) -> None:
    job = make_job(build_for(PIP_ENV["spec"]), 1, SETTINGS, None, BuildAccess(ca_configmap="envkiln-x-ca"))
    by_name = containers(job)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["registry-ca"] == {"name": "registry-ca", "configMap": {"name": "envkiln-x-ca"}}
    for name in ("build", "push"):
        assert "registry-ca" in mounted_volumes(by_name[name])
        assert env_of(by_name[name])["SSL_CERT_DIR"] == "/etc/envkiln/ca"
    assert "pull-auth" not in by_name  # no pull credentials: no pull-auth container


@pytest.mark.parametrize("make_job", [buildah_job, kaniko_job], ids=["buildah", "kaniko"])
def test_without_credentials_or_ca_the_pod_is_what_it_was(make_job: Any) -> None:
    build = build_for(PIP_ENV["spec"])
    assert make_job(build, 1, SETTINGS, None) == make_job(build, 1, SETTINGS, None, BuildAccess())
    pod = make_job(build, 1, SETTINGS, None)["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    assert not {v["name"] for v in pod["volumes"]} & {"pull-auth", "registry-ca", "push-token"}


@pytest.mark.parametrize("make_job", [buildah_job, kaniko_job], ids=["buildah", "kaniko"])
def test_the_push_identity_token_reaches_the_push_container_only(make_job: Any) -> None:
    settings = SETTINGS.model_copy(update={
        "build_push_service_account": "envkiln-push", "build_push_token_audience": "registry.test",
        "build_push_env": {"AWS_REGION": "eu-west-1"}})
    job = make_job(build_for(PIP_ENV["spec"]), 1, settings, None, ACCESS)
    template = job["spec"]["template"]
    pod = template["spec"]
    assert pod["serviceAccountName"] == "envkiln-push"
    assert pod["automountServiceAccountToken"] is False  # no API token in any container
    token = next(v for v in pod["volumes"] if v["name"] == "push-token")
    assert token["projected"]["sources"] == [{"serviceAccountToken": {
        "audience": "registry.test", "expirationSeconds": 3600, "path": "token"}}]
    by_name = containers(job)
    assert [name for name, c in by_name.items() if "push-token" in mounted_volumes(c)] == ["push"]
    push_env = env_of(by_name["push"])
    assert push_env["WORKLOAD_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/envkiln/push-token/token"
    assert push_env["AWS_REGION"] == "eu-west-1"
    assert all("AWS_REGION" not in env_of(c) for name, c in by_name.items() if name != "push")
    annotations = template["metadata"]["annotations"]
    skipped = set(annotations["eks.amazonaws.com/skip-containers"].split(","))
    assert skipped == set(annotations["azure.workload.identity/skip-containers"].split(";"))
    assert set(by_name) - skipped == {"push"}  # the clouds' webhooks give their token to push alone


@pytest.mark.parametrize(("environ", "expected", "error"), [
    ({"ENVKILN_BUILD_PULL_CREDENTIALS": "ops-pull, mirror-pull"}, {"build_pull_credentials": ["ops-pull",
                                                                                               "mirror-pull"]}, None),
    ({"ENVKILN_BUILD_PUSH_ENV": '{"AWS_REGION": "eu-west-1"}'}, {"build_push_env": {"AWS_REGION": "eu-west-1"}}, None),
    ({"ENVKILN_BUILD_PUSH_ENV": '{"ENVKILN_X": "1"}'}, None, "ENVKILN_BUILD_PUSH_ENV"),
    ({"ENVKILN_BUILD_PUSH_ENV": "{"}, None, "ENVKILN_BUILD_PUSH_ENV: not valid JSON"),
    ({"ENVKILN_BUILD_PULL_SERVICE_ACCOUNT": ""}, {"build_pull_service_account": ""}, None),
    ({"ENVKILN_REGISTRY_CA_FILE": "/etc/envkiln/registry-ca/ca.crt"},
     {"registry_ca_file": "/etc/envkiln/registry-ca/ca.crt"}, None),
])
def test_registry_settings(environ: dict[str, str], expected: dict[str, Any] | None, error: str | None) -> None:
    if error is not None:
        with pytest.raises(SettingsError, match=error):
            OperatorSettings.from_env(environ)
        return
    settings = OperatorSettings.from_env(environ)
    assert expected is not None
    for key, value in expected.items():
        assert getattr(settings, key) == value


def test_a_namespace_adds_pull_credentials_to_the_defaults() -> None:
    defaults = BuildPlacement(pull_credentials=["ops-pull"])
    overrides = {"team": BuildPlacement.model_validate({"pullCredentials": ["team-extra", "ops-pull"]})}
    assert effective_placement(defaults, overrides, "team").pull_credentials == ["ops-pull", "team-extra"]
    assert effective_placement(defaults, overrides, "other").pull_credentials == ["ops-pull"]


# The operator's lookups through a credential helper.

class Helper:
    def __init__(self, answers: list[Credentials | Exception]):
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    def __call__(self, name: str, registry: str, timeout: float) -> Credentials:
        self.asked.append((name, registry))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class deadline:
    def remaining(self) -> float:
        return 5.0


def test_a_credential_helper_answers_for_its_registry_and_is_asked_again_after_its_ttl() -> None:
    helper = Helper([Credentials("u", "one"), Credentials("u", "two")])
    registry = RegistryClient(credential_helpers={"r.test": "envkiln-test"}, helper=helper, helper_ttl=60.0)
    assert registry._credentials("r.test", deadline()) == Credentials("u", "one")
    assert registry._credentials("r.test", deadline()) == Credentials("u", "one")  # kept
    assert registry._credentials("other.test", deadline()) is None  # no helper there
    assert helper.asked == [("envkiln-test", "r.test")]
    registry.helper_ttl = 0.0
    assert registry._credentials("r.test", deadline()) == Credentials("u", "two")


def test_a_static_credential_wins_over_a_helper_and_a_failing_helper_is_unavailable() -> None:
    helper = Helper([CredentialHelperFailed("credential helper docker-credential-x failed (exit 1)")])
    registry = RegistryClient(credentials={"static.test": Credentials("s", "p")}, helper=helper,
                              credential_helpers={"static.test": "x", "r.test": "x"})
    assert registry._credentials("static.test", deadline()) == Credentials("s", "p")
    with pytest.raises(RegistryUnavailable, match="docker-credential-x failed"):
        registry._credentials("r.test", deadline())
    assert helper.asked == [("x", "r.test")]


def write_helper(directory: Path, name: str, body: str) -> None:
    path = directory / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize(("body", "expected"), [
    ('read host; printf \'{"ServerURL":"%s","Username":"u","Secret":"s-%s"}\' "$host" "$host"\n',
     Credentials("u", "s-r.test:5000")),
    ("exit 3\n", r"failed \(exit 3\)"),
    ("echo not json\n", "no Username/Secret JSON"),
    ('echo \'{"Username": "u"}\'\n', "no Username/Secret JSON"),
    ("sleep 5\n", "did not answer within"),
])
def test_run_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str,
                               expected: Credentials | str) -> None:
    write_helper(tmp_path, "envkiln-unit", body)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    if isinstance(expected, Credentials):
        assert run_credential_helper("envkiln-unit", "r.test:5000", 2.0) == expected
    else:
        with pytest.raises(CredentialHelperFailed, match=expected) as raised:
            run_credential_helper("envkiln-unit", "r.test:5000", 0.5)
        assert "not json" not in str(raised.value)  # never quotes what the helper printed


def test_a_missing_credential_helper_says_where_it_must_be() -> None:
    with pytest.raises(CredentialHelperFailed, match="not on the operator's PATH"):
        run_credential_helper("envkiln-absent-helper", "r.test", 1.0)


# What a Job builder creates.

def cluster_with(*secrets: tuple[str, dict[str, Any]], account: list[str] | None = None) -> FakeKube:
    kube = FakeKube()
    for name, document in secrets:
        kube.put("Secret", "ops", {"metadata": {"name": name}, "data": {
            ".dockerconfigjson": base64.b64encode(json.dumps(document).encode()).decode()}})
    if account is not None:
        kube.put("ServiceAccount", "ns", {"metadata": {"name": "default"},
                                          "imagePullSecrets": [{"name": n} for n in account]})
    return kube


def job_builder(kube: FakeKube, ca: str | None = None, **settings: Any) -> BuildahJobBuilder:
    return BuildahJobBuilder(kube, OperatorSettings(registry="registry.test:5000", builder="buildah",
                                                    operator_namespace="ops", **settings), None, ca)


def test_the_administrators_pull_credentials_are_merged_into_a_secret_the_job_owns() -> None:
    kube = cluster_with(("ops-pull", A), ("mirror-pull", B), account=["team-pull"])

    def no_tenant_secret_reads(verb: str, kind: str, namespace: str, name: str) -> None:
        if (verb, kind) == ("get", "Secret") and namespace != "ops":
            raise AssertionError("the tenant's Secret is mounted, never read")
    kube.intercept = no_tenant_secret_reads
    build = build_for(PIP_ENV["spec"])
    name = job_builder(kube, build_pull_credentials=["ops-pull", "mirror-pull"]).start(build, 1)
    secret = kube.objects[("Secret", "ns", f"{name}-pull")]
    merged = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert merged == {"auths": {**B["auths"], **A["auths"]}}  # the first Secret naming a registry wins
    job = kube.objects[("Job", "ns", name)]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["pull-admin"]["secret"]["secretName"] == f"{name}-pull"
    assert volumes["pull-tenant-0"]["secret"]["secretName"] == "team-pull"


def test_a_missing_pull_credential_stops_the_build_naming_the_secret_and_the_setting() -> None:
    kube = cluster_with(("ops-pull", A))
    with pytest.raises(BuildCannotStart) as raised:
        job_builder(kube, build_pull_credentials=["ops-pull", "gone"]).start(build_for(PIP_ENV["spec"]), 1)
    assert raised.value.reason == "NoPullCredentials"
    assert "ENVKILN_BUILD_PULL_CREDENTIALS" in raised.value.message and "ops/gone is missing" in raised.value.message
    assert not [w for w in kube.writes if w[1] == "Job"]  # nothing started


def test_no_service_account_or_setting_means_no_tenant_pull_secrets() -> None:
    kube = cluster_with()
    build = build_for(PIP_ENV["spec"])
    name = job_builder(kube).start(build, 1)
    assert "pull-auth" not in containers(kube.objects[("Job", "ns", name)])
    kube = cluster_with(account=["team-pull"])
    name = job_builder(kube, build_pull_service_account="").start(build, 1)
    assert "pull-auth" not in containers(kube.objects[("Job", "ns", name)])


def test_the_ca_bundle_is_copied_into_the_builds_namespace_once() -> None:
    kube = cluster_with()
    build = build_for(PIP_ENV["spec"])
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    builder = job_builder(kube, ca=pem)
    name = builder.start(build, 1)
    configmap = kube.objects[("ConfigMap", "ns", f"envkiln-{build['spec']['hash']}-ca")]
    assert configmap["data"] == {"ca.crt": pem} and configmap["immutable"] is True
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == build["metadata"]["uid"]
    volumes = {v["name"]: v for v in kube.objects[("Job", "ns", name)]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["registry-ca"]["configMap"]["name"] == configmap["metadata"]["name"]
    second = builder.start(build, 2)  # the next attempt follows the same ConfigMap (create-or-get: a 409)
    assert [w for w in kube.writes if w[1] == "ConfigMap" and w[2].endswith("-ca")] == [
        ("create", "ConfigMap", configmap["metadata"]["name"])]
    volumes = {v["name"]: v for v in kube.objects[("Job", "ns", second)]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["registry-ca"]["configMap"]["name"] == configmap["metadata"]["name"]


def test_service_account_models_are_what_the_builder_reads() -> None:
    account = client.V1ServiceAccount(image_pull_secrets=[client.V1LocalObjectReference(name="a")])
    assert [ref.name for ref in account.image_pull_secrets] == ["a"]


def test_a_changed_ca_configmap_stops_the_build_instead_of_trusting_it() -> None:
    kube = cluster_with()
    build = build_for(PIP_ENV["spec"])
    name = f"envkiln-{build['spec']['hash']}-ca"
    builder = job_builder(kube, ca="-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n")
    kube.put("ConfigMap", "ns", {"metadata": {"name": name, "ownerReferences": [{
        "apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild", "name": build["metadata"]["name"],
        "uid": build["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
        "immutable": True, "data": {"ca.crt": "old"}})
    with pytest.raises(BuildCannotStart, match="does not hold the registry CA bundle"):
        builder.start(build, 1)
    kube.objects[("ConfigMap", "ns", name)]["metadata"]["ownerReferences"] = []  # someone else's: never used
    with pytest.raises(BuildCannotStart) as raised:
        builder.start(build, 1)
    assert raised.value.reason == "NameTaken"


@pytest.mark.parametrize(("content", "error"), [
    ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", None),
    ("not a certificate", "holds no PEM certificate"),
    (None, "cannot read"),
])
def test_the_ca_bundle_is_read_once_at_start(tmp_path: Path, content: str | None, error: str | None) -> None:
    from envkiln.reconcile.context import read_ca_bundle

    path = tmp_path / "ca.crt"
    if content is not None:
        path.write_text(content)
    settings = OperatorSettings(registry_ca_file=str(path))
    if error is None:
        assert read_ca_bundle(settings) == content
    else:
        with pytest.raises(RuntimeError, match=f"ENVKILN_REGISTRY_CA_FILE: .*{error}"):
            read_ca_bundle(settings)
    assert read_ca_bundle(OperatorSettings()) is None
