"""Certificates for a test control plane, made with the openssl command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class ControlPlaneCerts:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "sa.pub"


def sign(directory: Path, name: str, subject: str, ca_cert: Path, ca_key: Path, san: str | None = None,
         usage: str = "clientAuth") -> tuple[Path, Path]:
    """An RSA key and a certificate for `subject`, signed by the CA."""
    key, csr, cert = f"{name}.key", f"{name}.csr", f"{name}.crt"
    _openssl("genrsa", "-out", key, "2048", cwd=directory)
    _openssl("req", "-new", "-key", key, "-subj", subject, "-out", csr, cwd=directory)
    extensions = directory / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment", f"extendedKeyUsage={usage}"]
    if san:
        lines.append(f"subjectAltName={san}")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", csr, "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "30", "-sha256", "-extfile", extensions.name, "-out", cert, cwd=directory)
    return directory / cert, directory / key


def make_ca(directory: Path, name: str = "ca", subject: str = "/CN=envkiln-test-ca") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", "30", "-subj", subject, "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=directory)
    return directory / f"{name}.crt", directory / f"{name}.key"


def make_control_plane_certs(directory: Path, extra_ips: tuple[str, ...] = ()) -> ControlPlaneCerts:
    """CA, API server serving cert (127.0.0.1 plus `extra_ips` in its SANs), admin client cert, SA keys."""
    certs = ControlPlaneCerts(directory)
    make_ca(directory)
    san = ",".join([*(f"IP:{ip}" for ip in ("127.0.0.1", *extra_ips)), "DNS:localhost", "DNS:kubernetes",
                    "DNS:kubernetes.default", "DNS:kubernetes.default.svc"])
    sign(directory, "apiserver", "/CN=kube-apiserver", certs.ca_cert, certs.ca_key, san=san, usage="serverAuth")
    sign(directory, "admin", "/O=system:masters/CN=envkiln-admin", certs.ca_cert, certs.ca_key)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    return certs
