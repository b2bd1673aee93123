"""The test cluster's node is real: pods are scheduled, run in containerd, have logs, and reach
the API server through the `kubernetes` Service; the harness notices what a cluster leaves behind."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from kubernetes import client

from harness import hostshare, leftovers
from harness.cluster import Cluster
from harness.node import unmount_under


def wait_for(check, timeout: float, what: str, interval: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_node_is_ready_and_schedulable(node_ready: Cluster, api_client: client.ApiClient) -> None:
    assert node_ready.node is not None
    node = client.CoreV1Api(api_client).read_node(node_ready.node.name)
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True"
    assert not node.spec.taints
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == [node_ready.network.node_ip]
    assert (node_ready.node.seccomp_dir / "containers-common.json").is_file()


def test_busybox_job_runs_to_completion_and_logs(node_ready: Cluster, api_client: client.ApiClient,
                                                 namespace: str) -> None:
    assert "@sha256:" in node_ready.busybox_image
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "containers": [{"name": "hello", "image": node_ready.busybox_image,
                            "command": ["sh", "-c", "echo hello from $(hostname) on the envkiln node"]}]}}}})

    def complete() -> bool:
        status = batch.read_namespaced_job_status("hello", namespace).status
        assert not status.failed, f"job failed: {status}"
        return bool(status.succeeded)

    wait_for(complete, 90, "the Job to complete")
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=hello").items
    assert len(pods) == 1 and pods[0].status.phase == "Succeeded"
    assert pods[0].spec.node_name == node_ready.node.name  # type: ignore[union-attr]
    assert pods[0].status.pod_ip.startswith(node_ready.network.pod_cidr.rsplit(".", 1)[0] + ".")
    log = core.read_namespaced_pod_log(pods[0].metadata.name, namespace)
    assert f"hello from {pods[0].metadata.name} on the envkiln node" in log


PROBE = """
import os, ssl, urllib.request, urllib.error
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")  # the serving cert names the ClusterIP
token = open(f"{sa}/token").read()
for path in ("/version", f"/api/v1/namespaces/{open(sa + '/namespace').read()}/pods"):
    request = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            print("HTTP", path, response.status, response.read()[:200].decode())
    except urllib.error.HTTPError as error:
        print("HTTP", path, error.code)
"""


@pytest.mark.kube_proxy
def test_pod_reaches_apiserver_through_kubernetes_service(node_ready: Cluster, api_client: client.ApiClient,
                                                          namespace: str, base_image: str) -> None:
    core = client.CoreV1Api(api_client)
    service = core.read_namespaced_service("kubernetes", "default")
    assert service.spec.cluster_ip.startswith(node_ready.network.service_cidr.rsplit(".", 1)[0] + ".")
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "probe", "image": base_image, "command": ["python3", "-c", PROBE]}]}})

    def finished() -> str | None:
        phase = core.read_namespaced_pod("probe", namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, 120, "the probe pod to finish")
    log = core.read_namespaced_pod_log("probe", namespace)
    assert phase == "Succeeded", log
    assert "HTTP /version 200" in log and '"gitVersion": "v1.34.4"' in log, log
    # authenticated as the pod's ServiceAccount (a real token), which may not list pods
    assert f"HTTP /api/v1/namespaces/{namespace}/pods 403" in log, log


def test_leftover_check_notices_what_is_left() -> None:
    """The check the session teardown relies on can fail: a leftover interface, mount, process,
    and iptables chain all show up, and vanish again once removed."""
    with tempfile.TemporaryDirectory(prefix="envkiln-leftover-") as tmp:
        before = leftovers.snapshot(tmp)
        name = f"ekt{Path(tmp).name[-4:]}".lower()[:15]
        mount = Path(tmp) / "mnt"
        mount.mkdir()
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
        subprocess.run(["iptables", "-t", "filter", "-N", f"CNI-EK-{name}"[:28]], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "envkiln-leftover", str(mount)], check=True)
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", tmp])
        try:
            found = wait_for(lambda: "\n".join(d for d in leftovers.compare(before, leftovers.snapshot(tmp)))
                             if str(sleeper.pid) in str(leftovers.processes(tmp)) else "", 10, "the sleeper")
            assert f"interfaces: + {name}" in found
            assert f"mounts: + {mount}" in found
            assert f"chain CNI-EK-{name}" in found
            assert f"processes: + {sleeper.pid}:" in found
        finally:
            sleeper.kill()
            sleeper.wait()
            unmount_under(Path(tmp))
            subprocess.run(["iptables", "-t", "filter", "-X", f"CNI-EK-{name}"[:28]], check=False)
            subprocess.run(["ip", "link", "del", name], check=False)
        # (other pods of the session may come and go meanwhile: look only at what this test made)
        still = "\n".join(leftovers.compare(before, leftovers.snapshot(tmp)))
        assert name not in still and tmp not in still, still


def test_two_clusters_share_the_host_and_the_last_one_out_cleans(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """harness.hostshare: the first cluster's snapshot is the one every later cluster compares with,
    and only the last one to leave is told to undo the host-wide parts; a killed run's entry does not
    count (its flock went with it)."""
    monkeypatch.setenv("ENVKILN_CACHE", str(tmp_path))
    first, second = hostshare.Entry("aaaa"), hostshare.Entry("bbbb")
    with hostshare.mutex():
        before = first.join()
    (tmp_path / "clusters" / "cccc.lock").write_text("")  # a run that was killed: nobody holds it
    with hostshare.mutex():
        assert hostshare.others_running("bbbb") == ["aaaa"]
        assert not (tmp_path / "clusters" / "cccc.lock").exists()
        assert second.join() == before
    with hostshare.mutex():
        assert first.leave() is False  # the second still runs
    with hostshare.mutex():
        assert second.leave() is True
    assert not list((tmp_path / "clusters").glob("*.lock")) and not (tmp_path / "clusters" / "pristine.json").exists()
    lines = ["interfaces: + ekaaaa", "interfaces: + vethdeadbeef", "routes: + unreachable 10.98.7.0/24",
             "iptables: + iptables-save filter chain KUBE-KUBELET-CANARY"]
    assert hostshare.own_items(lines, ("ekaaaa", "10.98.7.")) == lines[:1] + lines[2:3]
