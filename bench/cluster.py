"""Benchmarks on a bare control plane: cache-hit latency, scale, restart, registry requests, API writes, memory.

Run: .venv/bin/python -m bench.cluster [--quick] [--json]     (numbers, not a test)

The last line of stdout is one JSON object (`--json` prints only progress lines before it):
cache_hit_p50_ms, cache_hit_p99_ms, ready_1000_s, registry_requests_1000, rss_mib_1000,
api_writes_per_cache_hit, and in the full run also ready_10000_s, rss_mib_10000, restart_10000_s,
rss_mib_restart_10000 (plus details: load averages, per-phase breakdown of a cache hit, writes by kind).

Everything runs on this machine: etcd + kube-apiserver (no kubelet), a registry, the operator as a
child process (`envkiln run --standalone`), and this client. Earlier builds are seeded as the
operator would have left them (harness.records.seed_build: a signed EnvironmentBuild with a signed
record), so every Environment is a cache hit that asks the registry nothing. API writes are counted
on the API server's side, from its audit log (every write verb; reads too in the latency namespace).
Peak RSS is the operator's VmHWM.

`--operator-src DIR` runs another version of the operator (a directory holding `envkiln/`, e.g.
`git archive <commit> operator crds | tar -x -C /tmp/old`, then `--operator-src /tmp/old/operator`;
its CRDs are taken from `crds/` beside that directory when there is one): for before/after
comparisons on one machine.
Without it, the bench copies this checkout's `operator/` first, so edits made while it runs change
nothing; the bench seeds with the same version it runs (definition hashes differ between versions).
`--profile DIR` records a py-spy flame graph of the operator during the scale runs and
`--tracemalloc DIR` a tracemalloc snapshot once all are Ready (both slow the operator: their runs'
timings are not the bench's numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

# The operator version under test, for this process too (seeding computes hashes and signs builds
# with it): set by main() before it re-executes itself, so both always agree.
sys.path.insert(0, os.environ.get("BENCH_OPERATOR_SRC") or str(Path(__file__).resolve().parents[1] / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kubernetes import client, config, watch

from bench.tiny_image import tiny_archive
from envkiln.core.definition import definition_hash
from envkiln.core.models import EnvironmentSpec
from envkiln.core.names import build_name
from harness.controlplane import REPO_ROOT, ControlPlane, cache_dir, install_crds
from harness.operator import OperatorProcess
from harness.process import ManagedProcess
from harness.records import TEST_SIGNING_KEY, seed_build
from harness.registry import Registry

GROUP, VERSION, PLURAL = "envkiln.dev", "v1alpha1", "environments"
BENCH_AGENT = "envkiln-bench"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
LATENCY_NAMESPACE = "bench-latency"

# Operator settings for every run (recorded in docs/benchmarks.md). Only settings every compared
# operator version knows: an unknown ENVKILN_* variable stops the operator.
OPERATOR_SETTINGS = {
    "ENVKILN_WORKERS": "20",  # handler threads (sync handlers run there)
    "ENVKILN_WATCH_TIMEOUT_SECONDS": "60",
    "ENVKILN_CACHE_TTL_SECONDS": "300",
    "ENVKILN_BUILD_SYNC_SECONDS": "10",
    "ENVKILN_ENV_SYNC_SECONDS": "30",
    "ENVKILN_INSECURE_REGISTRY": "true",
}

AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    verbs: ["watch"]
  - level: Metadata
    namespaces: ["{LATENCY_NAMESPACE}"]
  - level: Metadata
    verbs: {json.dumps(list(WRITE_VERBS))}
  - level: None
"""


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr if ARGS_JSON[0] else sys.stdout, flush=True)


ARGS_JSON = [False]


def spec(index: int) -> dict[str, Any]:
    return {"image": "python:3.11-slim", "pip": [f"bench-package=={index}.0", "numpy==2.1.3"]}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --- the operator ---------------------------------------------------------------------------------


class BenchOperator(OperatorProcess):
    """harness.operator.OperatorProcess, from a chosen source directory, optionally profiled."""

    def __init__(self, kubeconfig: Path, settings: dict[str, str], namespace: str, source: Path,
                 log_dir: Path, name: str, env: dict[str, str], verbose: bool = False):
        super().__init__(kubeconfig, settings, namespaces=[namespace], log_dir=log_dir, name=name)
        self.source, self.extra_env, self.verbose = source, env, verbose

    def start(self) -> BenchOperator:
        argv = [sys.executable, "-m", "envkiln.cli", "run", "--standalone", "--namespace", self.namespaces[0]]
        if self.verbose:
            argv.append("--verbose")
        site = self.extra_env.get("BENCH_SITE")
        env = {
            "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(self.source), *([site] if site else [])]),
            "ENVKILN_LOCAL_STORAGE_ROOT": str(cache_dir() / "buildah"), "ENVKILN_SIGNING_KEY": TEST_SIGNING_KEY,
            "ENVKILN_NAMESPACES": self.namespaces[0], **self.settings,
            **{k: v for k, v in self.extra_env.items() if k != "BENCH_SITE"},
        }
        # ManagedProcess passes os.environ on: not the caller's other ENVKILN_* variables (an older
        # operator refuses settings it does not know).
        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ENVKILN_") and k not in env}
        try:
            self.process = ManagedProcess(self.name, argv, self.log_dir / f"{self.name}.log", env=env).start()
        finally:
            os.environ.update(saved)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.process is not None
        return self.process.process.pid

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in KiB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
                      if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def wait_started(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while "envkiln operator" not in self.log():
            if self.exited() or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not start: {self.exited()}\n{self.log()[-3000:]}")
            time.sleep(0.05)


# --- following Environments ---------------------------------------------------------------------


class Follower:
    """Watches the Environments of a namespace: each one's phase and when it first became Ready."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str):
        self.custom, self.namespace = custom, namespace
        self.phases: dict[str, str | None] = {}
        self.added: dict[str, float] = {}  # wall clock when the ADDED event arrived
        self.ready: dict[str, float] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self.listed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.listed.wait(120):
            raise RuntimeError(f"could not list Environments in {namespace}")

    def _note(self, obj: dict[str, Any], kind: str | None) -> None:
        name, now = obj["metadata"]["name"], time.time()
        with self.lock:
            if kind == "DELETED":
                self.phases.pop(name, None)
                self.ready.pop(name, None)
                return
            phase = (obj.get("status") or {}).get("phase")
            self.phases[name] = phase
            if kind == "ADDED":
                self.added.setdefault(name, now)
            if phase == "Ready":
                self.ready.setdefault(name, now)

    def _run(self) -> None:
        while not self._stop.is_set():
            listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
            for item in listing["items"]:
                self._note(item, None)
            version = listing["metadata"]["resourceVersion"]
            self.listed.set()
            while not self._stop.is_set():
                self._watch = watch.Watch()
                try:
                    for event in self._watch.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION,
                                                    self.namespace, PLURAL, resource_version=version,
                                                    timeout_seconds=300):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise client.ApiException(status=obj.get("code"))
                        version = obj["metadata"]["resourceVersion"]
                        self._note(obj, event["type"])
                except client.ApiException as error:
                    if error.status == 410:
                        break  # list again
                    time.sleep(0.5)
                except Exception:  # a broken stream: resume from the last version
                    time.sleep(0.5)

    def count(self, phase: str) -> int:
        with self.lock:
            return sum(1 for value in self.phases.values() if value == phase)

    def wait(self, phase: str, total: int, timeout: float, since: float) -> float:
        """Seconds from `since` (monotonic) until `total` Environments are in `phase`."""
        while time.monotonic() - since < timeout:
            if self.count(phase) >= total:
                return time.monotonic() - since
            time.sleep(0.1)
        raise TimeoutError(f"{self.namespace}: {self.count(phase)}/{total} {phase} after {timeout:.0f}s; "
                           f"phases {Counter(self.phases.values())}")

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()


# --- the harness ----------------------------------------------------------------------------------


class Harness:
    def __init__(self, source: Path, profile_dir: Path | None, tracemalloc_dir: Path | None):
        self.source, self.profile_dir, self.tracemalloc_dir = source, profile_dir, tracemalloc_dir
        self.workdir = Path(tempfile.mkdtemp(prefix="envkiln-bench-", dir="/dev/shm" if os.access(
            "/dev/shm", os.W_OK) else None))
        self.audit_log = self.workdir / "audit.log"
        (self.workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self.plane = ControlPlane(extra_apiserver_args=[
            f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-maxsize=0"])
        self.registry = Registry()
        try:
            self.plane.start()
            self.registry.start()
            self.api = config.new_client_from_config(str(self.plane.kubeconfig))
            self.api.configuration.connection_pool_maxsize = 32
            self.api.user_agent = BENCH_AGENT
            crds = source.parent / "crds"  # the CRDs of the version under test, when it comes with them
            install_crds(self.api, sorted(crds.glob("*.yaml")) if crds.is_dir() else None)
        except BaseException:
            self.registry.close()
            self.plane.stop()
            raise
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.archive = tiny_archive(self.workdir / "tiny.oci.tar")
        self.operators: list[BenchOperator] = []

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def seed(self, namespace: str, indexes: Iterable[int]) -> float:
        """Signed, finished EnvironmentBuilds for these definitions (as an earlier build left them)."""
        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: seed_build(self.api, namespace, spec(i), self.registry.host, self.archive),
                          indexes))
        return time.monotonic() - start

    def operator(self, namespace: str, tag: str, verbose: bool = False, **extra: str) -> BenchOperator:
        env: dict[str, str] = {}
        if self.tracemalloc_dir is not None:
            env["BENCH_SITE"] = str(Path(__file__).resolve().parent / "profiling")
            env["BENCH_TRACEMALLOC_OUT"] = str(self.tracemalloc_dir / f"dump-{tag}")
        settings = {**OPERATOR_SETTINGS, "ENVKILN_REGISTRY": self.registry.host,
                    **{f"ENVKILN_{key.upper()}": value for key, value in extra.items()}}
        process = BenchOperator(self.plane.kubeconfig, settings, namespace, self.source, self.workdir,
                                f"operator-{tag}", env, verbose)
        process.start()
        self.operators.append(process)
        process.wait_started()
        return process

    def create(self, namespace: str, name: str, body_spec: dict[str, Any], labels: dict[str, str] | None = None,
               ) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Environment",
            "metadata": {"name": name, "labels": labels or {}}, "spec": body_spec})

    def create_many(self, namespace: str, names: list[str], specs: Callable[[int], dict[str, Any]],
                    labels: Callable[[int], dict[str, str]] = lambda i: {}) -> float:
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: self.create(namespace, names[i], specs(i), labels(i)), range(len(names))))
        return time.monotonic() - start

    def registry_requests(self) -> int:
        if self.registry.process is None:
            return 0
        text = self.registry.process.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if " /v2/" in line and '"' in line and "HTTP/" in line)

    def audit(self) -> list[dict[str, Any]]:
        events = []
        with open(self.audit_log, errors="replace") as lines:
            for line in lines:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def close(self, keep: Path | None = None) -> None:
        for process in self.operators:
            process.stop()
        self.registry.close()
        self.plane.stop()
        if keep is not None:  # the audit log and the operators' logs, for a closer look
            keep.mkdir(parents=True, exist_ok=True)
            for path in [self.audit_log, *self.workdir.glob("operator-*.log")]:
                if path.exists():
                    shutil.copy(path, keep / path.name)
        shutil.rmtree(self.workdir, ignore_errors=True)


class Profiler:
    """py-spy record on the operator for the length of a `with` block (a flame graph SVG)."""

    def __init__(self, harness: Harness, operator: BenchOperator, tag: str):
        self.harness, self.operator, self.tag = harness, operator, tag
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        directory = self.harness.profile_dir
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if directory is not None and Path(spy).exists():
            self.process = subprocess.Popen(
                [spy, "record", "--pid", str(self.operator.pid), "--rate", "50", "--nonblocking", "--idle",
                 "--format", "flamegraph", "-o", str(directory / f"profile-{self.tag}.svg")],
                stdout=subprocess.DEVNULL, stderr=open(directory / f"py-spy-{self.tag}.log", "wb"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def snapshot_memory(harness: Harness, operator: BenchOperator, tag: str) -> None:
    if harness.tracemalloc_dir is None:
        return
    base = operator.extra_env["BENCH_TRACEMALLOC_OUT"]
    before = set(Path(base).parent.glob(Path(base).name + ".*"))
    os.kill(operator.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new = set(Path(base).parent.glob(Path(base).name + ".*")) - before
        if new:
            new.pop().rename(harness.tracemalloc_dir / f"tracemalloc-{tag}.txt")
            return
        time.sleep(0.5)


def writes_in(events: list[dict[str, Any]], namespace: str, since: float = 0.0,
              until: float = float("inf")) -> Counter[str]:
    """The operator's writes in a namespace, by `verb resource[/subresource] (client)`."""
    counts: Counter[str] = Counter()
    for event in events:
        ref = event.get("objectRef") or {}
        if event.get("verb") not in WRITE_VERBS or ref.get("namespace") != namespace:
            continue
        agent = event.get("userAgent", "")
        if agent.startswith(BENCH_AGENT):
            continue
        when = parse_time(event["requestReceivedTimestamp"])
        if not since <= when <= until:
            continue
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        counts[f"{event['verb']} {resource} ({agent.split('/')[0]})"] += 1
    return counts


# --- the benchmarks -------------------------------------------------------------------------------


def cache_hit_latency(harness: Harness, count: int, verbose: bool = False) -> dict[str, Any]:
    """One cache hit at a time (one create every 50 ms): create -> Ready as the client sees it."""
    namespace = harness.namespace(LATENCY_NAMESPACE)
    seeded = harness.seed(namespace, range(count))
    operator = harness.operator(namespace, "latency", verbose=verbose)
    follower = Follower(harness.custom, namespace)
    created: dict[str, float] = {}
    loads = [load()]
    time.sleep(1)
    for index in range(count):
        name = f"lat-{index}"
        harness.create(namespace, name, spec(index))
        created[name] = time.time()
        time.sleep(0.05)  # a steady arrival rate: measure latency, not a queue
    follower.wait("Ready", count, 120, time.monotonic())
    time.sleep(2)  # let the operator's follow-up writes (if any) land in the audit log
    loads.append(load())
    follower.stop()
    latencies = [follower.ready[name] - created[name] for name in created if name in follower.ready]
    watch_delays = [follower.added[name] - created[name] for name in created if name in follower.added]
    operator.stop()
    builds = {f"lat-{index}": build_name(definition_hash(EnvironmentSpec.model_validate(spec(index))))
              for index in range(count)}
    breakdown = phase_breakdown(harness.audit(), namespace, created, follower.ready, builds, follower.added)
    if verbose:
        breakdown["operator_debug_log"] = operator_timings(operator.log())
    return {"n": len(latencies), "p50_ms": percentile(latencies, 0.5) * 1000,
            "p95_ms": percentile(latencies, 0.95) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "mean_ms": statistics.mean(latencies) * 1000,
            "client_watch_delay_p50_ms": percentile(watch_delays, 0.5) * 1000,
            "seed_s": seeded, "load": loads, "breakdown": breakdown}


def phase_breakdown(events: list[dict[str, Any]], namespace: str, created: dict[str, float],
                    ready: dict[str, float], builds: dict[str, str], added: dict[str, float]) -> dict[str, Any]:
    """Per cache hit, from the API server's audit log: when the create finished, each of the operator's
    requests (received, done), and when the client saw Ready; medians over all Environments."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    creates: dict[str, float] = {}
    event_posts = 0
    for event in events:
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or ref.get("resource") not in ("environments", "environmentbuilds",
                                                                              "events"):
            continue
        if event.get("userAgent", "").startswith(BENCH_AGENT):
            if event.get("verb") == "create" and ref.get("resource") == "environments":
                creates[ref.get("name") or f"@{event['stageTimestamp']}"] = parse_time(event["stageTimestamp"])
            continue
        if ref.get("resource") == "events":
            event_posts += event.get("verb") == "create"
            continue
        by_name.setdefault(ref.get("name") or "", []).append(event)
    names = sorted(created, key=created.get)  # type: ignore[arg-type]
    if all(name in creates for name in names):
        create_done = {name: creates[name] for name in names}
    else:  # no names in the log: pair creates (in order) with the names the client created (in order)
        create_done = dict(zip(names, sorted(creates.values()), strict=False))
    steps: dict[str, list[float]] = {}
    first_request: list[float] = []
    to_ready: list[float] = []
    watch_delays = [added[name] - create_done[name] for name in names if name in added and name in create_done]
    counted = 0
    for name in names:
        if name not in create_done:
            continue
        start = create_done[name]
        requests = sorted((e for e in by_name.get(name, []) + by_name.get(builds.get(name, "-"), [])
                           if parse_time(e["requestReceivedTimestamp"]) >= start - 0.001),
                          key=lambda e: e["requestReceivedTimestamp"])
        if not requests:
            continue
        counted += 1
        first_request.append(parse_time(requests[0]["requestReceivedTimestamp"]) - start)
        previous_end = None
        seen: Counter[str] = Counter()
        for event in requests:
            ref = event["objectRef"]
            label = f"{event['verb']} {ref['resource']}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            seen[label] += 1
            label += f" #{seen[label]}" if seen[label] > 1 else ""
            received, done = parse_time(event["requestReceivedTimestamp"]), parse_time(event["stageTimestamp"])
            steps.setdefault(f"{label}: server time", []).append(done - received)
            if previous_end is not None:
                steps.setdefault(f"{label}: gap before (client)", []).append(received - previous_end)
            previous_end = done
            if label == "patch environments/status" and name in ready:
                to_ready.append(ready[name] - done)
    result: dict[str, Any] = {
        "environments": counted,
        "create_done_to_first_operator_request_ms": percentile(first_request, 0.5) * 1000 if first_request else None,
        "create_done_to_client_watch_event_ms": percentile(watch_delays, 0.5) * 1000 if watch_delays else None,
        "status_write_done_to_client_sees_ready_ms": percentile(to_ready, 0.5) * 1000 if to_ready else None,
        "operator_requests_per_environment": {k.split(":")[0]: round(len(v) / max(counted, 1), 2)
                                              for k, v in steps.items() if k.endswith("server time")},
        "event_posts_per_environment": round(event_posts / max(counted, 1), 2),
        "median_ms": {k: round(percentile(v, 0.5) * 1000, 2) for k, v in sorted(steps.items())},
    }
    return result


def operator_timings(text: str) -> dict[str, float]:
    """Medians of the operator's own debug timings of each reconcile (envkiln.reconcile.envsync)."""
    pattern = re.compile(r"synced Environment \S+: \S+ -> \S+; read ([\d.]+) ms, observe\+decide ([\d.]+) ms, "
                         r"status ([\d.]+) ms, event ([\d.]+) ms")
    rows = [tuple(float(v) for v in match.groups()) for match in pattern.finditer(text)]
    if not rows:
        return {}
    names = ("read_ms", "observe_decide_ms", "status_write_ms", "event_post_ms")
    medians = {n: round(percentile([r[i] for r in rows], 0.5), 2) for i, n in enumerate(names)}
    return {"reconciles": len(rows), **medians}


def delete_half(harness: Harness, namespace: str, total: int) -> None:
    """Delete the Environments labelled bench-half=b (the operator is stopped; an older one left
    finalizers on them, which are removed here)."""
    selector = "bench-half=b"
    for _ in range(20):  # one call may time out (504) after deleting part of them
        try:
            harness.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                      label_selector=selector)
            break
        except client.ApiException as error:
            if error.status not in (500, 504):
                raise
    while True:
        left = harness.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                            label_selector=selector)["items"]
        if not left:
            return
        held = [item["metadata"]["name"] for item in left if item["metadata"].get("finalizers")]

        def release(name: str) -> None:
            try:
                harness.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                              {"metadata": {"finalizers": None}})
            except client.ApiException as error:
                if error.status != 404:
                    raise

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(release, held))
        time.sleep(1)


def scale(harness: Harness, total: int, distinct: int, tag: str, halve: bool = False) -> dict[str, Any]:
    """`total` Environments over `distinct` earlier builds, created at once by 16 clients. `halve`:
    then (the operator stopped) delete half of them, for the restart run."""
    namespace = harness.namespace(f"bench-scale-{tag}")
    seeded = harness.seed(namespace, range(distinct))
    time.sleep(1)
    registry_before = harness.registry_requests()
    operator = harness.operator(namespace, f"scale-{tag}")
    follower = Follower(harness.custom, namespace)
    idle_kib, _ = operator.memory_kib()
    loads = [load()]
    since = time.time()
    start = time.monotonic()
    with Profiler(harness, operator, f"scale-{tag}"):
        created = harness.create_many(namespace, [f"scale-{i}" for i in range(total)], lambda i: spec(i % distinct),
                                      lambda i: {"bench-half": "a" if i < total // 2 else "b"})
        elapsed = follower.wait("Ready", total, 1200, start)
        time.sleep(3)  # settle: late writes, memory
    loads.append(load())
    current_kib, peak_kib = operator.memory_kib()
    snapshot_memory(harness, operator, f"scale-{tag}")
    registry = harness.registry_requests() - registry_before
    writes = writes_in(harness.audit(), namespace, since)
    follower.stop()
    operator.stop()
    if halve:
        delete_half(harness, namespace, total)
    return {"total": total, "distinct": distinct, "seed_s": seeded, "create_s": created, "all_ready_s": elapsed,
            "registry_requests": registry, "idle_rss_mib": idle_kib / 1024, "rss_mib": current_kib / 1024,
            "peak_rss_mib": peak_kib / 1024, "operator_writes": dict(writes.most_common()),
            "writes_per_environment": sum(writes.values()) / total, "load": loads, "namespace": namespace}


def restart(harness: Harness, namespace: str, total: int, distinct: int) -> dict[str, Any]:
    """The operator starts with `total` Environments present: half Ready, half never reconciled."""
    half = total // 2
    follower = Follower(harness.custom, namespace)  # the other half was deleted by scale(..., halve=True)
    created = harness.create_many(namespace, [f"fresh-{i}" for i in range(half)], lambda i: spec(i % distinct))
    present = Counter(follower.phases.values())
    loads = [load()]
    since = time.time()
    start = time.monotonic()
    operator = harness.operator(namespace, "restart")
    with Profiler(harness, operator, "restart"):
        if harness.tracemalloc_dir is not None:  # one snapshot mid-way, with the backlog still queued
            follower.wait("Ready", total - half + half // 3, 1200, start)
            snapshot_memory(harness, operator, "restart-midway")
        elapsed = follower.wait("Ready", total, 1200, start)
        time.sleep(3)
    loads.append(load())
    current_kib, peak_kib = operator.memory_kib()
    snapshot_memory(harness, operator, "restart")
    follower.stop()
    operator.stop()
    writes = writes_in(harness.audit(), namespace, since)
    return {"total": total, "present_at_start": dict(present), "create_s": created, "all_ready_s": elapsed,
            "rss_mib": current_kib / 1024, "peak_rss_mib": peak_kib / 1024,
            "operator_writes": dict(writes.most_common()), "load": loads}


def scale_builds(harness: Harness, total: int, distinct: int) -> dict[str, Any]:
    """Nothing built before: one EnvironmentBuild and one Kaniko Job per definition (no kubelet runs them)."""
    namespace = harness.namespace("bench-builds")
    operator = harness.operator(namespace, "builds", max_concurrent_builds=str(distinct + 10),
                                max_concurrent_builds_per_namespace=str(distinct + 10), build_sync_seconds="5")
    follower = Follower(harness.custom, namespace)
    batch = client.BatchV1Api(harness.api)
    offset = 10_000  # definitions never built
    start = time.monotonic()
    loads = [load()]
    harness.create_many(namespace, [f"build-{i}" for i in range(total)], lambda i: spec(offset + i % distinct))
    follower.wait("Building", total, 900, start)
    jobs: list[Any] = []
    while time.monotonic() - start < 900:
        jobs = batch.list_namespaced_job(namespace, label_selector="envkiln.dev/build").items
        if len(jobs) >= distinct:
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - start
    time.sleep(5)
    loads.append(load())
    builds = harness.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "environmentbuilds")["items"]
    jobs = batch.list_namespaced_job(namespace, label_selector="envkiln.dev/build").items
    _, peak = operator.memory_kib()
    follower.stop()
    operator.stop()
    return {"total": total, "distinct": distinct, "builds": len(builds), "jobs": len(jobs),
            "all_building_with_jobs_s": elapsed, "peak_rss_mib": peak / 1024, "load": loads}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="latency (50) and 1,000 Environments only")
    parser.add_argument("--json", action="store_true", help="progress on stderr; stdout: one JSON line")
    parser.add_argument("--only", default="", help="comma-separated: latency,scale,builds,10k")
    parser.add_argument("--operator-src", type=Path, default=REPO_ROOT / "operator",
                        help="directory holding the envkiln package to run (default: this checkout's)")
    parser.add_argument("--profile", type=Path, help="write py-spy flame graphs of the scale runs here")
    parser.add_argument("--tracemalloc", type=Path, help="write tracemalloc snapshots of the scale runs here")
    parser.add_argument("--keep", type=Path, help="copy the API server's audit log and the operator logs here")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra ENVKILN_NAME for every operator started (e.g. worker_limit=100)")
    parser.add_argument("--large", type=int, default=10_000,
                        help="Environments in the large run and the restart (default 10,000; smaller for profiling)")
    parser.add_argument("--debug-latency", action="store_true",
                        help="run the latency operator with debug logs and report its own per-phase timings")
    args = parser.parse_args(argv)
    if not os.environ.get("BENCH_OPERATOR_SRC"):  # pin the version under test, then start again with it
        source = args.operator_src.resolve()
        if "--operator-src" not in (argv if argv is not None else sys.argv):
            snapshot = Path(tempfile.mkdtemp(prefix="envkiln-bench-src-"))
            shutil.copytree(source / "envkiln", snapshot / "operator" / "envkiln",
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copytree(REPO_ROOT / "crds", snapshot / "crds")
            source = snapshot / "operator"
            os.environ["BENCH_SNAPSHOT"] = str(snapshot)  # removed by the re-executed bench at the end
        os.environ["BENCH_OPERATOR_SRC"] = str(source)
        os.execv(sys.executable, [sys.executable, "-m", "bench.cluster",
                                  *(argv if argv is not None else sys.argv[1:]), "--operator-src", str(source)])
    ARGS_JSON[0] = args.json
    signal.signal(signal.SIGTERM, _interrupt)  # stop what it started (control plane, registry, operators)
    for setting in args.setting:
        name, _, value = setting.partition("=")
        OPERATOR_SETTINGS[f"ENVKILN_{name.upper()}"] = value
    phases = set(args.only.split(",")) if args.only else (
        {"latency", "scale"} if args.quick else {"latency", "scale", "builds", "10k"})
    for directory in (args.profile, args.tracemalloc):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    harness = Harness(args.operator_src.resolve(), args.profile, args.tracemalloc)
    results: dict[str, Any] = {"operator_src": str(args.operator_src), "quick": args.quick,
                               "settings": dict(OPERATOR_SETTINGS),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_at_start": load()}
    details: dict[str, Any] = {}
    try:
        if "latency" in phases:
            lat = details["latency"] = cache_hit_latency(harness, 50 if args.quick else 200, args.debug_latency)
            log("cache-hit latency:", json.dumps(lat))
            results.update(cache_hit_p50_ms=round(lat["p50_ms"], 1), cache_hit_p99_ms=round(lat["p99_ms"], 1))
        if "scale" in phases:
            one = details["scale_1000"] = scale(harness, 1000, 100, "1000")
            log("1,000 Environments / 100 definitions:", json.dumps(one))
            results.update(ready_1000_s=round(one["all_ready_s"], 2), registry_requests_1000=one["registry_requests"],
                           rss_mib_1000=round(one["peak_rss_mib"], 1),
                           api_writes_per_cache_hit=round(one["writes_per_environment"], 3))
        if "builds" in phases:
            built = details["builds_1000"] = scale_builds(harness, 1000, 100)
            log("1,000 Environments / 100 definitions, nothing built:", json.dumps(built))
            results.update(building_1000_s=round(built["all_building_with_jobs_s"], 2), builds_1000=built["builds"],
                           jobs_1000=built["jobs"])
        if "10k" in phases:
            big = details["scale_10000"] = scale(harness, args.large, 100, "10000", halve=True)
            log("10,000 Environments / 100 definitions:", json.dumps(big))
            results.update(ready_10000_s=round(big["all_ready_s"], 2), rss_mib_10000=round(big["peak_rss_mib"], 1),
                           api_writes_per_environment_10000=round(big["writes_per_environment"], 3))
            again = details["restart_10000"] = restart(harness, big["namespace"], args.large, 100)
            log("restart with 10,000 present (half never reconciled):", json.dumps(again))
            results.update(restart_10000_s=round(again["all_ready_s"], 2),
                           rss_mib_restart_10000=round(again["peak_rss_mib"], 1))
    finally:
        harness.close(args.keep)
        if os.environ.get("BENCH_SNAPSHOT"):
            shutil.rmtree(os.environ["BENCH_SNAPSHOT"], ignore_errors=True)
    results["load_at_end"] = load()
    results["details"] = details
    if args.json:
        print(json.dumps(results), flush=True)
    return results


if __name__ == "__main__":
    main()
