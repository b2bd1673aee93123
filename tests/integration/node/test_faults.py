"""Faults on the real node (issue 27): the operator killed, the API server, the registry, containerd
and the kubelet restarted, the webhook's active replica killed, build pods and Jobs deleted by hand,
while in-cluster buildah builds and gated training pods really run.

Each test asserts convergence with nothing lost and nothing duplicated: one EnvironmentBuild and one
successful build Job (one image) per definition, the registry holding every recorded digest,
`status.versions` intact, every gated pod released exactly once (gated -> ungated once, its image set
once) and running on its Environment's digest. Nothing here writes a Job's or a pod's status.

Marked `faults`: not in `make test` (pyproject's addopts deselect them); `make faults` or
`pytest tests/integration/node -m faults` runs them. Results: docs/reliability.md."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness.operator import OperatorProcess
from node_helpers import (
    OPERATOR_SELECTOR,
    AdmissionProbe,
    PodHistory,
    active_operator,
    build_pods,
    cat_job,
    chart_release,
    job_pod,
    operator_logs,
    registry_digest,
    registry_holds,
    running_in,
    small_spec,
    terminated_ok,
    wait_job_complete,
)
from operator_helpers import Envs, condition, environment, hash_of, wait_for

pytestmark = pytest.mark.faults


def report(name: str, **numbers: Any) -> None:
    """One line per run, for docs/reliability.md."""
    print(f"\nFAULTS {name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)


def assert_converged(envs: Envs, specs: dict[str, list[dict[str, Any]]], timeout: float,
                     diagnostics: Callable[[], str]) -> dict[str, dict[str, Any]]:
    """Every Environment Ready on its last definition, `status.versions` one entry per version in
    order (each with its definition's hash and the image the registry holds), exactly one
    EnvironmentBuild per definition, and one successful build Job among one Job per attempt."""
    statuses = {}
    for name in specs:
        statuses[name] = envs.wait_phase(name, "Ready", timeout=timeout, diagnostics=diagnostics)
    builds = {b["spec"]["hash"]: b for b in envs.builds()}
    jobs: dict[str, list[client.V1Job]] = {}
    for job in envs.jobs():
        jobs.setdefault(job.metadata.labels["envkiln.dev/hash"], []).append(job)
    hashes = [hash_of(spec) for versions in specs.values() for spec in versions]
    assert len(set(hashes)) == len(hashes), "distinct definitions"
    assert sorted(builds) == sorted(hashes) and len(envs.builds()) == len(hashes), \
        f"one EnvironmentBuild per definition: {len(envs.builds())} for {len(hashes)}"
    for name, versions in specs.items():
        status = statuses[name]
        assert status["hash"] == hash_of(versions[-1]), (name, status)
        assert condition(status, "Ready")["status"] == "True"
        assert status["imageDigest"] == registry_digest(status["image"]), (name, "the registry's digest")
        history = status.get("versions") or []
        assert [(v["version"], v["hash"]) for v in history] == [
            (str(i + 1), hash_of(spec)) for i, spec in enumerate(versions)], (name, history)
        for record, spec in zip(history, versions, strict=True):
            build = builds[hash_of(spec)]
            assert build["status"]["phase"] == "Succeeded", build["status"]
            assert record["imageRef"] == build["status"]["imageRef"], (name, record, build["status"])
            assert registry_holds(build["spec"]["image"], build["status"]["digest"]), build["status"]
    for value, build in builds.items():
        succeeded = [j for j in jobs.get(value, []) if j.status.succeeded]
        names = [j.metadata.name for j in jobs.get(value, [])]
        assert len(succeeded) == 1, f"one successful build Job for {value}: {names}"
        assert len(names) == build["status"]["attempts"], (value, names, build["status"])
    return statuses


# --- 1. the operator SIGKILLed at random points across in-cluster builds ---------------------------

@pytest.mark.timeout(2400)
def test_operator_killed_at_random_points_during_24_in_cluster_builds(
        node_api: client.ApiClient, node_namespace: str, node_base_image: str,
        buildah_operator: Callable[..., OperatorProcess]) -> None:
    """20 Environments, 4 of them moved to a version 2 once Ready: 24 in-cluster builds, 4 at a time.
    The operator is SIGKILLed every 2-12 s (seeded), and also whenever a build pod's push container
    has finished while its EnvironmentBuild has no digest yet (the window between the push and the
    record); it is started again after 0.2-3 s."""
    token = uuid.uuid4().hex[:8]
    specs = {f"kill-{i}": [small_spec(node_base_image, token, i)] for i in range(20)}
    bumped = [f"kill-{i}" for i in range(4)]
    envs = Envs(node_api, node_namespace)
    operator = buildah_operator(node_namespace, max_concurrent_builds="4", max_concurrent_builds_per_namespace="4")
    began = time.monotonic()
    for name, versions in specs.items():
        envs.create(environment(name, **versions[0]))
    rng = random.Random(20261207)
    kills: list[str] = []
    in_window: set[str] = set()  # builds whose push had finished and whose digest was not recorded at a kill
    deadline = began + 1500
    next_kill = time.monotonic() + rng.uniform(2, 12)
    last_kill = 0.0

    def pushed_not_recorded() -> list[str]:
        recorded = {b["metadata"]["name"] for b in envs.builds() if (b.get("status") or {}).get("digest")}
        return [pod.metadata.labels["envkiln.dev/build"] for pod in build_pods(envs.core, node_namespace)
                if terminated_ok(pod, "push") and pod.metadata.labels["envkiln.dev/build"] not in recorded]

    def kill(kind: str) -> None:
        nonlocal last_kill, next_kill
        operator.kill()
        kills.append(kind)
        if kind == "after-push":  # read once it is dead: nothing can record the digest meanwhile
            still = set(pushed_not_recorded())
            in_window.update(still)
        time.sleep(rng.uniform(0.2, 3.0))
        operator.start()
        last_kill = time.monotonic()
        next_kill = last_kill + rng.uniform(2, 12)

    while time.monotonic() < deadline:
        listed = envs.custom.list_namespaced_custom_object("envkiln.dev", "v1alpha1", node_namespace, "environments")
        phases = {e["metadata"]["name"]: e.get("status") or {} for e in listed["items"]}
        for name in bumped:
            if len(specs[name]) == 1 and phases[name].get("phase") == "Ready":
                specs[name].append(small_spec(node_base_image, token, f"{name}-v2"))
                envs.custom.patch_namespaced_custom_object(
                    "envkiln.dev", "v1alpha1", node_namespace, "environments", name,
                    {"spec": {"version": "2", "dockerSteps": specs[name][1]["dockerSteps"]}})
                phases[name] = {}
        if all(s.get("phase") == "Ready" and s.get("hash") == hash_of(specs[n][-1]) for n, s in phases.items()):
            break
        now = time.monotonic()
        if kills.count("after-push") < 6 and len(in_window) < 5 and now - last_kill > 4 and pushed_not_recorded():
            kill("after-push")
        elif now >= next_kill and kills.count("random") < 12:
            kill("random")
        time.sleep(0.1)
    statuses = assert_converged(envs, specs, timeout=max(60, deadline - time.monotonic()), diagnostics=operator.log)
    converged = time.monotonic() - began
    builds = envs.builds()
    assert len(builds) == 24
    assert all(b["status"]["attempts"] == 1 for b in builds), [b["status"]["attempts"] for b in builds]
    assert len(kills) >= 8, f"only {len(kills)} kills"
    assert in_window, "no kill landed between a finished push and the recorded digest"
    report("operator-kills", builds=len(builds), environments=len(statuses), kills=len(kills),
           after_push_kills=kills.count("after-push"), builds_killed_between_push_and_record=len(in_window),
           starts=operator.starts,
           attempts=sorted({b["status"]["attempts"] for b in builds}), converged_s=round(converged))


# --- shared by the tests with training pods ----------------------------------------------------------

def assert_trained(envs: Envs, history: PodHistory, job: str, status: dict[str, Any], expected: str,
                   diagnostics: Callable[[], str], gated: bool = True, timeout: float = 300) -> client.V1Pod:
    """The training Job completed, on its Environment's digest, printing what that image holds; its
    pod was released from the gate exactly once (its image set once, never changed after)."""
    wait_job_complete(envs.batch, envs.namespace, job, timeout, diagnostics)
    pods = envs.core.list_namespaced_pod(envs.namespace, label_selector=f"job-name={job}").items
    assert len(pods) == 1, f"one pod for {job}: {[p.metadata.name for p in pods]}"
    [pod] = pods
    assert pod.spec.containers[0].image == status["imageRef"], (job, pod.spec.containers[0].image, status["imageRef"])
    assert pod.status.container_statuses[0].image_id.endswith(status["imageDigest"]), pod.status.container_statuses
    log = envs.core.read_namespaced_pod_log(pod.metadata.name, envs.namespace, container="trainer")
    assert expected in log, (job, log)
    name = pod.metadata.name
    if gated:
        assert history.releases(name) == 1, (name, history.history(name))
        assert history.images(name) == ["placeholder", status["imageRef"]], (name, history.history(name))
    else:
        assert history.images(name) == [status["imageRef"]] and history.releases(name) == 0, history.history(name)
    return pod


def wait_gated(envs: Envs, job: str, history: PodHistory | None = None) -> client.V1Pod:
    """The Job's pod, admitted behind envkiln's scheduling gate with its image not set yet."""
    pod = wait_for(lambda: job_pod(envs.core, envs.namespace, job), timeout=60, what=f"the pod of {job}")
    seen = {"gates": [g.name for g in pod.spec.scheduling_gates or []], "image": pod.spec.containers[0].image,
            "node": pod.spec.node_name, "phase": pod.status.phase, "pod": pod.metadata.name,
            "created": str(pod.metadata.creation_timestamp), "managedFields": [
                (f.manager, f.operation, str(f.time)) for f in pod.metadata.managed_fields or []],
            "history": history.history(pod.metadata.name) if history else None}
    assert seen["gates"] == ["envkiln.dev/environment"], seen
    assert seen["image"] == "placeholder" and not seen["node"], seen
    return pod


def running_build_pod(envs: Envs, build: str, container: str, attempt: int = 1) -> client.V1Pod | None:
    """The build pod of `build` (attempt `attempt`) if `container` runs in it now."""
    for pod in build_pods(envs.core, envs.namespace):
        labels = pod.metadata.labels
        if labels["envkiln.dev/build"] == build and labels.get("envkiln.dev/attempt") == str(attempt) \
                and running_in(pod, container):
            return pod
    return None


def build_pod_in(envs: Envs, build: str, container: str, attempt: int = 1, timeout: float = 180,
                 diagnostics: Callable[[], str] | None = None) -> client.V1Pod:
    """The build pod of `build` (attempt `attempt`) once `container` runs in it."""
    return wait_for(lambda: running_build_pod(envs, build, container, attempt), timeout=timeout, interval=0.1,
                    what=f"{container} running in {build}'s build pod", diagnostics=diagnostics)


def all_running(envs: Envs, builds: list[str], container: str, timeout: float = 180,
                diagnostics: Callable[[], str] | None = None) -> None:
    """Until `container` has been seen running in each build's pod (attempt 1), all polled together: waited
    for one after another, a short build can finish before its turn comes (seen in one run)."""
    pending, deadline = set(builds), time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise AssertionError(f"{container} never seen running for {sorted(pending)}\n"
                                 f"{diagnostics() if diagnostics else ''}")
        pending = {build for build in pending if running_build_pod(envs, build, container) is None}
        time.sleep(0.1)


def build_of(envs: Envs, name: str, timeout: float = 60) -> str:
    return str(wait_for(lambda: envs.status(name).get("build"), timeout=timeout, what=f"{name}'s build"))


# --- 2. the API server restarted while builds run and gated pods wait --------------------------------

@pytest.mark.timeout(1200)
def test_apiserver_restarted_while_builds_run_and_gated_pods_wait(
        cluster: Any, node_api: client.ApiClient, node_namespace: str, node_base_image: str,
        buildah_operator: Callable[..., OperatorProcess], webhook: dict[str, str]) -> None:
    token = uuid.uuid4().hex[:8]
    specs = {f"api-{i}": [small_spec(node_base_image, token, i, "RUN sleep 12")] for i in range(3)}
    envs = Envs(node_api, node_namespace)
    operator = buildah_operator(node_namespace, **webhook)
    history = PodHistory(node_api, node_namespace)
    history.start()
    try:
        began = time.monotonic()
        for name, versions in specs.items():
            envs.create(environment(name, **versions[0]))
            envs.batch.create_namespaced_job(node_namespace, cat_job(f"train-{name}", name))
        for name in specs:
            wait_gated(envs, f"train-{name}", history)
        all_running(envs, [build_of(envs, name) for name in specs], "build", diagnostics=operator.log)
        restart_began = time.monotonic()
        cluster.control_plane.restart_apiserver()  # etcd keeps the data; nothing else is restarted
        down = time.monotonic() - restart_began
        specs["api-after"] = [small_spec(node_base_image, token, "after")]
        envs.create(environment("api-after", **specs["api-after"][0]))
        envs.batch.create_namespaced_job(node_namespace, cat_job("train-api-after", "api-after"))
        statuses = assert_converged(envs, specs, timeout=600, diagnostics=operator.log)
        converged = time.monotonic() - restart_began
        for name, status in statuses.items():
            assert_trained(envs, history, f"train-{name}", status, f"{token}-{name.removeprefix('api-')}",
                           operator.log, gated=name != "api-after" or "placeholder" in history.images(
                               job_pod(envs.core, node_namespace, "train-api-after").metadata.name))
        assert all(b["status"]["attempts"] == 1 for b in envs.builds()), [b["status"] for b in envs.builds()]
        assert operator.exited() is None and operator.starts == 1, "the operator rode through the restart"
    finally:
        history.stop()
    report("apiserver-restart", builds=len(envs.builds()), gated_pods=len(statuses), apiserver_down_s=round(down, 1),
           watch_reconnects=history.reconnects, converged_after_restart_s=round(converged),
           total_s=round(time.monotonic() - began))


# --- 3. the registry stopped in the middle of a push --------------------------------------------------

@pytest.mark.timeout(1200)
def test_registry_stopped_mid_push_never_records_a_missing_digest(
        cluster: Any, node_api: client.ApiClient, node_namespace: str, node_base_image: str,
        buildah_operator: Callable[..., OperatorProcess], webhook: dict[str, str]) -> None:
    """The registry stops while the push container runs and stays down for 25 s (longer than
    skopeo's own retries); the attempt fails with the push's message and the next one, after the
    backoff, pushes. No digest is recorded while the registry is down, and the one recorded is held."""
    token = uuid.uuid4().hex[:8]
    # 150 MB that do not compress: the push lasts seconds, not the blink it takes for a small layer.
    specs = {"pushed": [small_spec(node_base_image, token, "pushed", "RUN head -c 150000000 /dev/urandom > /big")]}
    envs = Envs(node_api, node_namespace)
    operator = buildah_operator(node_namespace, build_retry_limit="3", build_retry_backoff_seconds="15", **webhook)
    history = PodHistory(node_api, node_namespace)
    history.start()
    registry = cluster.registry
    try:
        envs.create(environment("pushed", **specs["pushed"][0]))
        envs.batch.create_namespaced_job(node_namespace, cat_job("train-pushed", "pushed"))
        wait_gated(envs, "train-pushed", history)
        build = build_of(envs, "pushed")
        repository = envs.build(build)["spec"]["image"].split("/", 1)[1].rsplit(":", 1)[0]
        uploads = f"/v2/{repository}/blobs/uploads/"

        def pushing() -> bool:  # the registry's access log shows the push container's first upload
            return uploads in registry.process.log_path.read_text(errors="replace")

        wait_for(pushing, timeout=300, interval=0.05, what="the push to start", diagnostics=operator.log)
        stopped = time.monotonic()
        registry.stop()
        [pod] = [p for p in build_pods(envs.core, node_namespace) if p.metadata.labels["envkiln.dev/attempt"] == "1"]
        assert terminated_ok(pod, "build") and not terminated_ok(pod, "push"), "stopped in the middle of the push"
        try:
            while time.monotonic() - stopped < 25:
                status = envs.build(build).get("status") or {}
                assert status.get("phase") != "Succeeded" and not status.get("digest"), \
                    f"a digest was recorded while the registry is down: {status}"
                assert envs.status("pushed").get("phase") != "Ready"
                time.sleep(0.5)
        finally:
            registry.start()
        restarted = time.monotonic()
        statuses = assert_converged(envs, specs, timeout=600, diagnostics=operator.log)
        converged = time.monotonic() - restarted
        status = envs.build(build)["status"]
        assert_trained(envs, history, "train-pushed", statuses["pushed"], f"{token}-pushed", operator.log)
    finally:
        history.stop()
    failed_events = [e.message for e in envs.events(build) if e.reason == "BuildFailed"]
    if status["attempts"] > 1:  # the attempt cut by the outage failed at the push, and says so
        assert any("[push]" in m for m in failed_events), failed_events
    report("registry-mid-push", attempts=status["attempts"], failed_attempt_messages=len(failed_events),
           registry_down_s=round(restarted - stopped, 1), converged_after_restart_s=round(converged),
           first_failure=(failed_events or ["-"])[0][:160].replace("\n", " "))


# --- 4. containerd and the kubelet restarted while a build pod and a training pod run -----------------

@pytest.mark.timeout(1200)
def test_containerd_and_kubelet_restarted_while_a_build_and_a_training_pod_run(
        cluster: Any, node_api: client.ApiClient, node_namespace: str, node_base_image: str,
        buildah_operator: Callable[..., OperatorProcess], webhook: dict[str, str]) -> None:
    token = uuid.uuid4().hex[:8]
    specs = {"trained": [small_spec(node_base_image, token, "trained")],
             "building": [small_spec(node_base_image, token, "building", "RUN sleep 30")]}
    envs = Envs(node_api, node_namespace)
    operator = buildah_operator(node_namespace, **webhook)
    history = PodHistory(node_api, node_namespace)
    history.start()
    try:
        envs.create(environment("trained", **specs["trained"][0]))
        envs.wait_phase("trained", "Ready", timeout=300, diagnostics=operator.log)
        # A training pod that runs through both restarts, and one gated behind a running build.
        envs.batch.create_namespaced_job(node_namespace, cat_job("train-trained", "trained",
                                                                 "cat /n; sleep 40; cat /n"))
        envs.create(environment("building", **specs["building"][0]))
        envs.batch.create_namespaced_job(node_namespace, cat_job("train-building", "building"))
        wait_gated(envs, "train-building", history)
        build_pod_in(envs, build_of(envs, "building"), "build", diagnostics=operator.log)
        wait_for(lambda: (pod := job_pod(envs.core, node_namespace, "train-trained")) is not None
                 and running_in(pod, "trainer"), timeout=120, what="the training pod running")
        began = time.monotonic()
        containerd_down = cluster.node.restart_containerd(downtime=3)
        kubelet_down = cluster.node.restart_kubelet(downtime=3)
        cluster.wait_ready()
        node_ready = time.monotonic() - began
        statuses = assert_converged(envs, specs, timeout=600, diagnostics=operator.log)
        converged = time.monotonic() - began
        trained = assert_trained(envs, history, "train-trained", statuses["trained"], f"{token}-trained",
                                 operator.log, gated=False)
        log = envs.core.read_namespaced_pod_log(trained.metadata.name, node_namespace, container="trainer")
        assert log.count(f"{token}-trained") == 2, f"the training pod ran through the restarts: {log!r}"
        assert trained.status.container_statuses[0].restart_count == 0
        assert_trained(envs, history, "train-building", statuses["building"], f"{token}-building", operator.log)
        attempts = envs.build(statuses["building"]["build"])["status"]["attempts"]
    finally:
        history.stop()
    report("containerd-kubelet-restart", containerd_down_s=round(containerd_down, 1),
           kubelet_down_s=round(kubelet_down, 1), node_ready_after_s=round(node_ready, 1),
           build_attempts=attempts, converged_s=round(converged))


# --- 6. a build pod deleted, a build pod evicted, a build Job deleted by hand -------------------------

@pytest.mark.timeout(1200)
def test_build_pod_deleted_evicted_and_job_deleted_mid_build(
        node_api: client.ApiClient, node_namespace: str, node_base_image: str,
        buildah_operator: Callable[..., OperatorProcess], webhook: dict[str, str]) -> None:
    """A lost pod fails its attempt (the Job has no retries of its own) and envkiln starts the next
    one; a Job deleted by hand is the same attempt started again. Gated pods wait through all of it."""
    token = uuid.uuid4().hex[:8]
    names = ("deleted", "evicted", "jobless")
    specs = {name: [small_spec(node_base_image, token, name, "RUN sleep 30")] for name in names}
    envs = Envs(node_api, node_namespace)
    operator = buildah_operator(node_namespace, build_retry_limit="2", **webhook)
    history = PodHistory(node_api, node_namespace)
    history.start()
    try:
        began = time.monotonic()
        for name in names:
            envs.create(environment(name, **specs[name][0]))
            envs.batch.create_namespaced_job(node_namespace, cat_job(f"train-{name}", name))
        for name in names:
            wait_gated(envs, f"train-{name}", history)
        builds = {name: build_of(envs, name) for name in names}
        deleted_jobs: list[client.V1Job] = []

        def strike(name: str, pod: client.V1Pod) -> None:
            if name == "deleted":
                envs.core.delete_namespaced_pod(pod.metadata.name, node_namespace, grace_period_seconds=0)
            elif name == "evicted":
                envs.core.create_namespaced_pod_eviction(pod.metadata.name, node_namespace, {
                    "apiVersion": "policy/v1", "kind": "Eviction",
                    "metadata": {"name": pod.metadata.name, "namespace": node_namespace}})
            else:
                [job] = [j for j in envs.jobs() if j.metadata.labels["envkiln.dev/build"] == builds[name]]
                envs.batch.delete_namespaced_job(job.metadata.name, node_namespace, propagation_policy="Background")
                deleted_jobs.append(job)
            assert (envs.build(builds[name]).get("status") or {}).get("phase") == "Building", name

        # Each fault as soon as its build container runs, whichever runs first, so that each lands mid-build
        # (struck one after another, the third build had finished by its turn in one run).
        pending, deadline = set(names), time.monotonic() + 180
        while pending:
            assert time.monotonic() < deadline, f"no build container ran for {sorted(pending)}\n{operator.log()}"
            for name in sorted(pending):
                pod = running_build_pod(envs, builds[name], "build")
                if pod is not None:
                    strike(name, pod)
                    pending.discard(name)
            time.sleep(0.1)
        [job] = deleted_jobs
        statuses = assert_converged(envs, specs, timeout=600, diagnostics=operator.log)
        converged = time.monotonic() - began
        for name in names:
            assert_trained(envs, history, f"train-{name}", statuses[name], f"{token}-{name}", operator.log)
        attempts = {name: envs.build(builds[name])["status"]["attempts"] for name in names}
        assert attempts == {"deleted": 2, "evicted": 2, "jobless": 1}, attempts
        for name in ("deleted", "evicted"):
            assert any(e.reason == "BuildFailed" for e in envs.events(builds[name])), name
        recreated = [j for j in envs.jobs() if j.metadata.labels["envkiln.dev/build"] == builds["jobless"]]
        assert [j.metadata.uid for j in recreated] != [job.metadata.uid], "the deleted Job was made again"
    finally:
        history.stop()
    report("build-pod-and-job-deleted", attempts=attempts, gated_pods=len(names), converged_s=round(converged))


# --- 5. two chart replicas, webhook failing closed: the active one SIGKILLed while pods are admitted ---

WEBHOOK_TIMEOUT = 10  # the chart's webhook.timeoutSeconds: how long the API server waits for a review


@pytest.mark.timeout(1800)
def test_active_replica_killed_while_pods_are_admitted(
        cluster: Any, node_api: client.ApiClient, node_registry_host: str, node_base_image: str,
        builder_image: str, tmp_path: Path) -> None:
    """The chart's two replicas (Kopf peering, every ready one answers the webhook, failurePolicy
    Fail). While three builds run, training Jobs are created and a probe creates labelled pods
    without pause, the active replica's process is SIGKILLed on the node. Labelled pods may be
    refused only for less than the webhook timeout after the kill, none is admitted without its
    image or gate, and the gated ones are released exactly once, by whichever replica acts."""
    with chart_release(cluster, node_api, node_registry_host, node_base_image, builder_image, tmp_path) as (
            system, tenant):
        core = client.CoreV1Api(node_api)
        envs = Envs(node_api, tenant)

        def logs() -> str:
            return operator_logs(core, system)

        def ready_replicas() -> list[client.V1Pod]:
            return [p for p in core.list_namespaced_pod(system, label_selector=OPERATOR_SELECTOR).items
                    if {c.type: c.status for c in p.status.conditions or []}.get("Ready") == "True"]

        wait_for(lambda: len(ready_replicas()) == 2, timeout=240, what="two ready replicas", diagnostics=logs)
        token = uuid.uuid4().hex[:8]
        envs.create(environment("served", image=node_base_image, userManaged=True))  # nothing to build
        envs.wait_phase("served", "Ready", timeout=120, diagnostics=logs)
        specs = {f"peer-{i}": [small_spec(node_base_image, token, i, "RUN sleep 30")] for i in range(3)}
        history = PodHistory(node_api, tenant)
        history.start()
        probe = AdmissionProbe(core, tenant, "served")
        probe.start()
        try:
            for name, versions in specs.items():
                envs.create(environment(name, **versions[0]))
            all_running(envs, [build_of(envs, name) for name in specs], "build", diagnostics=logs)
            time.sleep(3)
            active = wait_for(lambda: active_operator(node_api, system, tenant), timeout=60,
                              what="the active replica", diagnostics=logs)
            container = active.status.container_statuses[0]
            pid = cluster.node.task_pid(container.container_id)
            assert pid, f"no running task for {container.container_id}"
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            for name in specs:  # while the active replica is gone: the Job controller creates the pods
                envs.batch.create_namespaced_job(tenant, cat_job(f"train-{name}", name))
            statuses = assert_converged(envs, specs, timeout=600, diagnostics=logs)
            converged = time.monotonic() - killed_at
            wait_for(lambda: len(ready_replicas()) == 2, timeout=180, what="both replicas ready again",
                     diagnostics=logs)
            time.sleep(3)
        finally:
            probe.stop()
            history.stop()
        for name, status in statuses.items():
            pod = job_pod(envs.core, tenant, f"train-{name}")
            gated = pod is not None and "placeholder" in history.images(pod.metadata.name)
            assert_trained(envs, history, f"train-{name}", status, f"{token}-{name.removeprefix('peer-')}", logs,
                           gated=gated)
        assert all(b["status"]["attempts"] == 1 for b in envs.builds()), [b["status"] for b in envs.builds()]
        restarted = core.read_namespaced_pod(active.metadata.name, system).status.container_statuses[0]
        assert restarted.restart_count >= 1, "the kill reached the active replica's process"
        refused_after = [at - killed_at for at, _ in probe.refused]
        assert not probe.unchanged, "a labelled pod was admitted without its image or gate"
        assert all(-0.5 <= t <= WEBHOOK_TIMEOUT for t in refused_after), (
            [round(t, 1) for t in refused_after], probe.refused[:3])
        assert len(probe.admitted) >= 50
        window = (max(refused_after) - min(refused_after)) if refused_after else 0.0
    report("webhook-replica-kill", admitted=len(probe.admitted), refused=len(probe.refused),
           refused_window_s=round(window, 1),
           last_refusal_after_kill_s=round(max(refused_after), 1) if refused_after else "-",
           gated_released_once=len(statuses), converged_after_kill_s=round(converged),
           first_refusal=(probe.refused[0][1][:120] if probe.refused else "-"))
