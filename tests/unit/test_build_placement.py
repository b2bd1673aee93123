"""Where build pods run and what environment they get (issue #23): the pure merge of the defaults
with a namespace's override, as a table; the settings that carry them; the Job both Job builders
make from them; and that a build env value with a password never reaches a status."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from envkiln.adapters.builders import AttemptState
from envkiln.adapters.builders.buildah import buildah_job
from envkiln.adapters.builders.jobs import JobBuilder, build_env_files
from envkiln.adapters.builders.kaniko import BUILD_ENV_SCRIPT, kaniko_job
from envkiln.core.definition import definition_hash
from envkiln.core.names import build_key, job_name
from envkiln.core.placement import BuildPlacement, effective_placement, mask_credentials
from envkiln.core.settings import OperatorSettings, SettingsError
from fakes import FakeKube
from helpers import PIP_ENV, build_for, spec_of

TAINT: dict[str, object] = {"key": "envkiln.dev/builds", "operator": "Equal", "value": "only", "effect": "NoSchedule"}
GPU = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["builds"]}]}]}}}
DEFAULTS = BuildPlacement(
    node_selector={"pool": "builds", "zone": "a"}, tolerations=[TAINT], priority_class_name="low",
    env={"HTTPS_PROXY": "http://proxy:3128", "PIP_INDEX_URL": "https://mirror/simple"}, pull_secrets=["mirror"],
    resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "8Gi"}})

# (id, override of namespace "team-a" (None: no override), namespace asked, expected placement fields)
PLACEMENTS: list[tuple[str, dict[str, Any] | None, str, dict[str, Any]]] = [
    ("no-override-gets-the-defaults", None, "team-a", DEFAULTS.model_dump()),
    ("another-namespace-gets-the-defaults", {"nodeSelector": {"pool": "gpu"}}, "team-b", DEFAULTS.model_dump()),
    ("node-selector-merges-namespace-wins", {"nodeSelector": {"pool": "gpu", "disk": "ssd"}}, "team-a",
     {**DEFAULTS.model_dump(), "node_selector": {"pool": "gpu", "zone": "a", "disk": "ssd"}}),
    ("empty-value-removes-a-key", {"nodeSelector": {"zone": ""}, "env": {"HTTPS_PROXY": ""}}, "team-a",
     {**DEFAULTS.model_dump(), "node_selector": {"pool": "builds"}, "env": {"PIP_INDEX_URL": "https://mirror/simple"}}),
    ("env-merges-namespace-wins", {"env": {"PIP_INDEX_URL": "https://team-a/simple", "NO_PROXY": ".svc"}}, "team-a",
     {**DEFAULTS.model_dump(), "env": {"HTTPS_PROXY": "http://proxy:3128", "PIP_INDEX_URL": "https://team-a/simple",
                                       "NO_PROXY": ".svc"}}),
    ("tolerations-and-pull-secrets-add-up-once", {"tolerations": [GPU, TAINT], "pullSecrets": ["team", "mirror"]},
     "team-a", {**DEFAULTS.model_dump(), "tolerations": [TAINT, GPU], "pull_secrets": ["mirror", "team"]}),
    ("scalars-and-affinity-replace", {"priorityClassName": "high", "runtimeClassName": "gvisor",
                                      "affinity": AFFINITY}, "team-a",
     {**DEFAULTS.model_dump(), "priority_class_name": "high", "runtime_class_name": "gvisor", "affinity": AFFINITY}),
    ("resources-merge-per-key", {"resources": {"limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}}, "team-a",
     {**DEFAULTS.model_dump(), "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                             "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}}),
]


@pytest.mark.parametrize(("case", "override", "namespace", "expected"), PLACEMENTS, ids=[c[0] for c in PLACEMENTS])
def test_effective_placement(case: str, override: dict[str, Any] | None, namespace: str,
                             expected: dict[str, Any]) -> None:
    overrides = {} if override is None else {"team-a": BuildPlacement.model_validate(override)}
    assert effective_placement(DEFAULTS, overrides, namespace).model_dump() == expected


# (id, text, known secret values, expected)
MASKS: list[tuple[str, str, list[str], str]] = [
    ("url-with-password", "Looking in https://bob:s3cret@pypi.corp/simple now", [],
     "Looking in https://***@pypi.corp/simple now"),
    ("several-urls", "a http://u:p@x/ b socks5://v:q@y:1080", [], "a http://***@x/ b socks5://***@y:1080"),
    ("url-without-userinfo-unchanged", "https://pypi.corp/simple and user@example.com", [],
     "https://pypi.corp/simple and user@example.com"),
    ("path-with-at-unchanged", "https://host/a@b", [], "https://host/a@b"),
    ("known-value-quoted", "ERROR: index 'https://bob:s3cret@pypi.corp/simple' refused", [
        "https://bob:s3cret@pypi.corp/simple"], "ERROR: index 'https://***@pypi.corp/simple' refused"),
    ("known-value-without-credentials-kept", "proxy http://proxy:3128 down", ["http://proxy:3128"],
     "proxy http://proxy:3128 down"),
]


@pytest.mark.parametrize(("case", "text", "secrets", "expected"), MASKS, ids=[c[0] for c in MASKS])
def test_mask_credentials(case: str, text: str, secrets: list[str], expected: str) -> None:
    assert mask_credentials(text, secrets) == expected
    assert "s3cret" not in mask_credentials(text, secrets)


# (id, environment, expected default placement fields, or the start of the error)
SETTINGS_CASES: list[tuple[str, dict[str, str], dict[str, Any] | str]] = [
    ("node-selector-as-pairs", {"ENVKILN_BUILD_NODE_SELECTOR": "pool=builds, zone=a"},
     {"node_selector": {"pool": "builds", "zone": "a"}}),
    ("node-selector-as-json", {"ENVKILN_BUILD_NODE_SELECTOR": '{"pool": "builds"}'},
     {"node_selector": {"pool": "builds"}}),
    ("tolerations-json", {"ENVKILN_BUILD_TOLERATIONS": json.dumps([TAINT])}, {"tolerations": [TAINT]}),
    ("empty-json-settings-are-unset", {"ENVKILN_BUILD_TOLERATIONS": "", "ENVKILN_BUILD_AFFINITY": "",
                                       "ENVKILN_BUILD_ENV": ""}, {"tolerations": [], "affinity": None, "env": {}}),
    ("pull-secrets-list", {"ENVKILN_BUILD_PULL_SECRETS": "a, b"}, {"pull_secrets": ["a", "b"]}),
    ("classes", {"ENVKILN_BUILD_PRIORITY_CLASS_NAME": "low", "ENVKILN_BUILD_RUNTIME_CLASS_NAME": "kata"},
     {"priority_class_name": "low", "runtime_class_name": "kata"}),
    ("resources-over-the-single-values", {"ENVKILN_BUILD_RESOURCES": '{"limits": {"nvidia.com/gpu": "1"}}',
                                          "ENVKILN_BUILD_MEMORY_LIMIT": "4Gi"},
     {"resources": {"requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                    "limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "1"}}}),
    ("bad-json-names-the-variable-not-the-value", {"ENVKILN_BUILD_ENV": '{"PIP_INDEX_URL": "https://u:s3cret@x'},
     "ENVKILN_BUILD_ENV: not valid JSON"),
    ("reserved-env-name", {"ENVKILN_BUILD_ENV": '{"ENVKILN_IMAGE": "x"}'}, "ENVKILN_BUILD_ENV"),
    ("newline-in-env-value", {"ENVKILN_BUILD_ENV": '{"A": "x\\ny"}'}, "ENVKILN_BUILD_ENV"),
    ("unknown-override-field", {"ENVKILN_BUILD_NAMESPACES": '{"team-a": {"nodeSelecter": {}}}'},
     "ENVKILN_BUILD_NAMESPACES"),
    ("resources-other-keys", {"ENVKILN_BUILD_RESOURCES": '{"claims": {}}'}, "ENVKILN_BUILD_RESOURCES"),
    ("pairs-without-equals", {"ENVKILN_BUILD_NODE_SELECTOR": "pool"}, "ENVKILN_BUILD_NODE_SELECTOR"),
]


@pytest.mark.parametrize(("case", "environ", "expected"), SETTINGS_CASES, ids=[c[0] for c in SETTINGS_CASES])
def test_build_placement_settings(case: str, environ: dict[str, str], expected: dict[str, Any] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(SettingsError) as error:
            OperatorSettings.from_env(environ)
        assert str(error.value).startswith(expected), str(error.value)
        assert "s3cret" not in str(error.value), "a settings error never quotes a value"
        return
    placement = OperatorSettings.from_env(environ).build_placement("any").model_dump()
    assert {key: placement[key] for key in expected} == expected


SECRET_INDEX = "https://bob:s3cret@pypi.corp/simple"
PLACED = OperatorSettings(
    registry="reg.local:5000", insecure_registry=True, buildah_image="reg.local:5000/builder:1",
    buildah_push_image="reg.local:5000/push:1", build_node_selector={"pool": "builds"}, build_tolerations=[TAINT],
    build_priority_class_name="low", build_runtime_class_name="kata", build_pull_secrets=["mirror"],
    build_env={"PIP_INDEX_URL": SECRET_INDEX, "HTTPS_PROXY": "http://proxy:3128"},
    build_namespaces={"ns": BuildPlacement.model_validate({"affinity": AFFINITY, "env": {"NO_PROXY": ".svc"},
                                                           "resources": {"limits": {"nvidia.com/gpu": "1"}}})})


@pytest.mark.parametrize("builder", ["buildah", "kaniko"])
def test_every_build_pod_gets_its_namespaces_placement(builder: str) -> None:
    build = build_for(PIP_ENV["spec"])  # namespace "ns"
    before = json.dumps(build, sort_keys=True)
    job = {"buildah": buildah_job, "kaniko": kaniko_job}[builder](build, 1, PLACED, "push-secret")
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "builds"} and pod["tolerations"] == [TAINT]
    assert pod["affinity"] == AFFINITY, "the namespace's override"
    assert pod["priorityClassName"] == "low" and pod["runtimeClassName"] == "kata"
    assert pod["imagePullSecrets"] == [{"name": "mirror"}]
    names = [c["name"] for c in pod["initContainers"]]
    assert names == (["context", "build-env", "build"] if builder == "kaniko" else ["context", "build"])
    context, build_container = pod["initContainers"][0], pod["initContainers"][-1]
    [push] = pod["containers"]
    env = {e["name"]: e["value"] for e in build_container["env"]}
    assert env["PIP_INDEX_URL"] == SECRET_INDEX and env["NO_PROXY"] == ".svc" and env["HTTPS_PROXY"]
    assert build_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert build_container["resources"]["limits"]["memory"] == PLACED.build_memory_limit
    for other in (context, push):  # they get the proxies, never the index (nor anything else of the build env)
        env_names = {e["name"] for e in other["env"]}
        assert {"HTTPS_PROXY", "NO_PROXY"} <= env_names and "PIP_INDEX_URL" not in env_names, other["name"]
    # The push credential stays in the push container only; the build env changes nothing of that.
    assert "docker-config" not in {m["name"] for m in build_container["volumeMounts"]}
    # No value is written into the Job's args or scripts, only into the build container's env.
    if builder == "kaniko":
        args = build_container["args"]
        assert "--build-arg=HTTPS_PROXY=$(HTTPS_PROXY)" in args, "proxies as predefined build args"
        assert not [a for a in args if "PIP_INDEX_URL" in a or "s3cret" in a], "an ARG would be in the history"
        writer = pod["initContainers"][1]
        assert {e["name"]: e["value"] for e in writer["env"]} == {
            "ENVKILN_BUILD_ENV_NAMES": "PIP_INDEX_URL", "PIP_INDEX_URL": SECRET_INDEX}
        assert writer["securityContext"]["runAsNonRoot"] is True and "docker-config" not in json.dumps(writer)
        assert {"name": "build-env", "mountPath": "/etc/pip.conf", "subPath": "pip.conf",
                "readOnly": True} in build_container["volumeMounts"]
    else:
        assert env["ENVKILN_BUILD_ENV_NAMES"] == "HTTPS_PROXY NO_PROXY PIP_INDEX_URL"
        assert "s3cret" not in build_container["command"][-1]
    assert SECRET_INDEX not in json.dumps(job["metadata"]) + json.dumps(pod["containers"])
    assert json.dumps(build, sort_keys=True) == before, "the EnvironmentBuild is not touched"


# (id, build env, expected pip.conf [global], expected .condarc)
ENV_FILES: list[tuple[str, dict[str, str], dict[str, str], dict[str, str]]] = [
    ("pip-options-as-pip-maps-them", {"PIP_INDEX_URL": "https://u:p%w@x/simple", "PIP_TRUSTED_HOST": "x",
                                      "PIP_EXTRA_INDEX_URL": "https://a/simple https://b/simple"},
     {"index-url": "https://u:p%w@x/simple", "trusted-host": "x",
      "extra-index-url": "https://a/simple https://b/simple"}, {}),
    ("conda-and-mamba-aliases", {"CONDA_CHANNEL_ALIAS": 'https://c"q\\z', "MAMBA_SSL_VERIFY": "false"},
     {}, {"channel_alias": 'https://c"q\\z', "ssl_verify": "false"}),
    ("other-variables-write-nothing", {"HTTPS_PROXY": "http://p:3128"}, {}, {}),
]


@pytest.mark.parametrize(("case", "env", "pip", "condarc"), ENV_FILES, ids=[c[0] for c in ENV_FILES])
def test_build_env_files_script(case: str, env: dict[str, str], pip: dict[str, str], condarc: dict[str, str],
                                tmp_path: Path) -> None:
    script = BUILD_ENV_SCRIPT.replace("/build-env", str(tmp_path))
    subprocess.run(["sh", "-c", script], check=True, env={
        "PATH": os.environ["PATH"], "ENVKILN_BUILD_ENV_NAMES": " ".join(sorted(env)), **env})
    parser = configparser.RawConfigParser()  # as pip reads it
    parser.read(tmp_path / "pip.conf")
    assert dict(parser["global"]) == pip
    assert (yaml.safe_load((tmp_path / "condarc").read_text()) or {}) == condarc
    assert set(build_env_files(env)) == {name for name, found in (("pip.conf", pip), ("condarc", condarc)) if found}


def test_the_build_env_is_not_part_of_the_definition() -> None:
    spec = PIP_ENV["spec"]
    build = build_for(spec)
    assert build["spec"]["hash"] == definition_hash(spec_of({**PIP_ENV, "spec": spec}), None)
    # The render reads PIP_INDEX_URL at build time (to hand it to uv); it never sets one.
    plan = json.dumps(build["spec"]["plan"])
    assert "s3cret" not in json.dumps(build) and "PIP_INDEX_URL=" not in plan and "$PIP_INDEX_URL" in plan


def failed_job(build: dict[str, Any], log: str) -> FakeKube:
    """A cluster holding attempt 1 of `build`: a failed Job whose build container logged `log`."""
    kube = FakeKube()
    namespace, name = build["metadata"]["namespace"], job_name(build_key(build["spec"]), 1)
    owner = {"apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild", "name": build["metadata"]["name"],
             "uid": build["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    kube.put("Job", namespace, {
        "metadata": {"name": name, "uid": "job-uid", "ownerReferences": [owner],
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimit", "message": ""}],
                   "active": 0, "succeeded": 0, "failed": 1}})
    kube.put("Pod", namespace, {
        "metadata": {"name": f"{name}-pod", "labels": {"batch.kubernetes.io/controller-uid": "job-uid"},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": "job-uid",
                                          "controller": True, "blockOwnerDeletion": True}],
                     "creationTimestamp": "2026-01-01T00:00:01Z"},
        "status": {"initContainerStatuses": [{
            "name": "build", "image": "i", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "message": log, "reason": "Error"}}}], "containerStatuses": []}})
    return kube


def test_a_password_in_the_build_env_never_reaches_the_log_tail() -> None:
    build = build_for(PIP_ENV["spec"])
    log = (f"ERROR: Could not fetch {SECRET_INDEX}/numpy/\nconnecting to https://alice:pw@other.corp/x failed\n"
           f"env: PIP_INDEX_URL={SECRET_INDEX}")
    builder = JobBuilder(failed_job(build, log), PLACED)
    result = builder.observe(build, 1)
    assert result.state is AttemptState.FAILED and result.log_tail is not None
    assert "s3cret" not in result.log_tail and "alice:pw" not in result.log_tail, result.log_tail
    assert "https://***@pypi.corp/simple/numpy/" in result.log_tail and result.log_tail.startswith("[build] ")
