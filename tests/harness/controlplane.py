"""etcd + kube-apiserver on 127.0.0.1, the way controller-runtime's envtest runs them."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from harness.certs import ControlPlaneCerts, make_control_plane_certs
from harness.ports import free_port, http_ok, wait_until
from harness.process import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "controlplane" / "build.sh"


def cache_dir() -> Path:
    return Path(os.environ.get("ENVKILN_CACHE", Path.home() / ".cache" / "envkiln"))


def ensure_binaries(names: tuple[str, ...] = ("etcd", "apiserver")) -> Path:
    """Build (once, then cached) the pinned binaries; returns the bin directory."""
    subprocess.run(["bash", str(BUILD_SCRIPT), *names], check=True, stdout=subprocess.DEVNULL)
    return cache_dir() / "bin"


def kubectl() -> Path:
    """The pinned kubectl (tests/controlplane/kubectl: the API server's Kubernetes version), built
    once then cached like the other binaries; not whichever kubectl is on PATH."""
    path = ensure_binaries(("kubectl",)) / "kubectl"
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path}: not built by {BUILD_SCRIPT} kubectl (run scripts/bootstrap.sh)")
    return path


class ControlPlane:
    """A real API server backed by a real etcd. Use as a context manager."""

    def __init__(self, workdir: Path | None = None, bin_dir: Path | None = None, address: str = "127.0.0.1",
                 service_cidr: str = "10.0.0.0/24", node_mode: bool = False,
                 extra_apiserver_args: Sequence[str] = ()):
        """`address`: where the API server binds and what it advertises (in its serving cert too).
        `node_mode`: a controller-manager and kubelet run with it (ServiceAccount admission on, the
        `kubernetes` Service gets endpoints, logs/exec reach the kubelet by InternalIP, webhooks
        are called at endpoint IPs).
        `extra_apiserver_args`: more kube-apiserver flags, after the harness's own (e.g.
        `--admission-control-config-file=...`); they apply on every (re)start."""
        self.address = address
        self.service_cidr = service_cidr
        self.node_mode = node_mode
        self.extra_apiserver_args = list(extra_apiserver_args)
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="envkiln-cp-", dir=_fast_tmp()))
        self.bin_dir = bin_dir
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = free_port()
        self.certs: ControlPlaneCerts | None = None
        self.etcd: ManagedProcess | None = None
        self.apiserver: ManagedProcess | None = None
        self.kubeconfig = self.workdir / "kubeconfig"

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    def start(self) -> ControlPlane:
        self.bin_dir = self.bin_dir or ensure_binaries()
        extra_ips = () if self.address == "127.0.0.1" else (self.address,)
        service_ip = _first_service_ip(self.service_cidr)
        self.certs = make_control_plane_certs(self.workdir / "certs", extra_ips=(*extra_ips, service_ip))
        self._start_etcd()
        self.start_apiserver()
        self._write_kubeconfig()
        return self

    def _start_etcd(self) -> None:
        assert self.bin_dir is not None
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.etcd = ManagedProcess("etcd", [
            str(self.bin_dir / "etcd"),
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync", "--log-level=warn",
        ], self.workdir / "etcd.log").start()
        wait_until(lambda: http_ok(f"{client}/health"), 60, "etcd", self.etcd.exited)

    def start_apiserver(self) -> None:
        assert self.bin_dir is not None and self.certs is not None
        certs = self.certs
        self.apiserver = ManagedProcess("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={certs.serving_cert}", f"--tls-private-key-file={certs.serving_key}",
            f"--client-ca-file={certs.ca_cert}",
            f"--secure-port={self.apiserver_port}",
            f"--bind-address={self.address}", f"--advertise-address={self.address}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--allow-privileged=true",
            *self._mode_flags(),
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={certs.service_account_pub}",
            f"--service-account-signing-key-file={certs.service_account_key}",
            "--v=1",
            *self.extra_apiserver_args,
        ], self.workdir / "kube-apiserver.log").start()
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))
        wait_until(lambda: http_ok(f"{self.url}/readyz", context), 120, "kube-apiserver", self.apiserver.exited,
                   interval=0.5)

    def _mode_flags(self) -> list[str]:
        assert self.certs is not None
        if not self.node_mode:
            # No controller-manager runs, so no token controller: the ServiceAccount
            # admission plugin would refuse pods waiting for tokens that never come.
            return ["--disable-admission-plugins=ServiceAccount", "--endpoint-reconciler-type=none"]
        return [
            "--endpoint-reconciler-type=lease",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={self.certs.admin_cert}",
            f"--kubelet-client-key={self.certs.admin_key}",
            "--enable-aggregator-routing=true",
        ]

    def stop_apiserver(self) -> None:
        if self.apiserver is not None:
            self.apiserver.stop()

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def _write_kubeconfig(self) -> None:
        assert self.certs is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "envkiln-test", "cluster": {
                "server": self.url, "certificate-authority": str(self.certs.ca_cert)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(self.certs.admin_cert), "client-key": str(self.certs.admin_key)}}],
            "contexts": [{"name": "envkiln-test", "context": {"cluster": "envkiln-test", "user": "admin"}}],
            "current-context": "envkiln-test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def stop(self) -> None:
        for process in (self.apiserver, self.etcd):
            if process is not None:
                process.stop()
        if self._own_workdir and not os.environ.get("ENVKILN_KEEP_TESTDIRS"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _first_service_ip(cidr: str) -> str:
    import ipaddress

    return str(next(ipaddress.ip_network(cidr).hosts()))


def _fast_tmp() -> str | None:
    # etcd is much faster on tmpfs; fall back to the default temp dir.
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def install_crds(api_client: object, paths: list[Path] | None = None) -> list[str]:
    """Create (or update) CRDs from YAML files (default: the repository's crds/) and wait until established."""
    from kubernetes import client

    extensions = client.ApiextensionsV1Api(api_client)  # type: ignore[arg-type]
    names = []
    for path in paths or sorted((REPO_ROOT / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            names.append(crd["metadata"]["name"])
            try:
                extensions.create_custom_resource_definition(crd)
            except client.ApiException as error:
                if error.status != 409:
                    raise
                existing = extensions.read_custom_resource_definition(crd["metadata"]["name"])
                crd["metadata"]["resourceVersion"] = existing.metadata.resource_version
                extensions.replace_custom_resource_definition(crd["metadata"]["name"], crd)
    wait_for_crds(api_client, names)
    return names


def wait_for_crds(api_client: object, names: list[str], timeout: float = 60) -> None:
    from kubernetes import client

    extensions = client.ApiextensionsV1Api(api_client)  # type: ignore[arg-type]

    def established() -> bool:
        for name in names:
            crd = extensions.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") != "True":
                return False
        return True

    wait_until(established, timeout, "CRDs established")
    time.sleep(0.2)
