"""A real OCI registry (CNCF distribution, Debian's docker-registry) on 127.0.0.1 (or a given
local address, e.g. the test cluster's bridge address), plain HTTP."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from pathlib import Path

import yaml

from harness.ports import free_port, http_ok, wait_until
from harness.process import ManagedProcess

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


class Registry:
    """Start with `with Registry() as registry:`; `stop()`/`start()` simulate an outage."""

    def __init__(self, workdir: Path | None = None, port: int | None = None, binary: str = "docker-registry",
                 address: str = "127.0.0.1"):
        self._own_workdir = workdir is None
        self.address = address
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="envkiln-registry-"))
        self.port = port or free_port()
        self.binary = binary
        self.process: ManagedProcess | None = None

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config(self) -> Path:
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        path = self.workdir / "config.yml"
        self.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self) -> Registry:
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} not found; install Debian's docker-registry package")
        self.process = ManagedProcess("registry", [self.binary, "serve", str(self._config())],
                                      self.workdir / "registry.log").start()
        wait_until(lambda: http_ok(f"{self.url}/v2/"), 30, "registry", self.process.exited)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def requests_logged(self, method: str = "HEAD", path_part: str = "/manifests/") -> int:
        """How many requests of that kind the access log shows (for benchmarks)."""
        if self.process is None:
            return 0
        try:
            text = self.process.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if f'"{method} ' in line and path_part in line)

    def manifest(self, repository: str, reference: str) -> tuple[dict, str]:
        """GET a manifest; returns (manifest, digest from Docker-Content-Digest)."""
        request = urllib.request.Request(f"{self.url}/v2/{repository}/manifests/{reference}",
                                         headers={"Accept": MANIFEST_ACCEPT})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read()), response.headers.get("Docker-Content-Digest", "")

    def tags(self, repository: str) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/v2/{repository}/tags/list", timeout=10) as response:
            return list(json.loads(response.read()).get("tags") or [])

    def __enter__(self) -> Registry:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
