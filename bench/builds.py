"""Build bench on the real node: create -> Ready of real builds, through the operator and the in-cluster
buildah builder, against a plain Dockerfile with the same packages, side by side with another revision.

Run (it starts the one-node cluster: hold the node lock, never in parallel with another node run):
    flock /tmp/envkiln-node.lock .venv/bin/python -m bench.builds --json [--render-of REV] [--quick]

The last line of stdout is one JSON object (`--json` sends progress to stderr):
- `cold_s`: environment A (ENV_A: numpy, pandas, scikit-learn, scipy, matplotlib, resolved to 18 pinned
  packages), in a namespace of its own where nothing was built before;
- `plain_s`: the same pins as a user build context (a ConfigMap whose Dockerfile is `FROM <the same
  base>`, `COPY requirements.txt`, `RUN python3 -m venv ... && pip install --no-cache-dir -r ...`), in
  another fresh namespace;
- `warm_s`: B = A + seaborn + statsmodels (25 pins), in A's namespace after A;
- `one_package_s`: A + tqdm, in A's namespace after A and B;
- `image_mib`: A's compressed size (the sum of the layer sizes in its registry manifest), and
  `plain_image_mib`, `warm_image_mib`, `one_package_image_mib`; `warm_new_mib` and
  `one_package_new_mib`: what of those a node that has A's image still pulls (layers A lacks);
- ratios and goals (`goals`: cold <= 0.5 x plain, one_package <= 0.35 x cold, warm <= 0.6 x cold,
  A's image no larger than the plain one's);
- with `--render-of REV`, the same keys prefixed `before_` for the operator of REV (a `git worktree`
  of it, removed at the end), measured in the same run and interleaved step by step with the
  operator of this checkout (copied first: edits made while the bench runs change nothing);
- `details`: per build the Job's phases (from the pod's container states), the wheels it fetched
  from the index and who fetched them (pip or uv, from the User-Agent), load averages.

Packages: pods on the node reach no package index, so the pinned wheels are downloaded once on this
host (`pip download --only-binary=:all: --no-deps`, harness.wheels, cached in $ENVKILN_CACHE/wheels)
and served by harness.pypi.PackageIndex on the node's address. Builds are pointed at it through the
operator's build env (`ENVKILN_BUILD_ENV`: PIP_INDEX_URL, PIP_TRUSTED_HOST, and UV_INDEX_URL /
UV_INSECURE_HOST, which reach the build container only) and, unless `--index-via build-env`, through
`--index-url` as the first line of the requirements (spec.pip and the plain requirements.txt alike):
uv reads neither pip.conf nor the build container's variables, but reads a requirements file's
`--index-url`. The index also serves uv itself (the version each operator's render installs with
`pip install uv`). When the checkout's settings have a uv tool image setting (`uv_*image*`), a tool
image with /uv and /uvx from the uv wheel is pushed to the node registry and named by digest.
`--probe-uv` (on with `--quick`) first builds, per revision, a package made here with the index given
only through the build env, and reports whether that build got Ready and whether pip or uv fetched it.

`--link-mbps N` makes the index send its wheels at most N Mbit/s, all downloads together (one link,
as to a real index), instead of at the speed of this machine's loopback. `--package-proxy` puts the
chart's package proxy (packageProxy: proxpi, rendered by helm, its image built here) on the node,
reading from the index, and points this checkout's operator's builds at it through the build env the
chart makes (the `--render-of` operator keeps reading the index directly); it implies
`--index-via build-env`. With `--render-of HEAD` that measures the same render with and without it.

Every Environment is its own definition without a marker in it: each revision and each run gets
its own namespaces (images and EnvironmentBuilds are per namespace), so nothing is a cache hit and
no step differs from the ones a user writes. A priming build (FROM the cluster's busybox image, in
its own namespace) pulls the builder image onto the node before anything is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from kubernetes import client, config

from harness.buildah import BASE_REPOSITORY, base_image_archive, push_archive
from harness.cluster import Cluster
from harness.controlplane import REPO_ROOT, install_crds
from harness.images import builder_image_archive
from harness.operator import OperatorProcess
from harness.package_proxy import deploy as deploy_package_proxy
from harness.pypi import PackageIndex, make_wheel
from harness.wheels import mirror, uv_tool_archive

GROUP, VERSION = "envkiln.dev", "v1alpha1"
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

# Resolved once (2026-12-07) with pip against PyPI for CPython 3.11, manylinux x86_64 (glibc 2.36):
# `pip download --only-binary=:all: --python-version 3.11 --platform manylinux_2_36_x86_64 ...
# numpy pandas scikit-learn scipy matplotlib` (with the older manylinux tags listed too).
ENV_A = [
    "cloudpickle==3.1.3", "contourpy==1.3.3", "cycler==0.12.1", "fonttools==4.69.1", "joblib==1.6.0",
    "kiwisolver==1.5.1", "matplotlib==3.11.2", "narwhals==2.29.0", "numpy==2.4.6", "packaging==26.4",
    "pandas==3.1.1", "pillow==13.0.0", "pyparsing==3.3.3", "python-dateutil==4.0.0", "scikit-learn==1.9.1",
    "scipy==1.17.1", "threadpoolctl==3.8.0", "tzdata==2026.6",
]
# + seaborn statsmodels, resolved together with A: A's 18 unchanged, 7 more.
ENV_B = sorted([*ENV_A, "formulaic==1.2.2", "interface-meta==2.0.1", "patsy==1.0.3", "seaborn==0.13.2",
                "statsmodels==0.15.0", "typing-extensions==4.16.0", "wrapt==2.5.2"])
ENV_A_TQDM = sorted([*ENV_A, "tqdm==4.70.1"])
# --quick: two small packages without dependencies.
QUICK_A = ["numpy==2.4.6", "threadpoolctl==3.8.0"]
QUICK_B = sorted([*QUICK_A, "joblib==1.6.0"])
QUICK_A_TQDM = sorted([*QUICK_A, "tqdm==4.70.1"])

STEPS = ("cold", "plain", "warm", "one_package")
# The build container's log lines that start each phase (job_phases' "marks").
BUILD_MARKS = (("from", "STEP 1/"), ("earlier_pulled", "envkiln: starting from the earlier image"),
               ("install", "Using Python"), ("commit", "COMMIT "), ("archive", "--> "), ("built", "built "),
               ("lock_image", "lock image made"))
GOALS = {  # name: (figure, over, at most)
    "cold_le_0.5_plain": ("cold_s", "plain_s", 0.5),
    "one_package_le_0.35_cold": ("one_package_s", "cold_s", 0.35),
    "warm_le_0.6_cold": ("warm_s", "cold_s", 0.6),
    "image_le_plain_image": ("image_mib", "plain_image_mib", 1.0),
}

ARGS_JSON = [False]


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr if ARGS_JSON[0] else sys.stdout, flush=True)


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


# --- the revisions under test ---------------------------------------------------------------------


class Revision:
    """An operator source tree: this checkout's (copied) or another revision's (a git worktree)."""

    def __init__(self, label: str, prefix: str, source: Path, commit: str, cleanup: Callable[[], None]):
        self.label, self.prefix, self.source, self.commit, self.cleanup = label, prefix, source, commit, cleanup
        settings = (source / "envkiln" / "core" / "settings.py").read_text()
        render = (source / "envkiln" / "core" / "render.py").read_text()
        # The uv its render uses: `pip install uv==DEFAULT_UV_VERSION` (served by the index), or the tag of
        # DEFAULT_UV_IMAGE (a tool image the harness makes from that version's wheel).
        found = (re.search(r'^DEFAULT_UV_VERSION\s*=\s*"([^"]+)"', render, re.M)
                 or re.search(r'^DEFAULT_UV_IMAGE\s*=\s*"[^"]*uv:([0-9][^"@]*)"', render, re.M))
        self.uv_version = found.group(1) if found else None
        # A setting naming a uv tool image (the one-stage render): ENVKILN_<NAME> gets the harness's.
        self.uv_image_setting = next(iter(re.findall(r"^    (uv_\w*image\w*)\s*:", settings, re.M)), None)
        self.settings_text = settings

    def knows(self, setting: str) -> bool:
        return re.search(rf"^    {re.escape(setting)}\s*:", self.settings_text, re.M) is not None


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def this_checkout() -> Revision:
    snapshot = Path(tempfile.mkdtemp(prefix="envkiln-bench-src-"))
    shutil.copytree(REPO_ROOT / "operator" / "envkiln", snapshot / "operator" / "envkiln",
                    ignore=shutil.ignore_patterns("__pycache__"))
    dirty = bool(_git("status", "--porcelain", "--", "operator"))
    commit = _git("rev-parse", "--short", "HEAD") + ("+working tree" if dirty else "")
    return Revision("after", "", snapshot / "operator", commit, lambda: shutil.rmtree(snapshot, ignore_errors=True))


def other_revision(rev: str) -> Revision:
    commit = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    path = Path(tempfile.mkdtemp(prefix=f"envkiln-bench-{commit}-"))
    path.rmdir()
    _git("worktree", "add", "--detach", str(path), commit)

    def remove() -> None:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(path)],
                       capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "prune"], capture_output=True, check=False)

    return Revision("before", "before_", path / "operator", commit, remove)


# --- one build, measured --------------------------------------------------------------------------


class Bench:
    def __init__(self, cluster: Cluster, index: PackageIndex, base: str, builder: str, workdir: Path,
                 index_via: str, pins: dict[str, list[str]], pod_security: str = "baseline"):
        self.cluster, self.index, self.base, self.builder, self.workdir = cluster, index, base, builder, workdir
        self.index_via, self.pins, self.pod_security = index_via, pins, pod_security
        self.api = config.new_client_from_config(str(cluster.kubeconfig))
        install_crds(self.api)
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.operators: list[OperatorProcess] = []
        self.proxy_env: dict[str, str] | None = None  # the build env of the chart's package proxy, once deployed
        assert cluster.registry is not None
        self.registry = cluster.registry.host

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": self.pod_security}}})
        deadline = time.monotonic() + 60  # ServiceAccount admission: pods need the default account
        while not self.core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no default ServiceAccount in {name}")
            time.sleep(0.2)
        return name

    def build_env(self, via_proxy: bool = False) -> str:
        if via_proxy:
            assert self.proxy_env is not None, "deploy the package proxy first"
            url, host = self.proxy_env["PIP_INDEX_URL"], self.proxy_env["PIP_TRUSTED_HOST"]
        else:
            url, host = self.index.url, self.index.host
        return json.dumps({"PIP_INDEX_URL": url, "PIP_TRUSTED_HOST": host,
                           "PIP_DEFAULT_TIMEOUT": "30", "UV_INDEX_URL": url, "UV_INSECURE_HOST": host})

    def requirement_lines(self, pins: list[str]) -> list[str]:
        return ([f"--index-url {self.index.url}"] if self.index_via == "both" else []) + pins

    def operator(self, revision: Revision, namespaces: list[str], extra: dict[str, str],
                 via_proxy: bool = False) -> OperatorProcess:
        settings = {
            "ENVKILN_REGISTRY": self.registry, "ENVKILN_INSECURE_REGISTRY": "true", "ENVKILN_BUILDER": "buildah",
            "ENVKILN_BUILDAH_IMAGE": self.builder, "ENVKILN_BUILDAH_PUSH_IMAGE": self.builder,
            "ENVKILN_BUILDAH_SECCOMP_PROFILE": str(self.cluster.seccomp_profile),
            "ENVKILN_BUILD_CPU_REQUEST": "100m", "ENVKILN_BUILD_MEMORY_REQUEST": "128Mi",
            "ENVKILN_BUILD_SYNC_SECONDS": "1", "ENVKILN_ENV_SYNC_SECONDS": "2",
            "ENVKILN_REGISTRY_RETRY_SECONDS": "2", "ENVKILN_WATCH_TIMEOUT_SECONDS": "20",
            "ENVKILN_BUILD_RETRY_LIMIT": "0", "ENVKILN_CACHE_TTL_SECONDS": "0",
            "ENVKILN_BUILD_ENV": self.build_env(via_proxy), **extra,
        }
        # Only this bench's settings: an operator refuses ENVKILN_* variables it does not know.
        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ENVKILN_") and k != "ENVKILN_CACHE"}
        try:
            process = OperatorProcess(self.cluster.kubeconfig, settings, namespaces=namespaces, log_dir=self.workdir,
                                      name=f"operator-{revision.label}", source=revision.source).start()
        finally:
            os.environ.update(saved)
        self.operators.append(process)
        deadline = time.monotonic() + 120
        while "envkiln operator" not in process.log():
            if process.exited() or time.monotonic() > deadline:
                raise RuntimeError(f"operator {revision.label} did not start: {process.exited()}\n"
                                   f"{process.log()[-3000:]}")
            time.sleep(0.2)
        return process

    def create(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "environments", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Environment", "metadata": {"name": name}, "spec": spec})

    def system_spec(self, pins: list[str]) -> dict[str, Any]:
        return {"image": self.base, "pip": self.requirement_lines(pins)}

    def plain_spec(self, namespace: str, pins: list[str]) -> dict[str, Any]:
        dockerfile = (f"FROM {self.base}\nCOPY requirements.txt /tmp/requirements.txt\n"
                      "RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir "
                      "--disable-pip-version-check -r /tmp/requirements.txt\nENV PATH=/opt/venv/bin:$PATH\n")
        requirements = "".join(line + "\n" for line in self.requirement_lines(pins))
        self.core.create_namespaced_config_map(namespace, {"metadata": {"name": "plain-context"}, "data": {
            "Dockerfile": dockerfile, "requirements.txt": requirements}})
        return {"build": {"configMap": {"name": "plain-context"}}}

    def measure(self, namespace: str, name: str, spec: dict[str, Any], operator: OperatorProcess,
                timeout: float = 1500) -> dict[str, Any]:
        transfers_before = len(self.index.transfers)
        loads = [load()]
        start = time.monotonic()
        self.create(namespace, name, spec)
        status: dict[str, Any] = {}
        while time.monotonic() - start < timeout:
            body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "environments", name)
            status = body.get("status") or {}
            if status.get("phase") in ("Ready", "Failed"):
                break
            if operator.exited():
                raise RuntimeError(f"operator exited: {operator.exited()}\n{operator.log()[-3000:]}")
            time.sleep(0.25)
        elapsed = time.monotonic() - start
        loads.append(load())
        fetched = self.index.transfers[transfers_before:]
        result: dict[str, Any] = {"namespace": namespace, "name": name, "seconds": round(elapsed, 1),
                                  "phase": status.get("phase"), "load": loads,
                                  "index": _index_summary(fetched)}
        if status.get("phase") != "Ready":
            tail = ""
            with contextlib.suppress(Exception):
                build = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "environmentbuilds",
                                                                 status.get("build", ""))
                tail = (build.get("status") or {}).get("logTail", "")
            raise RuntimeError(f"{namespace}/{name}: {status.get('phase')} after {elapsed:.0f}s: "
                               f"{json.dumps(status.get('conditions', []))[:2000]}\nlog tail:\n{tail}")
        result["image"] = status.get("imageRef") or status.get("image")
        result["layers"] = self.image_layers(status)
        result["image_mib"] = round(self.image_size(status) / 2**20, 1)
        result["job"] = self.job_phases(namespace)
        result["settle_s"] = self.settle(namespace)
        return result

    def probe_index(self, namespace: str, operator: OperatorProcess) -> dict[str, Any]:
        """A package only this index has (made here), with the index given only through the build env:
        whether the build gets Ready, and which client (pip, uv) fetched what from the index."""
        probe = make_wheel("envkiln-bench-probe", "1.0.0", module="envkiln_bench_probe", source="VERSION = 1\n")
        self.index.add(probe)
        before = len(self.index.transfers)
        try:
            result = self.measure(namespace, "uv-probe", {"image": self.base, "pip": ["envkiln-bench-probe==1.0.0"]},
                                  operator, timeout=600)
            outcome: dict[str, Any] = {"phase": result["phase"], "seconds": result["seconds"]}
        except RuntimeError as error:
            outcome = {"phase": "Failed", "error": str(error)[-1500:]}
        self.settle(namespace)
        return {**outcome, "index": _index_summary(self.index.transfers[before:])}

    def image_layers(self, status: dict[str, Any]) -> dict[str, int]:
        """The image's layers: digest -> compressed size."""
        return {layer["digest"]: int(layer["size"]) for layer in self.manifest(status)["layers"]}

    def manifest(self, status: dict[str, Any]) -> dict[str, Any]:
        image, digest = status["image"], status["imageDigest"]
        host, rest = image.split("/", 1)
        repository = rest.rsplit(":", 1)[0].split("@")[0]
        request = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{digest}",
                                         headers={"Accept": MANIFEST_ACCEPT})
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))

    def image_size(self, status: dict[str, Any]) -> int:
        manifest = self.manifest(status)
        return sum(int(layer["size"]) for layer in manifest["layers"]) + int(manifest["config"]["size"])

    def job_phases(self, namespace: str) -> dict[str, Any]:
        """Seconds per container of the build pod, from its container states (one-second resolution)."""
        phases: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            pods = self.core.list_namespaced_pod(namespace, label_selector="envkiln.dev/build").items
            for pod in pods:
                created = pod.metadata.creation_timestamp
                statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
                for container in statuses:
                    done = container.state.terminated if container.state else None
                    if done and done.started_at and done.finished_at:
                        phases[container.name] = {
                            "start_after_pod_s": (done.started_at - created).total_seconds(),
                            "seconds": (done.finished_at - done.started_at).total_seconds()}
                        if container.name == "build":
                            phases["build"]["marks"] = self.build_marks(pod, done.started_at)
        return phases

    def build_marks(self, pod: Any, started: Any) -> dict[str, float]:
        """Where the build container's time went: seconds from its start to the first log line of each
        phase (kubelet timestamps)."""
        log = self.core.read_namespaced_pod_log(pod.metadata.name, pod.metadata.namespace, container="build",
                                                timestamps=True)
        marks: dict[str, float] = {}
        for line in log.splitlines():
            stamp, _, text = line.partition(" ")
            for mark, needle in BUILD_MARKS:
                if mark not in marks and text.startswith(needle):
                    moment = datetime.datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")
                    marks[mark] = round((moment - started).total_seconds(), 1)
        return marks

    def settle(self, namespace: str, timeout: float = 300) -> float:
        """Delete the namespace's finished build Jobs, wait until the kubelet has removed their pods'
        directories (the emptyDir that held buildah's vfs storage: GBs), then flush dirty pages, so
        that no build is measured while the previous one's files are still being deleted or written."""
        start = time.monotonic()
        pods = self.core.list_namespaced_pod(namespace, label_selector="envkiln.dev/build").items
        uids = [pod.metadata.uid for pod in pods]
        self.delete_jobs(namespace)
        root = self.cluster.kubelet_root_dir / "pods"
        while time.monotonic() - start < timeout:
            left = self.core.list_namespaced_pod(namespace, label_selector="envkiln.dev/build").items
            if not left and not any((root / uid).exists() for uid in uids):
                break
            time.sleep(0.5)
        os.sync()
        return round(time.monotonic() - start, 1)

    def delete_jobs(self, namespace: str) -> None:
        with contextlib.suppress(client.ApiException):
            for job in self.batch.list_namespaced_job(namespace).items:
                with contextlib.suppress(client.ApiException):
                    self.batch.delete_namespaced_job(job.metadata.name, namespace, propagation_policy="Background")

    def close(self) -> None:
        for process in self.operators:
            process.stop()
        with contextlib.suppress(Exception):
            self.api.close()


def _index_summary(transfers: list[tuple[str, str, int]]) -> dict[str, Any]:
    """What one build fetched from the index, by client (pip or uv, from the User-Agent): the wheels
    (distinct files, range requests included) and the MiB sent."""
    summary: dict[str, dict[str, Any]] = {}
    for path, agent, sent in transfers:
        who = summary.setdefault(agent.split("/", 1)[0].split(" ", 1)[0] or "?", {"wheels": set(), "mib": 0.0})
        if path.startswith("/files/"):
            who["wheels"].add(path)
        who["mib"] += sent / 2**20
    return {who: {"wheels": len(values["wheels"]), "mib": round(values["mib"], 1)} for who, values in summary.items()}


# --- the run --------------------------------------------------------------------------------------


def svg_chart(results: dict[str, Any], labels: dict[str, str]) -> str:
    """A grouped bar chart (seconds per step, one bar per revision), no dependency."""
    steps = [step for step in STEPS if f"{step}_s" in results]
    revisions = [prefix for prefix in ("", "before_") if f"{prefix}{steps[0]}_s" in results] if steps else []
    colours = {"": "#2b7bba", "before_": "#b0b0b0"}
    top = max([results[f"{p}{s}_s"] for p in revisions for s in steps] + [1.0])
    width, height, left, bottom, group = 700, 320, 50, 40, 150
    bar = (group - 30) / max(len(revisions), 1)
    scale = (height - bottom - 30) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="16">create → Ready, seconds (lower is better)</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="black"/>']
    for i, step in enumerate(steps):
        x0 = left + 10 + i * group
        for j, prefix in enumerate(revisions):
            value = results[f"{prefix}{step}_s"]
            h = value * scale
            x = x0 + j * bar
            parts.append(f'<rect x="{x:.0f}" y="{height - bottom - h:.0f}" width="{bar - 4:.0f}" height="{h:.0f}" '
                         f'fill="{colours[prefix]}"/>')
            parts.append(f'<text x="{x + (bar - 4) / 2:.0f}" y="{height - bottom - h - 4:.0f}" '
                         f'text-anchor="middle">{value:.0f}</text>')
        parts.append(f'<text x="{x0 + (group - 30) / 2:.0f}" y="{height - bottom + 16}" text-anchor="middle">'
                     f'{step.replace("_", " ")}</text>')
    for j, prefix in enumerate(revisions):
        y = height - 8
        parts.append(f'<rect x="{left + j * 300}" y="{y - 10}" width="10" height="10" fill="{colours[prefix]}"/>')
        parts.append(f'<text x="{left + j * 300 + 14}" y="{y}">{labels[prefix]}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def figures(prefix: str, measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for step, result in measured.items():
        out[f"{prefix}{step}_s"] = result["seconds"]
        out[f"{prefix}{'image' if step == 'cold' else step + '_image'}_mib"] = result["image_mib"]
    cold = measured.get("cold", {}).get("layers")
    for step in ("warm", "one_package"):  # what a node that has A's image pulls for this one
        layers = measured.get(step, {}).get("layers")
        if cold is not None and layers is not None:
            out[f"{prefix}{step}_new_mib"] = round(sum(size for digest, size in layers.items()
                                                       if digest not in cold) / 2**20, 1)
    return out


def goals(results: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Each goal of issue #25 for one revision: the ratio and whether it is met."""
    met: dict[str, Any] = {}
    for name, (figure, over, limit) in GOALS.items():
        a, b = results.get(prefix + figure), results.get(prefix + over)
        if a is not None and b:
            met[name] = {"ratio": round(a / b, 3), "met": a / b <= limit}
    plain = results.get(prefix + "plain_image_mib")
    if plain:  # "no image larger than the plain Dockerfile's", each image listed
        met["images_vs_plain_mib"] = {key.removeprefix(prefix): {"mib": value, "larger": value > plain}
                                      for key, value in results.items() if key.endswith("image_mib")
                                      and key.startswith(prefix) and key != prefix + "plain_image_mib"
                                      and (prefix or not key.startswith("before_"))}
    return met


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="progress on stderr; stdout: one JSON line")
    parser.add_argument("--quick", action="store_true", help="2-package environments, cold only unless --only")
    parser.add_argument("--only", default="", help=f"comma-separated steps of {','.join(STEPS)}")
    parser.add_argument("--render-of", metavar="REV", help="also measure the operator of REV (a git worktree)")
    parser.add_argument("--index-via", choices=("both", "build-env"), default="both",
                        help="build-env: the index only through ENVKILN_BUILD_ENV (no --index-url line)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra ENVKILN_NAME for this checkout's operator")
    parser.add_argument("--before-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra ENVKILN_NAME for the --render-of operator")
    parser.add_argument("--probe-uv", action=argparse.BooleanOptionalAction, default=None,
                        help="before measuring, build a made package with the index given only through the build "
                             "env, and report who fetched it (pip or uv) and whether the build got Ready "
                             "(default: with --quick)")
    parser.add_argument("--node-dir", type=Path,
                        help="make the cluster's work directory (kubelet root, so the build pods' emptyDir storage; "
                             "containerd; registry) under this directory, e.g. /var/tmp for a disk like a real "
                             "node's (default: the harness's, /dev/shm: memory, where vfs copies cost less)")
    parser.add_argument("--pod-security", choices=("baseline", "privileged"), default="baseline",
                        help="the Pod Security level the bench's namespaces enforce (baseline admits the buildah "
                             "build container with either storage driver)")
    parser.add_argument("--link-mbps", type=float, help="the index sends its wheels at most this fast (Mbit/s, "
                        "all downloads together), as over a real link (default: as fast as the loopback)")
    parser.add_argument("--package-proxy", action="store_true",
                        help="this checkout's builds read packages through the chart's package proxy on the node "
                             "(implies --index-via build-env)")
    parser.add_argument("--svg", type=Path, help="write a bar chart of the seconds here")
    parser.add_argument("--keep", type=Path, help="copy the operators' logs here")
    args = parser.parse_args(argv)
    ARGS_JSON[0] = args.json
    if args.package_proxy:
        args.index_via = "build-env"  # a --index-url line would send uv past the proxy
    steps = [s for s in (args.only.split(",") if args.only else (["cold"] if args.quick else STEPS)) if s]
    if unknown := set(steps) - set(STEPS):
        parser.error(f"unknown steps {sorted(unknown)}")
    if ("warm" in steps or "one_package" in steps) and "cold" not in steps:
        parser.error("warm and one_package are measured after cold: add cold")
    pins = ({"cold": QUICK_A, "plain": QUICK_A, "warm": QUICK_B, "one_package": QUICK_A_TQDM} if args.quick else
            {"cold": ENV_A, "plain": ENV_A, "warm": ENV_B, "one_package": ENV_A_TQDM})
    revisions: list[Revision] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results: dict[str, Any] = {}
    details: dict[str, Any] = {"steps": steps, "quick": args.quick, "index_via": args.index_via,
                               "pod_security": args.pod_security, "settings": args.setting,
                               "before_settings": args.before_setting, "link_mbps": args.link_mbps,
                               "package_proxy": args.package_proxy}
    cluster: Cluster | None = None
    bench: Bench | None = None
    index: PackageIndex | None = None
    workdir = Path(tempfile.mkdtemp(prefix="envkiln-bench-builds-"))
    try:
        revisions.append(this_checkout())
        if args.render_of:
            revisions.append(other_revision(args.render_of))
        uv_versions = sorted({r.uv_version for r in revisions if r.uv_version})
        wheels = mirror(sorted({p for step in steps for p in pins[step]} | {f"uv=={v}" for v in uv_versions}))
        log(f"wheels in {wheels}; revisions {[(r.label, r.commit) for r in revisions]}; load {load()}")
        t = time.monotonic()
        node_dir = Path(tempfile.mkdtemp(prefix="envkiln-node-", dir=args.node_dir)) if args.node_dir else None
        cluster = Cluster(workdir=node_dir)
        details["node_dir"] = str(cluster.workdir)
        cluster.start()
        assert cluster.registry is not None
        details["cluster_start_s"] = round(time.monotonic() - t, 1)
        registry = cluster.registry.host
        base_digest = push_archive(base_image_archive(), f"{registry}/{BASE_REPOSITORY}:bookworm")
        base = f"{registry}/{BASE_REPOSITORY}@{base_digest}"
        builder_digest = push_archive(builder_image_archive(), f"{registry}/envkiln/builder:bench")
        builder = f"{registry}/envkiln/builder@{builder_digest}"
        link = args.link_mbps * 1e6 / 8 if args.link_mbps else None
        index = PackageIndex(host=cluster.address, directory=wheels, link_bytes_per_second=link).start()
        bench = Bench(cluster, index, base, builder, workdir, args.index_via, pins, args.pod_security)
        if args.package_proxy:
            proxy_namespace = bench.namespace(f"bench-package-proxy-{uuid.uuid4().hex[:6]}")
            t = time.monotonic()
            proxy = deploy_package_proxy(bench.api, cluster, proxy_namespace, base, index.url + "/")
            bench.proxy_env = proxy.build_env
            details["package_proxy_s"] = round(time.monotonic() - t, 1)
            log(f"package proxy Ready at {proxy.address} in {details['package_proxy_s']}s")
        run = uuid.uuid4().hex[:6]
        operators: dict[str, tuple[OperatorProcess, str, str]] = {}
        for revision in revisions:
            extra = dict(s.split("=", 1) for s in (args.setting if not revision.prefix else args.before_setting))
            extra = {(k if k.startswith("ENVKILN_") else f"ENVKILN_{k.upper()}"): v for k, v in extra.items()}
            if revision.uv_image_setting and revision.uv_version:
                tool = f"{registry}/envkiln/tools/uv"
                digest = push_archive(uv_tool_archive(revision.uv_version), f"{tool}:{revision.uv_version}")
                extra.setdefault(f"ENVKILN_{revision.uv_image_setting.upper()}", f"{tool}@{digest}")
            envs = bench.namespace(f"bench-{revision.label}-a-{run}")
            plain = bench.namespace(f"bench-{revision.label}-plain-{run}")
            prime = bench.namespace(f"bench-{revision.label}-prime-{run}")
            details[f"{revision.prefix}operator"] = {"commit": revision.commit, "settings": {
                k: v for k, v in extra.items()}, "namespaces": [envs, plain, prime]}
            via_proxy = args.package_proxy and not revision.prefix
            details[f"{revision.prefix}operator"]["via_package_proxy"] = via_proxy
            operators[revision.prefix] = (bench.operator(revision, [envs, plain, prime], extra, via_proxy), envs, plain)
            # Priming (not measured): the builder image onto the node, with a base no measured build uses.
            bench.core.create_namespaced_config_map(prime, {"metadata": {"name": "prime"}, "data": {
                "Dockerfile": f"FROM {cluster.busybox_image}\nRUN true\n"}})
            primed = bench.measure(prime, "prime", {"build": {"configMap": {"name": "prime"}}},
                                   operators[revision.prefix][0])
            log(f"primed {revision.label} in {primed['seconds']}s")
            if args.probe_uv if args.probe_uv is not None else args.quick:
                details[f"{revision.prefix}uv_probe"] = probe = bench.probe_index(prime, operators[revision.prefix][0])
                log(f"index through the build env only, {revision.label}: {probe}")
        measured: dict[str, dict[str, dict[str, Any]]] = {r.prefix: {} for r in revisions}
        names = {"cold": "env-a", "plain": "plain", "warm": "env-b", "one_package": "env-a-tqdm"}
        try:
            for number, step in enumerate(steps):
                order = revisions if number % 2 == 0 else list(reversed(revisions))  # interleaved, alternating
                for revision in order:
                    process, envs, plain = operators[revision.prefix]
                    if step == "plain":
                        result = bench.measure(plain, names[step], bench.plain_spec(plain, pins[step]), process)
                    else:
                        result = bench.measure(envs, names[step], bench.system_spec(pins[step]), process)
                    measured[revision.prefix][step] = result
                    log(f"{revision.label} {step}: {result['seconds']}s, {result['image_mib']} MiB, "
                        f"index {result['index']}, job {result['job']}, load {result['load']}")
        except Exception as error:  # what was measured is still reported, with the error
            details["error"] = str(error)[-6000:]
            log(f"stopped: {error}")
        for revision in revisions:
            results.update(figures(revision.prefix, measured[revision.prefix]))
            details[f"{revision.prefix}builds"] = measured[revision.prefix]
        for revision in revisions:
            results[f"{revision.prefix}goals"] = goals(results, revision.prefix)
        if len(revisions) > 1:
            results["after_over_before"] = {key: round(results[key] / results[f"before_{key}"], 3)
                                            for key in list(results) if not key.startswith("before_")
                                            and isinstance(results[key], float) and results.get(f"before_{key}")}
    finally:
        if bench is not None:
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for path in workdir.glob("operator-*.log"):
                    shutil.copy(path, args.keep / path.name)
            bench.close()
        if index is not None:
            index.stop()
        if cluster is not None:
            left = cluster.stop()
            if left:
                log("the cluster left things behind:\n  " + "\n  ".join(left))
                details["leftovers"] = left
        for revision in revisions:
            revision.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    results.update({
        "render": revisions[0].commit, "render_of": revisions[1].commit if len(revisions) > 1 else None,
        "quick": args.quick, "started": started, "load_at_end": load(), "details": details})
    if args.svg is not None:
        labels = {"": f"this checkout ({revisions[0].commit})",
                  "before_": f"{revisions[1].commit}" if len(revisions) > 1 else ""}
        args.svg.write_text(svg_chart(results, labels))
    if args.json:
        print(json.dumps(results), flush=True)
    return results


if __name__ == "__main__":
    sys.exit(1 if main().get("details", {}).get("error") else 0)
