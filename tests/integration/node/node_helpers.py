"""Constants and small helpers of the real-node tests."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from harness.pypi import PackageIndex
from operator_helpers import wait_for

PROBE = "envkiln-probe"
PROBE_VERSION = "1.2.3"
PROBE_SOURCE = f'VERSION = "{PROBE_VERSION}"\n'


def index_steps(index: PackageIndex) -> list[str]:
    """Docker steps pointing pip at the local index (docker steps run before the package installs)."""
    return [f"ENV PIP_INDEX_URL={index.url} PIP_TRUSTED_HOST={index.host} PIP_DEFAULT_TIMEOUT=5 PIP_RETRIES=0"]


MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def registry_digest(image: str) -> str:
    """The registry's own Docker-Content-Digest for repository:tag."""
    name, tag = image.rsplit(":", 1)
    host, repository = name.split("/", 1)
    request = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": MANIFEST_ACCEPT})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.headers["Docker-Content-Digest"])


PRINT_PROBE = ["python", "-c", "import envkiln_probe; print('probe', envkiln_probe.VERSION)"]


def probe_spec(base: str, index: PackageIndex, *extra_steps: str, pip: list[str] | None = None) -> dict[str, Any]:
    """A definition of its own (a unique step), so no other test's image is a cache hit for it."""
    unique = f"ENV ENVKILN_TEST_DEFINITION={uuid.uuid4().hex[:12]}"
    return {"image": base, "dockerSteps": [*index_steps(index), unique, *extra_steps],
            "pip": pip or [f"{PROBE}=={PROBE_VERSION}"]}


def training_job(name: str, labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 600, "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                         "containers": [{"name": "trainer", "image": "placeholder", "command": PRINT_PROBE}]}}}}


def job_pod(core: client.CoreV1Api, namespace: str, job: str) -> client.V1Pod | None:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods[0] if pods else None


def wait_job_complete(batch: client.BatchV1Api, namespace: str, name: str, timeout: float,
                      diagnostics: Callable[[], str]) -> client.V1Job:
    def done() -> client.V1Job | None:
        job = batch.read_namespaced_job(name, namespace)
        types = {c.type for c in job.status.conditions or [] if c.status == "True"}
        if "Failed" in types:
            raise AssertionError(f"Job {name} failed: {job.status}\n{diagnostics()}")
        return job if "Complete" in types else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"Job {name} Complete", diagnostics=diagnostics)


# --- the chart's operator pods (tests that install the chart with helm) ------------------------

OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"


def ready_operator_pod(core: client.CoreV1Api, namespace: str) -> client.V1Pod | None:
    """A Ready operator pod of the chart in `namespace` that is not being deleted."""
    for pod in core.list_namespaced_pod(namespace, label_selector=OPERATOR_SELECTOR).items:
        ready = {c.type: c.status for c in pod.status.conditions or []}.get("Ready") == "True"
        if pod.metadata.deletion_timestamp is None and ready:
            return pod
    return None


def operator_logs(core: client.CoreV1Api, namespace: str, tail: int = 60) -> str:
    """The last lines of every operator pod's log and its status, for an assertion's message."""
    chunks = []
    for pod in core.list_namespaced_pod(namespace, label_selector=OPERATOR_SELECTOR).items:
        chunks.append(f"--- {pod.metadata.name}: {pod.status.phase} {pod.status.container_statuses} ---")
        try:
            chunks.append(core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=tail))
        except client.ApiException as error:
            chunks.append(f"(no log: {error.reason})")
    return "\n".join(chunks)


def delete_crds_except(extensions: client.ApiextensionsV1Api, keep: set[str]) -> None:
    """Delete every CRD not named in `keep`: Helm never removes the CRDs it installed (Kopf's peering
    ones, or envkiln's with crds.keep), so a chart test leaves the cluster as it found it."""
    for crd in extensions.list_custom_resource_definition().items:
        if crd.metadata.name not in keep:
            try:
                extensions.delete_custom_resource_definition(crd.metadata.name)
            except client.ApiException as error:
                if error.status != 404:
                    raise


CrdMetadata = dict[str, tuple[dict[str, str], dict[str, str]]]


def crd_metadata(extensions: client.ApiextensionsV1Api) -> CrdMetadata:
    """Every CRD's labels and annotations, to put back with `restore_crds`."""
    return {crd.metadata.name: (crd.metadata.labels or {}, crd.metadata.annotations or {})
            for crd in extensions.list_custom_resource_definition().items}


def restore_crds(extensions: client.ApiextensionsV1Api, before: CrdMetadata) -> None:
    """Leave the cluster's CRDs as `before` found them: those a release brought deleted, and those that
    were there without a release's labels and annotations given them back (a later release would
    otherwise find them owned by this one and leave them alone)."""
    delete_crds_except(extensions, set(before))
    for crd in extensions.list_custom_resource_definition().items:
        if crd.metadata.name not in before:  # deleted just now, still finishing
            continue
        labels, annotations = before[crd.metadata.name]
        restore = {"metadata": {
            "labels": {k: labels.get(k) for k in {**(crd.metadata.labels or {}), **labels}},
            "annotations": {k: annotations.get(k) for k in {**(crd.metadata.annotations or {}), **annotations}}}}
        with contextlib.suppress(client.ApiException):
            extensions.patch_custom_resource_definition(crd.metadata.name, restore)


# --- faults on the node (test_faults.py) ----------------------------------------------------------

def small_spec(base: str, token: str, index: object, *extra_steps: str) -> dict[str, Any]:
    """A definition that builds in seconds: docker steps only (no pip). Its image holds `/n`, whose
    content (`<token>-<index>`) a training pod prints to show which image it runs."""
    return {"image": base, "dockerSteps": [f"RUN echo {token}-{index} > /n", *extra_steps]}


def cat_job(name: str, environment: str, command: str = "cat /n") -> dict[str, Any]:
    """A training Job that names `environment` (label): the webhook gates it or sets its image."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 3600, "template": {
                "metadata": {"labels": {"envkiln.dev/environment": environment}},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                         "enableServiceLinks": False, "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "trainer", "image": "placeholder",
                                         "command": ["/bin/sh", "-c", command]}]}}}}


def registry_holds(image: str, digest: str) -> bool:
    """Whether the registry serves the manifest `digest` in the repository of `image` (repository:tag)."""
    name = image.rsplit(":", 1)[0] if "@" not in image else image.split("@", 1)[0]
    host, repository = name.split("/", 1)
    request = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{digest}", method="HEAD",
                                     headers={"Accept": MANIFEST_ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise


def container_state(pod: client.V1Pod, name: str) -> Any:
    """The state (V1ContainerState) of container or init container `name`, or None."""
    for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
        if status.name == name:
            return status.state
    return None


def build_pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector="envkiln.dev/build").items)


def running_in(pod: client.V1Pod, container: str) -> bool:
    state = container_state(pod, container)
    return bool(state is not None and state.running)


def terminated_ok(pod: client.V1Pod, container: str) -> bool:
    state = container_state(pod, container)
    return bool(state is not None and state.terminated and state.terminated.exit_code == 0)


class PodHistory(threading.Thread):
    """Watches the labelled pods of a namespace (reconnecting through API-server restarts, relisting
    on 410) and keeps, per pod, every distinct (first container's image, gated) state in order: a
    gate is released once when a pod goes gated -> ungated once and its image changes once."""

    GATE = "envkiln.dev/environment"

    def __init__(self, api: client.ApiClient, namespace: str, selector: str = "envkiln.dev/environment"):
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(api)
        self.namespace, self.selector = namespace, selector
        self.states: dict[str, list[tuple[str, bool]]] = {}
        self.reconnects = 0
        self.halt = threading.Event()
        self._lock = threading.Lock()

    def _record(self, pod: client.V1Pod) -> None:
        image = pod.spec.containers[0].image
        gated = any(g.name == self.GATE for g in pod.spec.scheduling_gates or [])
        with self._lock:
            seen = self.states.setdefault(pod.metadata.name, [])
            if not seen or seen[-1] != (image, gated):
                seen.append((image, gated))

    def run(self) -> None:
        from kubernetes import watch

        version = None
        while not self.halt.is_set():
            try:
                if version is None:
                    listed = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
                    for pod in listed.items:
                        self._record(pod)
                    version = listed.metadata.resource_version
                stream = watch.Watch()
                for event in stream.stream(self.core.list_namespaced_pod, self.namespace,
                                           label_selector=self.selector, resource_version=version,
                                           timeout_seconds=10, _request_timeout=15):
                    if event["type"] == "ERROR":
                        version = None  # 410 Gone: relist
                        break
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self._record(pod)
                    if self.halt.is_set():
                        break
            except client.ApiException as error:
                self.reconnects += 1
                if error.status == 410:
                    version = None
                time.sleep(0.5)
            except Exception:  # the API server is restarting: a broken connection
                self.reconnects += 1
                time.sleep(0.5)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)

    def history(self, pod: str) -> list[tuple[str, bool]]:
        with self._lock:
            return list(self.states.get(pod, []))

    def releases(self, pod: str) -> int:
        """How many times the pod went from gated to ungated."""
        states = self.history(pod)
        return sum(1 for before, after in itertools.pairwise(states) if before[1] and not after[1])

    def images(self, pod: str) -> list[str]:
        """The distinct images the pod had, in order."""
        out: list[str] = []
        for image, _ in self.history(pod):
            if not out or out[-1] != image:
                out.append(image)
        return out


class AdmissionProbe(threading.Thread):
    """Creates (dry run) a pod labelled for `environment` over and over, as a workload controller
    would, and records when each one was admitted - with its image or its gate - or refused
    (a pod admitted unchanged counts as refused: failurePolicy Fail promises it never is)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, environment: str):
        super().__init__(daemon=True)
        self.core, self.namespace, self.environment = core, namespace, environment
        self.halt = threading.Event()
        self.admitted: list[float] = []
        self.refused: list[tuple[float, str]] = []
        self.unchanged: list[float] = []
        self.started = self.ended = 0.0

    def run(self) -> None:
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "admission-probe", "labels": {"envkiln.dev/environment": self.environment}},
                "spec": {"containers": [{"name": "main", "image": "placeholder"}]}}
        self.started = time.monotonic()
        while not self.halt.is_set():
            at = time.monotonic()
            try:
                pod = self.core.create_namespaced_pod(self.namespace, body, dry_run="All", _request_timeout=30)
            except client.ApiException as error:
                self.refused.append((at, f"{error.status} {error.reason}: {error.body}"))
            except Exception as error:  # a broken connection to the API server is a refusal too
                self.refused.append((at, repr(error)))
            else:
                gated = [g.name for g in pod.spec.scheduling_gates or []] == ["envkiln.dev/environment"]
                if gated or pod.spec.containers[0].image != "placeholder":
                    self.admitted.append(at)
                else:
                    self.unchanged.append(at)
                    self.refused.append((at, "admitted unchanged"))
            time.sleep(0.05)
        self.ended = time.monotonic()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)

    def longest_clear_window(self) -> float:
        """The longest span with no refusal, in seconds (the whole run when none was refused)."""
        edges = [self.started, *sorted(at for at, _ in self.refused), self.ended]
        return max(later - earlier for earlier, later in itertools.pairwise(edges))

    def longest_gap(self) -> float:
        """The longest time between two admissions (a slow review shows here)."""
        times = [self.started, *self.admitted, self.ended]
        return max(later - earlier for earlier, later in itertools.pairwise(times))


@contextlib.contextmanager
def chart_release(cluster: Any, api: client.ApiClient, registry_host: str, base_image: str, builder_image: str,
                  workdir: Path, name: str = "envkiln", uv_image: str = "") -> Iterator[tuple[str, str]]:
    """`helm install charts/envkiln` as users do (its operator image built here from the sources,
    webhook on with failurePolicy Fail, the chart's RBAC, two replicas peering), watching one tenant
    namespace: yields (release namespace, tenant namespace); uninstalls and removes the CRDs Helm
    installed afterwards and gives the CRDs that were there their labels and annotations back."""
    from harness.buildah import push_archive
    from harness.controlplane import REPO_ROOT, cache_dir
    from harness.operator_image import operator_image_archive

    core = client.CoreV1Api(api)
    extensions = client.ApiextensionsV1Api(api)
    crds_before = crd_metadata(extensions)
    suffix = uuid.uuid4().hex[:6]
    namespace, tenant = f"envkiln-system-{suffix}", f"tenant-{suffix}"
    core.create_namespace({"metadata": {"name": tenant, "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}})
    archive = operator_image_archive(base_image)
    repository = f"{registry_host}/envkiln/operator"
    tag = archive.name.split(".")[0].removeprefix("operator-")
    push_archive(archive, f"{repository}:{tag}")
    values = {
        "image": {"repository": repository, "tag": tag},
        "curated": {"enabled": False},
        "webhook": {"enabled": True, "failurePolicy": "Fail"},
        "operator": {
            # uv_image "": builds install with pip (the chart's default uv image is not reachable here).
            "registry": registry_host, "insecureRegistry": True, "builder": "buildah", "uvImage": uv_image,
            "buildah": {"image": builder_image, "pushImage": builder_image,
                        "kubeletRootDir": str(cluster.kubelet_root_dir)},
            "buildResources": {"cpuRequest": "100m", "cpuLimit": "2", "memoryRequest": "128Mi",
                               "memoryLimit": "2Gi", "ephemeralStorageRequest": "100Mi",
                               "ephemeralStorageLimit": "5Gi"},
            "buildRetryBackoffSeconds": 1, "watchNamespaces": [tenant],
            "extraEnv": [{"name": "ENVKILN_BUILD_SYNC_SECONDS", "value": "1"},
                         {"name": "ENVKILN_ENV_SYNC_SECONDS", "value": "2"},
                         {"name": "ENVKILN_CACHE_TTL_SECONDS", "value": "0"},
                         {"name": "ENVKILN_WATCH_TIMEOUT_SECONDS", "value": "30"}],
        },
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    }
    values_file = workdir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm = [str(cache_dir() / "bin" / "helm"), "--kubeconfig", str(cluster.kubeconfig)]
    try:
        installed = subprocess.run([*helm, "install", name, str(REPO_ROOT / "charts" / "envkiln"), "-n", namespace,
                                    "--create-namespace", "-f", str(values_file), "--wait", "--timeout", "5m"],
                                   capture_output=True, text=True, timeout=400)
        assert installed.returncode == 0, installed.stderr + "\n" + operator_logs(core, namespace)
        yield namespace, tenant
    finally:
        subprocess.run([*helm, "uninstall", name, "-n", namespace, "--wait", "--timeout", "2m"],
                       capture_output=True, timeout=200)
        for created in (tenant, namespace):
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(created)
        restore_crds(extensions, crds_before)


def active_operator(api: client.ApiClient, namespace: str, tenant: str) -> client.V1Pod | None:
    """The chart's replica that acts: the highest priority in the Kopf peering of the watched
    namespace among the ready operator pods (the others stand by; every one answers the webhook)."""
    peering = client.CustomObjectsApi(api).get_namespaced_custom_object("kopf.dev", "v1", tenant, "kopfpeerings",
                                                                         "envkiln")
    peers = peering.get("status") or {}
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(namespace, label_selector=OPERATOR_SELECTOR).items
    ready = {pod.metadata.name: pod for pod in pods if pod.metadata.deletion_timestamp is None
             and {c.type: c.status for c in pod.status.conditions or []}.get("Ready") == "True"}
    ranked = sorted((peer.get("priority", 0), name) for name, peer in peers.items() if name in ready)
    return ready[ranked[-1][1]] if ranked else None


def run_in(core: client.CoreV1Api, namespace: str, image: str, script: str, timeout: float = 120) -> str:
    """Run `script` in a pod of `image` on the node; its log (the pod must succeed)."""
    name = f"run-{uuid.uuid4().hex[:8]}"
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": image, "command": ["/bin/sh", "-c", script]}]}})

    def done() -> str | None:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.status.phase in ("Succeeded", "Failed"):
            return str(pod.status.phase)
        return None

    phase = wait_for(done, timeout=timeout, interval=0.5, what=f"pod {name} to finish")
    log = core.read_namespaced_pod_log(name, namespace, container="main")
    assert phase == "Succeeded", log
    return str(log)
