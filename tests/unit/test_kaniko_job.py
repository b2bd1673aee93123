"""The Kaniko Job manifest: flags, security, resources, context sources."""

from __future__ import annotations

from typing import Any

from envkiln.builders.kaniko import context_configmap, job_name, kaniko_job
from envkiln.definition import definition_hash, image_name
from envkiln.models import EnvironmentBuildSpec
from envkiln.render import render
from envkiln.settings import OperatorSettings
from helpers import PIP_ENV, spec_of

SETTINGS = OperatorSettings(registry="reg.local:5000", insecure_registry=True, build_memory_limit="16Gi")


def build_for(doc: dict[str, Any]) -> dict[str, Any]:
    spec = spec_of(doc)
    value = definition_hash(spec)
    build_spec = EnvironmentBuildSpec(hash=value, image=image_name(value, SETTINGS.registry), plan=render(spec, value))
    return {"apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild",
            "metadata": {"name": f"envb-{value}", "namespace": "ns", "uid": "uid-1"}, "spec": build_spec.to_kube()}


def test_job_for_rendered_context() -> None:
    build = build_for(PIP_ENV)
    value = build["spec"]["hash"]
    job = kaniko_job(build, 2, SETTINGS, with_credentials=True)
    assert job["metadata"]["name"] == job_name(value, 2) and len(job["metadata"]["name"]) <= 63
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert "--context=dir:///workspace" in args and "--dockerfile=/workspace/Dockerfile" in args
    assert f"--destination=reg.local:5000/envkiln/env_{value}:{value}" in args
    assert f"--destination=reg.local:5000/envkiln/env_{value}:latest" in args
    assert "--cache-repo=reg.local:5000/envkiln/cache" in args
    assert "--insecure-registry=reg.local:5000" in args and "--insecure" not in args
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert container["securityContext"] == {"privileged": False, "allowPrivilegeEscalation": False}
    assert container["resources"]["limits"]["memory"] == "16Gi"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"context": "/workspace", "docker-config": "/kaniko/.docker"}
    secret = next(v for v in pod["volumes"] if v["name"] == "docker-config")["secret"]
    assert secret["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    assert job == kaniko_job(build, 2, SETTINGS, with_credentials=True), "pure: same inputs, same Job"


def test_context_configmap_holds_the_plan() -> None:
    build = build_for(PIP_ENV)
    configmap = context_configmap(build)
    assert configmap is not None
    assert set(configmap["data"]) == {"Dockerfile", "requirements.txt"}


def test_git_and_configmap_contexts() -> None:
    git = build_for({**PIP_ENV, "spec": {"build": {"git": {"url": "https://github.com/o/r.git", "ref": "v1.2",
                                                           "path": "img"}, "dockerfilePath": "Dockerfile.gpu"}}})
    args = kaniko_job(git, 1, SETTINGS, False)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--context=git://github.com/o/r.git#refs/heads/v1.2" in args
    assert "--context-sub-path=img" in args and "--dockerfile=Dockerfile.gpu" in args
    assert context_configmap(git) is None
    spec = {"build": {"configMap": {"name": "user-ctx"}}}
    doc = {**PIP_ENV, "spec": spec}
    value = definition_hash(spec_of(doc), {"Dockerfile": "FROM x"})
    build_spec = EnvironmentBuildSpec(hash=value, image=image_name(value, "r:1"), plan=render(spec_of(doc), value))
    build = {"metadata": {"name": "b", "namespace": "ns", "uid": "u"}, "spec": build_spec.to_kube()}
    pod = kaniko_job(build, 1, SETTINGS, False)["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "context", "configMap": {"name": "user-ctx"}}]
