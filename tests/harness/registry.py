"""A real OCI registry (CNCF distribution, Debian's docker-registry) on 127.0.0.1 (or a given
local address, e.g. the test cluster's bridge address): plain HTTP and anonymous, or behind TLS
(a certificate from a CA the harness makes) with htpasswd authentication (`tls`, `users`)."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
import warnings
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
                 address: str = "127.0.0.1", tls: tuple[Path, Path, Path] | None = None,
                 users: dict[str, str] | None = None):
        """`tls`: (CA certificate, server certificate, key); `users`: name -> password (htpasswd, bcrypt)."""
        self.tls = tls
        self.users = users or {}
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
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _config(self) -> Path:
        http: dict[str, object] = {"addr": self.host, "headers": {"X-Content-Type-Options": ["nosniff"]}}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}, "delete": {"enabled": True}},
            "http": http,
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            http["tls"] = {"certificate": str(self.tls[1]), "key": str(self.tls[2])}
        if self.users:
            with warnings.catch_warnings():  # crypt is deprecated (gone in 3.13); bcrypt here is libcrypt's
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
                                        for user, password in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "envkiln-test", "path": str(htpasswd)}}
        path = self.workdir / "config.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=self.ssl_context()):
                return True
        except urllib.error.HTTPError as error:
            return error.code == 401 and bool(self.users)
        except OSError:
            return False

    def start(self) -> Registry:
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} not found; install Debian's docker-registry package")
        self.process = ManagedProcess("registry", [self.binary, "serve", str(self._config())],
                                      self.workdir / "registry.log").start()
        if self.tls or self.users:
            wait_until(self._answers, 30, "registry", self.process.exited)
        else:
            wait_until(lambda: http_ok(f"{self.url}/v2/"), 30, "registry", self.process.exited)
        return self

    def authorization(self) -> dict[str, str]:
        """A Basic header of the first user (for the harness's own reads)."""
        if not self.users:
            return {}
        user, password = next(iter(self.users.items()))
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

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
                                         headers={"Accept": MANIFEST_ACCEPT, **self.authorization()})
        with urllib.request.urlopen(request, timeout=10, context=self.ssl_context()) as response:
            return json.loads(response.read()), response.headers.get("Docker-Content-Digest", "")

    def tags(self, repository: str) -> list[str]:
        request = urllib.request.Request(f"{self.url}/v2/{repository}/tags/list", headers=self.authorization())
        with urllib.request.urlopen(request, timeout=10, context=self.ssl_context()) as response:
            return list(json.loads(response.read()).get("tags") or [])

    def __enter__(self) -> Registry:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
