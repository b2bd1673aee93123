"""A real Kubernetes node for tests: containerd + runc + CNI, the kubelet and kube-proxy.

Recipe and pitfalls: /work/shared/NODE.md. All state lives under the node's work directory;
what the parts still put on the host (mounts, netns, iptables chains, sysctls, a few
directories) is undone by `Node.stop()` and `harness.cluster`.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.controlplane import cache_dir
from harness.leftovers import mounts
from harness.network import TestNetwork
from harness.ports import free_port, wait_until
from harness.process import ManagedProcess

SECCOMP_SOURCE = Path("/usr/share/containers/seccomp.json")
SECCOMP_PROFILE = "containers-common.json"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static


# --- the busybox image (pod sandbox "pause" image, and a tiny image for test pods) ---

def _blob(data: bytes, directory: dict[str, bytes]) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    directory[f"blobs/sha256/{digest[7:]}"] = data
    return digest


def busybox_image_archive() -> Path:
    """An OCI archive holding only static busybox (+ applet links); its entrypoint sleeps forever.
    Written by hand (no container storage), byte-for-byte reproducible, cached per busybox build."""
    content = BUSYBOX.read_bytes()
    key = hashlib.sha256(content).hexdigest()[:12]
    target = cache_dir() / "images" / f"busybox-static-{key}.oci.tar"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            layer.addfile(info)
        for name, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700)):
            add_dir(name, mode)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(content), 0o755
        layer.addfile(info, io.BytesIO(content))
        for applet in sorted(set(applets) - {"busybox"}):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            layer.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        for name, data in (("etc/passwd", passwd), ("etc/group", b"root:x:0:\nnogroup:x:65534:\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            layer.addfile(info, io.BytesIO(data))
    raw = layer_buffer.getvalue()
    compressed = gzip.compress(raw, mtime=0)
    blobs: dict[str, bytes] = {}
    layer_digest = _blob(compressed, blobs)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = _blob(config_bytes, blobs)
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(compressed)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = _blob(manifest_bytes, blobs)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": len(manifest_bytes)}]}
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": json.dumps(index).encode(), **blobs}
    partial = target.with_suffix(f".{os.getpid()}.partial")
    with tarfile.open(partial, "w") as archive:
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    partial.rename(target)
    return target


# --- the node ---

@dataclass
class NodeConfig:
    bin_dir: Path
    kubeconfig: Path
    ca_cert: Path
    sandbox_image: str
    registries: tuple[str, ...]  # host:port of plain-HTTP registries containerd pulls from


class Node:
    """containerd, the kubelet and kube-proxy on the test network. `stop()` undoes what they did."""

    def __init__(self, workdir: Path, network: TestNetwork, config: NodeConfig):
        self.workdir = workdir
        self.network = network
        self.config = config
        self.name = f"envkiln-{network.ident}"
        self.containerd_dir = workdir / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.root_dir = workdir / "kubelet"
        self.cni_conf_dir = workdir / "cni" / "net.d"
        self.kubelet_port = free_port()
        self.proxy_ports = (free_port(), free_port())
        self.containerd: ManagedProcess | None = None
        self.kubelet: ManagedProcess | None = None
        self.proxy: ManagedProcess | None = None

    @property
    def seccomp_dir(self) -> Path:
        """Where Localhost seccomp profiles live; `containers-common.json` is Debian's buildah profile."""
        return self.root_dir / "seccomp"

    # containerd

    def trust_registry(self, host: str, ca: Path) -> None:
        """Let containerd pull from the TLS registry `host` with certificates from `ca` (its hosts
        directory is read at every pull: no restart)."""
        directory = self.containerd_dir / "certs.d" / host
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts.toml").write_text(
            f'server = "https://{host}"\n\n[host."https://{host}"]\n  capabilities = ["pull", "resolve"]\n'
            f'  ca = "{ca}"\n')

    def _write_containerd_config(self) -> Path:
        d = self.containerd_dir
        certs_d = d / "certs.d"
        for host in self.config.registries:
            (certs_d / host).mkdir(parents=True, exist_ok=True)
            (certs_d / host / "hosts.toml").write_text(
                f'server = "http://{host}"\n\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "0.4.0", "name": f"envkiln-{self.network.ident}",
            "plugins": [
                {"type": "bridge", "bridge": self.network.cni_bridge, "isGateway": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": self.network.pod_cidr}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.workdir / "cni" / "ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.cni_conf_dir / "10-envkiln.conflist").write_text(json.dumps(conflist, indent=1))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[{cri}]
  sandbox_image = "{self.config.sandbox_image}"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # the pods' network namespaces under the state directory, not /run/netns: two nodes on one host
  # each find and remove their own
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{self.cni_conf_dir}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{certs_d}"
"""
        path = d / "config.toml"
        path.write_text(text)
        return path

    def start_containerd(self) -> None:
        self.containerd_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_containerd_config()
        # Pulls from anywhere but the test registries go to a closed local port (no DNS, no traffic out).
        closed = f"http://127.0.0.1:{free_port()}"
        no_proxy = ",".join(["127.0.0.1", "localhost", self.network.node_ip,
                             *(h.split(":")[0] for h in self.config.registries)])
        env = {"HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed,
               "NO_PROXY": no_proxy, "no_proxy": no_proxy}
        self.containerd = ManagedProcess("containerd", ["containerd", "--config", str(config)],
                                         self.workdir / "containerd.log", env=env).start()

    def wait_containerd(self, timeout: float = 30) -> None:
        assert self.containerd is not None
        wait_until(lambda: self.ctr("version", check=False).returncode == 0, timeout, "containerd",
                   self.containerd.exited)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args], capture_output=True,
                              text=True, check=check, timeout=60)

    # kubelet

    def _write_kubelet_config(self) -> Path:
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self.seccomp_dir.mkdir(parents=True, exist_ok=True)
        if SECCOMP_SOURCE.exists():
            shutil.copyfile(SECCOMP_SOURCE, self.seccomp_dir / SECCOMP_PROFILE)
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("# pods of the envkiln test node have no DNS\noptions ndots:1\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.network.node_ip, "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 0,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.config.ca_cert)}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
            "failSwapOn": False, "localStorageCapacityIsolation": True,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                             "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "resolvConf": str(resolv),
            "serializeImagePulls": False,
            "nodeStatusReportFrequency": "10s", "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "5s", "fileCheckFrequency": "60s",
        }
        path = self.workdir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start_kubelet(self) -> None:
        config = self._write_kubelet_config()
        self.kubelet = ManagedProcess("kubelet", [
            str(self.config.bin_dir / "kubelet"),
            f"--config={config}", f"--kubeconfig={self.config.kubeconfig}",
            f"--root-dir={self.root_dir}", f"--cert-dir={self.workdir / 'kubelet-pki'}",
            f"--hostname-override={self.name}", f"--node-ip={self.network.node_ip}",
            "--v=1",
        ], self.workdir / "kubelet.log").start()

    # kube-proxy

    def start_proxy(self) -> None:
        healthz, metrics = self.proxy_ports
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.config.kubeconfig)},
            "hostnameOverride": self.name,
            "bindAddress": self.network.node_ip,
            "healthzBindAddress": f"127.0.0.1:{healthz}", "metricsBindAddress": f"127.0.0.1:{metrics}",
            "clusterCIDR": self.network.pod_cidr,
            "nodePortAddresses": [f"{self.network.node_ip}/32"],
            "detectLocalMode": "ClusterCIDR",
            # leave the host's conntrack settings alone
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                          "udpTimeout": "0s", "udpStreamTimeout": "0s"},
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        }
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proxy = ManagedProcess("kube-proxy", [str(self.config.bin_dir / "kube-proxy"), f"--config={path}",
                                                   "--v=1"], self.workdir / "kube-proxy.log").start()

    # restarts (fault tests): the pods keep running in their shims meanwhile

    def restart_containerd(self, downtime: float = 0.0) -> float:
        """Stop containerd (TERM, then KILL; its shims, in their own process groups, keep the
        containers running), wait `downtime` seconds, start it again on the same socket and state.
        Returns the seconds it was down."""
        assert self.containerd is not None
        began = time.monotonic()
        self.containerd.stop(timeout=10)
        time.sleep(downtime)
        self.start_containerd()
        self.wait_containerd()
        return time.monotonic() - began

    def restart_kubelet(self, downtime: float = 0.0) -> float:
        """Stop the kubelet (TERM, then KILL), wait `downtime` seconds, start it again with the same
        configuration and root directory. Returns the seconds it was down (until it was started)."""
        assert self.kubelet is not None
        began = time.monotonic()
        self.kubelet.stop(timeout=10)
        time.sleep(downtime)
        self.start_kubelet()
        return time.monotonic() - began

    def task_pid(self, container_id: str) -> int | None:
        """The host PID of a running container's task (`containerd://<id>` or the bare id)."""
        wanted = container_id.rpartition("://")[2]
        for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == wanted and fields[2] == "RUNNING":
                return int(fields[1])
        return None

    # stopping

    def remove_containers(self, timeout: float = 20) -> list[str]:
        """Kill what is left in containerd (after the kubelet stopped pods), then delete it."""
        errors: list[str] = []
        if self.containerd is None or self.containerd.exited():
            return errors
        tasks = [line.split()[0] for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:] if line]
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        deadline = time.monotonic() + timeout
        for task in tasks:
            while self.ctr("tasks", "delete", task, check=False).returncode != 0 and time.monotonic() < deadline:
                if task not in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                    break
                time.sleep(0.2)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            result = self.ctr("containers", "delete", container, check=False)
            if result.returncode:
                errors.append(f"ctr containers delete {container}: {result.stderr.strip()}")
        return errors

    def stop(self) -> list[str]:
        errors: list[str] = []
        for process in (self.kubelet, self.proxy):
            if process is not None:
                process.stop(timeout=10)
        errors += self.remove_containers()
        if self.containerd is not None:
            self.containerd.stop(timeout=10)
        errors += kill_processes_using(self.workdir)
        errors += unmount_under(self.workdir)  # the pods' network namespaces too (under containerd's state)
        return errors


def kill_processes_using(directory: Path) -> list[str]:
    """SIGKILL processes with `directory` in their argv (containerd shims outlive containerd)."""
    from harness.leftovers import processes

    needle = str(directory)
    for _ in range(50):
        found = processes(needle)
        if not found:
            return []
        for line in found:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line.split(":")[0]), 9)
        time.sleep(0.1)
    return [f"process still running: {line}" for line in processes(needle)]


def umount(point: str) -> list[str]:
    result = subprocess.run(["umount", point], capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return []
    result = subprocess.run(["umount", "-l", point], capture_output=True, text=True, check=False)
    return [] if result.returncode == 0 else [f"umount {point}: {result.stderr.strip()}"]


def unmount_under(directory: Path) -> list[str]:
    """Unmount everything mounted under `directory` (deepest first; stacked mounts too)."""
    errors: list[str] = []
    for _ in range(10):
        points = mounts(str(directory)) - mounts(None)
        points = {p for p in points if p == str(directory) or p.startswith(str(directory) + "/")}
        if not points:
            return []
        errors = []
        for point in sorted(points, key=lambda p: (-p.count("/"), p)):
            errors += umount(point)
    return errors


@contextlib.contextmanager
def node_lock(timeout: float = 900):  # type: ignore[no-untyped-def]
    """One node cluster per machine at a time: kube-proxy and the kubelet own host-wide iptables chains."""
    path = cache_dir() / "node.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test cluster holds {path}") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
