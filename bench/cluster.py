"""Benchmarks on the real harness: cache-hit latency, scale, registry requests, operator memory.

Run: .venv/bin/python -m bench.cluster [--quick]     (prints a markdown table; not a test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kubernetes import client, config, watch

from envkiln.definition import definition_hash, image_name
from envkiln.models import EnvironmentSpec
from harness.buildah import base_image_archive, push_archive
from harness.controlplane import ControlPlane, install_crds
from harness.operator import OperatorProcess
from harness.registry import Registry

# Kopf and operator settings used for every run (recorded in docs/benchmarks.md).
OPERATOR_SETTINGS = {
    "ENVKILN_WORKERS": "20",  # Kopf handler threads (sync handlers run there)
    "ENVKILN_WATCH_TIMEOUT_SECONDS": "60",
    "ENVKILN_CACHE_TTL_SECONDS": "300",  # found images are remembered for the run
    "ENVKILN_BUILD_SYNC_SECONDS": "10",
    "ENVKILN_ENV_SYNC_SECONDS": "30",
    "ENVKILN_INSECURE_REGISTRY": "true",
}


def spec(index: int) -> dict[str, Any]:
    return {"image": "python:3.11-slim", "pip": [f"bench-package=={index}.0", "numpy==2.1.3"]}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Harness:
    def __init__(self) -> None:
        self.plane = ControlPlane().start()
        self.registry = Registry().start()
        self.api = config.new_client_from_config(str(self.plane.kubeconfig))
        self.api.configuration.connection_pool_maxsize = 32
        install_crds(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.archive = base_image_archive()
        self.pushed: set[int] = set()

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def prepush(self, indexes: list[int]) -> None:
        todo = [i for i in indexes if i not in self.pushed]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: push_archive(self.archive, image_name(
                definition_hash(EnvironmentSpec.model_validate(spec(i))), self.registry.host)), todo))
        self.pushed.update(todo)

    def operator(self, namespace: str, **extra: str) -> OperatorProcess:
        settings = {**OPERATOR_SETTINGS, "ENVKILN_REGISTRY": self.registry.host,
                    **{f"ENVKILN_{k.upper()}": v for k, v in extra.items()}}
        process = OperatorProcess(self.plane.kubeconfig, settings, namespaces=[namespace]).start()
        deadline = time.monotonic() + 30
        while "envkiln operator" not in process.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        return process

    def create(self, namespace: str, name: str, body_spec: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments", {
            "apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": name},
            "spec": body_spec})

    def count(self, namespace: str, phase: str) -> int:
        items = self.custom.list_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace,
                                                          "environments")["items"]
        return sum(1 for item in items if (item.get("status") or {}).get("phase") == phase)

    def close(self) -> None:
        self.registry.close()
        self.plane.stop()


def rss_kib(process: OperatorProcess) -> tuple[int, int]:
    """(current RSS, peak RSS) of the operator process, KiB."""
    assert process.process is not None and process.process.process is not None
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{process.process.process.pid}/status")
                  .read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def wait_count(harness: Harness, namespace: str, phase: str, total: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if harness.count(namespace, phase) >= total:
            return time.monotonic() - start
        time.sleep(0.5)
    raise TimeoutError(f"{phase}: {harness.count(namespace, phase)}/{total} after {timeout}s")


def cache_hit_latency(harness: Harness, count: int) -> dict[str, Any]:
    namespace = harness.namespace("bench-latency")
    harness.prepush(list(range(count)))
    operator = harness.operator(namespace)
    created: dict[str, float] = {}
    ready: dict[str, float] = {}
    done = threading.Event()

    def follow() -> None:
        stream = watch.Watch()
        for event in stream.stream(harness.custom.list_namespaced_custom_object, "envkiln.dev", "v1alpha1",
                                   namespace, "environments", timeout_seconds=600):
            obj = event["object"]
            if (obj.get("status") or {}).get("phase") == "Ready":
                ready.setdefault(obj["metadata"]["name"], time.monotonic())
            if len(ready) >= count:
                stream.stop()
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(1)
    for index in range(count):
        name = f"lat-{index}"
        harness.create(namespace, name, spec(index))
        created[name] = time.monotonic()
        time.sleep(0.05)  # a steady arrival rate: measure latency, not a queue
    done.wait(600)
    latencies = [ready[name] - created[name] for name in created if name in ready]
    operator.stop()
    return {"n": len(latencies), "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99), "mean": statistics.mean(latencies)}


def scale_cached(harness: Harness, total: int, distinct: int) -> dict[str, Any]:
    namespace = harness.namespace("bench-scale")
    harness.prepush(list(range(distinct)))
    before = harness.registry.requests_logged("HEAD") + harness.registry.requests_logged("GET")
    operator = harness.operator(namespace)
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: harness.create(namespace, f"scale-{i}", spec(i % distinct)), range(total)))
    created = time.monotonic() - start
    elapsed = wait_count(harness, namespace, "Ready", total, 900) + created
    requests = harness.registry.requests_logged("HEAD") + harness.registry.requests_logged("GET") - before
    _, peak = rss_kib(operator)
    operator.stop()
    return {"total": total, "distinct": distinct, "create_s": created, "all_ready_s": elapsed,
            "registry_manifest_requests": requests, "peak_rss_mib": peak / 1024}


def scale_kaniko(harness: Harness, total: int, distinct: int) -> dict[str, Any]:
    namespace = harness.namespace("bench-kaniko")
    operator = harness.operator(namespace, max_concurrent_builds=str(distinct + 10), build_sync_seconds="5")
    offset = 10_000  # definitions never pushed
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: harness.create(namespace, f"build-{i}", spec(offset + i % distinct)), range(total)))
    wait_count(harness, namespace, "Building", total, 900)
    batch = client.BatchV1Api(harness.api)
    deadline = time.monotonic() + 300
    jobs: list = []
    while time.monotonic() < deadline:
        jobs = batch.list_namespaced_job(namespace, label_selector="envkiln.dev/build").items
        if len(jobs) >= distinct:
            break
        time.sleep(1)
    elapsed = time.monotonic() - start
    time.sleep(5)
    builds = harness.custom.list_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace,
                                                          "environmentbuilds")["items"]
    jobs = batch.list_namespaced_job(namespace, label_selector="envkiln.dev/build").items
    _, peak = rss_kib(operator)
    operator.stop()
    return {"total": total, "distinct": distinct, "builds": len(builds), "jobs": len(jobs),
            "all_building_and_jobs_s": elapsed, "peak_rss_mib": peak / 1024}


def memory_at(harness: Harness, total: int, distinct: int) -> dict[str, Any]:
    namespace = harness.namespace("bench-memory")
    harness.prepush(list(range(distinct)))
    operator = harness.operator(namespace)
    idle, _ = rss_kib(operator)
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: harness.create(namespace, f"mem-{i}", spec(i % distinct)), range(total)))
    elapsed = wait_count(harness, namespace, "Ready", total, 1800) + 0
    time.sleep(5)
    current, peak = rss_kib(operator)
    operator.stop()
    return {"total": total, "idle_rss_mib": idle / 1024, "rss_mib": current / 1024, "peak_rss_mib": peak / 1024,
            "all_ready_s": time.monotonic() - start, "settle_s": elapsed}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = parser.parse_args(argv)
    sizes = dict(latency=50, scale=200, distinct=20, memory=1000) if args.quick else dict(
        latency=200, scale=1000, distinct=100, memory=10_000)
    harness = Harness()
    results: dict[str, Any] = {}
    try:
        results["cache_hit_latency"] = cache_hit_latency(harness, sizes["latency"])
        print("cache-hit latency:", results["cache_hit_latency"], flush=True)
        results["scale_cached"] = scale_cached(harness, sizes["scale"], sizes["distinct"])
        print("scale (pre-pushed):", results["scale_cached"], flush=True)
        results["scale_kaniko"] = scale_kaniko(harness, sizes["scale"], sizes["distinct"])
        print("scale (kaniko, nothing pushed):", results["scale_kaniko"], flush=True)
        results["memory"] = memory_at(harness, sizes["memory"], sizes["distinct"])
        print("memory:", results["memory"], flush=True)
    finally:
        harness.close()
    return results


if __name__ == "__main__":
    main()
