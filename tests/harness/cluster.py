"""A one-node Kubernetes cluster whose pods really run, for tests and the demo.

network (bridge + node address) -> registry on the node address (+ the busybox/pause image) ->
containerd -> etcd + kube-apiserver (on the node address) -> controller-manager + scheduler ->
kubelet + kube-proxy -> wait for the node to be Ready and schedulable.

`Cluster(kube_proxy=False)` runs no kube-proxy (pods reach no ClusterIP Service): such a cluster can run
beside one that has it (harness.hostshare), which is how `make test` runs the node tests in two halves.

`stop()` undoes everything (processes, pods, mounts, interfaces, iptables chains, sysctls,
directories outside the work directory) and records in `leftovers` whatever differs from the
snapshot taken before the start. Run `python -m harness.cluster [--keep]` to try it by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from harness import hostshare, leftovers
from harness.controlplane import ControlPlane, _fast_tmp, ensure_binaries
from harness.network import TestNetwork
from harness.node import SECCOMP_PROFILE, Node, NodeConfig, busybox_image_archive, node_lock, umount, unmount_under
from harness.process import ManagedProcess
from harness.registry import Registry

BUSYBOX_REPOSITORY = "envkiln-test/busybox"


def _skopeo_push(archive: Path, destination: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--digestfile", str(digest_file),
                        f"oci-archive:{archive}", f"docker://{destination}"],
                       check=True, capture_output=True, timeout=120)
        return digest_file.read_text().strip()


class Cluster:
    """Use as a context manager, or start()/stop(). After stop(), `leftovers` lists what was not undone."""

    def __init__(self, workdir: Path | None = None, ready_timeout: float = 120, kube_proxy: bool = True):
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="envkiln-node-", dir=_fast_tmp()))
        self.ready_timeout = ready_timeout
        self.kube_proxy = kube_proxy
        self.network = TestNetwork()
        self._entry = hostshare.Entry(self.network.ident)
        self.control_plane: ControlPlane | None = None
        self.registry: Registry | None = None
        self.node: Node | None = None
        self.controller_manager: ManagedProcess | None = None
        self.scheduler: ManagedProcess | None = None
        self.busybox_image = ""  # host:port/repo@sha256:..., pullable by the node
        self.leftovers: list[str] = []
        self.timings: dict[str, float] = {}
        self._stack = ExitStack()
        self._before: dict[str, set[str]] = {}
        self._sysctls: dict[str, str] = {}
        self._dirs_before: set[str] = set()
        self._netns_before: set[str] = set()
        self._chains_before: set[str] = set()
        self._bin_dir: Path | None = None

    @property
    def kubeconfig(self) -> Path:
        assert self.control_plane is not None
        return self.control_plane.kubeconfig

    @property
    def address(self) -> str:
        """The node's address on the test network: API server, registry and kubelet listen here."""
        return self.network.node_ip

    @property
    def kubelet_root_dir(self) -> Path:
        assert self.node is not None
        return self.node.root_dir

    @property
    def seccomp_dir(self) -> Path:
        assert self.node is not None
        return self.node.seccomp_dir

    @property
    def seccomp_profile(self) -> str:
        """A Localhost seccomp profile (Debian's containers-common one), relative to `seccomp_dir`."""
        return SECCOMP_PROFILE

    def _mark(self, what: str, since: float) -> None:
        self.timings[what] = round(time.monotonic() - since, 1)

    def start(self) -> Cluster:
        t0 = time.monotonic()
        self._bin_dir = bin_dir = ensure_binaries(("etcd", "apiserver", "node"))
        self._mark("binaries", t0)
        if self.kube_proxy:
            self._stack.enter_context(node_lock())
        t = time.monotonic()
        with hostshare.mutex():  # the host before the first running cluster, and a network no other one took
            self._before = self._entry.join()
            self.network.up()
        self._sysctls = dict(item.split("=", 1) for item in self._before["sysctls"])
        self._dirs_before = set(self._before["directories"])
        self._netns_before = set(self._before["mounts"])
        self._chains_before = set(self._before["iptables"])
        node_ip = self.network.node_ip

        self.registry = Registry(self.workdir / "registry", address=node_ip).start()
        digest = _skopeo_push(busybox_image_archive(), f"{self.registry.host}/{BUSYBOX_REPOSITORY}:latest")
        self.busybox_image = f"{self.registry.host}/{BUSYBOX_REPOSITORY}@{digest}"
        self._mark("network+registry", t)

        plane = ControlPlane(self.workdir / "cp", bin_dir=bin_dir, address=node_ip,
                             service_cidr=self.network.service_cidr, node_mode=True)
        self.control_plane = plane
        self.node = Node(self.workdir / "node", self.network, NodeConfig(
            bin_dir=bin_dir, kubeconfig=plane.kubeconfig, ca_cert=plane.workdir / "certs" / "ca.crt",
            sandbox_image=self.busybox_image, registries=(self.registry.host,)))
        self.node.start_containerd()  # starts while the API server comes up
        t = time.monotonic()
        plane.start()
        self._mark("control plane", t)
        assert plane.certs is not None
        t = time.monotonic()
        self.controller_manager = ManagedProcess("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"), f"--kubeconfig={plane.kubeconfig}",
            "--leader-elect=false", "--secure-port=0", "--bind-address=127.0.0.1",
            "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle",
            f"--service-account-private-key-file={plane.certs.service_account_key}",
            f"--root-ca-file={plane.certs.ca_cert}", f"--cluster-cidr={self.network.pod_cidr}",
            f"--service-cluster-ip-range={self.network.service_cidr}",
            f"--flex-volume-plugin-dir={self.workdir / 'kcm-volume-plugins'}", "--v=1",
        ], self.workdir / "kube-controller-manager.log").start()
        self.scheduler = ManagedProcess("kube-scheduler", [
            str(bin_dir / "kube-scheduler"), f"--kubeconfig={plane.kubeconfig}", "--leader-elect=false",
            "--secure-port=0", "--bind-address=127.0.0.1", "--v=1",
        ], self.workdir / "kube-scheduler.log").start()
        self.node.wait_containerd()
        self.node.start_kubelet()
        if self.kube_proxy:
            self.node.start_proxy()
        self.wait_ready()
        self._mark("node ready", t)
        self._mark("total", t0)
        return self

    def api(self):  # type: ignore[no-untyped-def]
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig))

    def _alive(self) -> str | None:
        for process in (self.controller_manager, self.scheduler, *(
                (self.node.containerd, self.node.kubelet, self.node.proxy) if self.node else ())):
            if process is not None and process.exited():
                return f"{process.name}: {process.exited()}"
        return None

    def wait_ready(self) -> None:
        from kubernetes import client

        assert self.node is not None
        with contextlib.closing(self.api()) as api:
            core = client.CoreV1Api(api)
            deadline = time.monotonic() + self.ready_timeout
            state = "not registered"
            while time.monotonic() < deadline:
                died = self._alive()
                if died:
                    raise RuntimeError(f"node part exited: {died}")
                try:
                    node = core.read_node(self.node.name)
                    ready = {c.type: c.status for c in (node.status.conditions or [])}.get("Ready")
                    taints = [t.key for t in (node.spec.taints or [])]
                    state = f"Ready={ready} taints={taints}"
                    if ready == "True" and not taints:
                        # pods need their namespace's default ServiceAccount (ServiceAccount admission)
                        core.read_namespaced_service_account("default", "default")
                        return
                except client.ApiException as error:
                    if error.status != 404:
                        raise
                time.sleep(0.3)
            raise TimeoutError(f"node {self.node.name} not ready after {self.ready_timeout:.0f}s: {state}\n"
                               f"kubelet log tail:\n{self.node.kubelet.log_tail() if self.node.kubelet else ''}")

    # stopping

    def _delete_pods(self, timeout: float = 30) -> None:
        """Let the kubelet stop every pod (CNI teardown, unmounts) while everything still runs."""
        from kubernetes import client

        if self.control_plane is None or self.control_plane.apiserver is None \
                or self.control_plane.apiserver.exited() or self.node is None or self.node.kubelet is None \
                or self.node.kubelet.exited():
            return
        with contextlib.closing(self.api()) as api:
            core = client.CoreV1Api(api)
            with contextlib.suppress(Exception):
                for pod in core.list_pod_for_all_namespaces().items:
                    with contextlib.suppress(client.ApiException):
                        core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.node.ctr("tasks", "ls", "-q", check=False).stdout.split():
                return
            time.sleep(0.3)

    def _cleanup_proxy(self) -> None:
        if self._bin_dir is not None:
            subprocess.run([str(self._bin_dir / "kube-proxy"), "--cleanup"], capture_output=True, timeout=60,
                           check=False)

    def _cleanup_iptables(self) -> list[str]:
        """Every KUBE-/CNI-/envkiln chain and rule the host did not have before the first cluster."""
        errors: list[str] = []
        self._cleanup_proxy()
        new = leftovers.iptables() - self._chains_before
        chains: dict[tuple[str, str], set[str]] = {}
        for item in new:
            tool, table, kind, rest = item.split(" ", 3)
            if kind == "chain":
                chains.setdefault((tool, table), set()).add(rest)
        for item in sorted(new):
            tool, table, kind, rest = item.split(" ", 3)
            if kind != "rule":
                continue
            words = shlex.split(rest)
            target = words[words.index("-j") + 1] if "-j" in words else ""
            if target in chains.get((tool, table), set()) or "envkiln" in rest:
                command = tool.replace("-save", "")
                subprocess.run([command, "-t", table, "-D", *words[1:]], capture_output=True, check=False)
        for (tool, table), names in chains.items():
            command = tool.replace("-save", "")
            for name in names:
                subprocess.run([command, "-t", table, "-F", name], capture_output=True, check=False)
            for name in names:
                result = subprocess.run([command, "-t", table, "-X", name], capture_output=True, text=True,
                                        check=False)
                if result.returncode:
                    errors.append(f"{command} -t {table} -X {name}: {result.stderr.strip()}")
        return errors

    def stop(self) -> list[str]:
        """Stop and undo everything; returns (and keeps in `leftovers`) what differs from before."""
        t = time.monotonic()
        errors: list[str] = []
        for process in (self.scheduler, self.controller_manager):
            if process is not None:
                process.stop(timeout=10)
        try:
            self._delete_pods()
        except Exception as error:  # teardown goes on
            errors.append(f"deleting pods: {error}")
        if self.node is not None:
            errors += self.node.stop()
        if self.control_plane is not None:
            self.control_plane.stop()
        if self.registry is not None:
            self.registry.stop()
        if self._before and self.kube_proxy:
            self._cleanup_proxy()  # one cluster at a time runs kube-proxy (node_lock): its chains are its own
        errors += self.network.down()
        errors += unmount_under(self.workdir)
        if not os.environ.get("ENVKILN_KEEP_TESTDIRS"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._before:
            with hostshare.mutex():
                last = self._entry.leave()
                if last:  # the last one out undoes the host-wide parts
                    errors += self._undo_host_wide()
                differences = leftovers.compare(self._before, leftovers.snapshot(self.workdir))
                if not last:  # another cluster still runs: answer for this one's own parts only
                    differences = hostshare.own_items(differences, (str(self.workdir), *self.network.own_names()))
                self.leftovers = errors + differences
            self._before = {}
        else:
            self.leftovers = errors
        self._stack.close()
        self._mark("stop", t)
        return self.leftovers

    def _undo_host_wide(self) -> list[str]:
        errors = self._cleanup_iptables()
        if self._sysctls:
            errors += leftovers.restore_sysctls(self._sysctls)
        for directory in sorted(leftovers.directories() - self._dirs_before):
            errors += unmount_under(Path(directory))
            shutil.rmtree(directory, ignore_errors=True)
            if os.path.lexists(directory):
                errors.append(f"could not remove {directory}")
        # network namespaces bind-mounted under /run/netns (containerd keeps them under its state
        # directory here, so this finds none unless that changes)
        for point in sorted(leftovers.mounts(None) - self._netns_before):
            if point.startswith("/run/netns/"):
                errors += umount(point)
                with contextlib.suppress(OSError):
                    os.unlink(point)
        return errors

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the cluster running until Ctrl-C")
    parser.add_argument("--no-kube-proxy", action="store_true",
                        help="run no kube-proxy (no ClusterIP Services; can run beside a cluster that has one)")
    args = parser.parse_args(argv)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)  # also when started in the background (SIGINT ignored there)
    cluster = Cluster(kube_proxy=not args.no_kube_proxy)
    try:
        cluster.start()
        print(f"KUBECONFIG={cluster.kubeconfig}", flush=True)
        print(f"registry {cluster.registry.url if cluster.registry else ''}  busybox {cluster.busybox_image}",
              flush=True)
        print(f"timings {cluster.timings}", flush=True)
        if args.keep:
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    finally:
        left = cluster.stop()
        print(f"stopped in {cluster.timings.get('stop')}s", flush=True)
        if left:
            print("LEFT BEHIND:\n  " + "\n  ".join(left), file=sys.stderr, flush=True)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
