"""The webhook's TLS, managed in the cluster.

- A CA, certificate and key, kept in the Secret `<webhook_cert_secret>-ca` (valid 10 years).
- A serving certificate issued from it, kept in the Secret `<webhook_cert_secret>` (kubernetes.io/tls,
  valid 90 days).
- Each is re-issued when less than a third of its lifetime is left (envkiln.core.decisions.admission
  decides); a replaced CA stays in the CA bundle until it expires, so certificates it signed keep
  working while replicas catch up.
- The CA bundle is patched into the MutatingWebhookConfiguration's caBundle before a certificate
  from a new CA is served.

All replicas share the Secrets: the first writer wins (create-or-get, then replacements guarded by
resourceVersion) and the others use what it wrote. WebhookTLS keeps the serving certificate in a
file the webhook server re-reads when it changes, and re-checks the Secrets periodically.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from envkiln.adapters.kube import Kube
from envkiln.core.decisions.admission import StoredCertificates, Validity, certificate_action
from envkiln.core.names import MANAGED_BY
from envkiln.core.settings import OperatorSettings

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVING_DAYS = 90
# Certificates start a little in the past: replicas' and API servers' clocks differ a little.
BACKDATE = datetime.timedelta(hours=1)
CHECK_SECONDS = 6 * 3600.0  # how often a running operator re-checks its certificates
RETRY_SECONDS = 300.0  # after a failed check
_ATTEMPTS = 6  # writes that lose to another replica's, before giving up
Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class WebhookCertificate:
    ca_pem: bytes  # the CA bundle clients trust: the current CA, and the previous one until it expires
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class _Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    previous: x509.Certificate | None  # the CA this one replaced, trusted until it expires

    def bundle(self, now: datetime.datetime) -> bytes:
        certs = [self.cert] + ([self.previous] if self.previous and self.previous.not_valid_after_utc > now else [])
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def ca_secret_name(secret_name: str) -> str:
    return f"{secret_name}-ca"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _validity(cert: x509.Certificate) -> Validity:
    return Validity(cert.not_valid_before_utc, cert.not_valid_after_utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_authority(now: datetime.datetime, previous: x509.Certificate | None = None) -> _Authority:
    """A fresh CA, valid CA_DAYS; `previous` (the CA it replaces) stays trusted until it expires."""
    key = ec.generate_private_key(ec.SECP256R1())
    # A distinct subject per CA: a bundle holding the old and the new one stays unambiguous.
    subject = _name(f"envkiln-webhook-ca-{now:%Y%m%d%H%M%S}")
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _Authority(cert, key, previous)


def issue(authority: _Authority, hosts: list[str], now: datetime.datetime) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): a serving certificate for `hosts` (DNS names or IP addresses),
    valid SERVING_DAYS (never beyond the CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    end = min(now + datetime.timedelta(days=SERVING_DAYS), authority.cert.not_valid_after_utc)
    ca_key_id = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(authority.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
            .sign(authority.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def generate(hosts: list[str]) -> WebhookCertificate:
    """A fresh CA and a serving certificate for `hosts` (e.g. for a webhook outside a cluster)."""
    now = _utcnow()
    authority = new_authority(now)
    cert_pem, key_pem = issue(authority, hosts, now)
    return WebhookCertificate(authority.bundle(now), cert_pem, key_pem)


# --- the Secrets ------------------------------------------------------------------------------------

def _data(secret: Any, key: str) -> bytes | None:
    value = ((secret.data or {}) if secret is not None else {}).get(key)
    try:
        return base64.b64decode(value, validate=True) if value else None
    except ValueError:
        return None


def _read_authority(secret: Any) -> _Authority | None:
    """The CA kept in `secret`; None when missing or unusable (it is then replaced)."""
    cert_pem, key_pem, previous_pem = (_data(secret, k) for k in ("ca.crt", "ca.key", "previous-ca.crt"))
    if cert_pem is None or key_pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        previous = x509.load_pem_x509_certificate(previous_pem) if previous_pem else None
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return _Authority(cert, key, previous)


def _read_serving(secret: Any) -> tuple[x509.Certificate, bytes, bytes] | None:
    """(certificate, its PEM, key PEM) from the serving Secret; None when missing or unusable."""
    cert_pem, key_pem = _data(secret, "tls.crt"), _data(secret, "tls.key")
    if cert_pem is None or key_pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return None
    if key.public_key() != cert.public_key():
        return None
    return cert, cert_pem, key_pem


def _names(cert: x509.Certificate) -> frozenset[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset([*san.get_values_for_type(x509.DNSName),
                      *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))])


def _normalized(hosts: list[str]) -> frozenset[str]:
    def one(host: str) -> str:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            return host
    return frozenset(one(h) for h in hosts)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def stored_certificates(authority: _Authority | None,
                        serving: x509.Certificate | None) -> StoredCertificates:
    return StoredCertificates(
        ca=_validity(authority.cert) if authority else None,
        serving=_validity(serving) if serving else None,
        serving_from_ca=bool(authority and serving and _issued_by(serving, authority.cert)),
        serving_names=_names(serving) if serving else frozenset(),
    )


def _secret_body(namespace: str, name: str, type_: str, data: dict[str, bytes]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)}, "type": type_,
            "data": {key: base64.b64encode(value).decode() for key, value in data.items()}}


def _write(kube: Kube, namespace: str, current: Any, body: dict[str, Any]) -> bool:
    """Create or replace (guarded by resourceVersion); False when another writer came first."""
    if current is None:
        _, created = kube.create_or_get_secret(namespace, body)
        return bool(created)
    _, replaced = kube.replace_secret_if_unchanged(namespace, body, current.metadata.resource_version)
    return replaced


def ensure_certificate(kube: Kube, namespace: str, secret_name: str, hosts: list[str],
                       clock: Clock = _utcnow) -> WebhookCertificate:
    """The webhook's certificate from the Secrets, after re-issuing what is due (see the module doc).

    Every replica may call this at any time: a write that loses to another replica's is dropped
    and the winner's certificates are read and used.
    """
    wanted = _normalized(hosts)
    ca_name = ca_secret_name(secret_name)
    for _ in range(_ATTEMPTS):
        now = clock()
        ca_secret = kube.read_secret(namespace, ca_name)
        authority = _read_authority(ca_secret)
        tls_secret = kube.read_secret(namespace, secret_name)
        serving = _read_serving(tls_secret)
        action = certificate_action(stored_certificates(authority, serving[0] if serving else None), wanted, now)
        if action == "keep":
            assert authority is not None and serving is not None
            return WebhookCertificate(authority.bundle(now), serving[1], serving[2])
        if action == "rotate-ca":
            previous = authority.cert if authority and authority.cert.not_valid_after_utc > now else None
            fresh = new_authority(now, previous)
            data = {"ca.crt": fresh.cert.public_bytes(serialization.Encoding.PEM), "ca.key": _key_pem(fresh.key)}
            if previous is not None:
                data["previous-ca.crt"] = previous.public_bytes(serialization.Encoding.PEM)
            written = _write(kube, namespace, ca_secret, _secret_body(namespace, ca_name, "Opaque", data))
            log.info("webhook CA %s in Secret %s/%s", "replaced" if written else "replaced by another replica",
                     namespace, ca_name)
            continue  # read again: the serving certificate is now due
        assert authority is not None
        cert_pem, key_pem = issue(authority, hosts, now)
        body = _secret_body(namespace, secret_name, "kubernetes.io/tls",
                            {"ca.crt": authority.bundle(now), "tls.crt": cert_pem, "tls.key": key_pem})
        written = _write(kube, namespace, tls_secret, body)
        log.info("webhook serving certificate %s in Secret %s/%s",
                 "issued" if written else "issued by another replica", namespace, secret_name)
    raise RuntimeError(f"webhook certificates in {namespace}/{secret_name}: too many conflicting writes")


def patch_ca_bundle(kube: Kube, configuration: str, ca_pem: bytes) -> bool:
    """Set every webhook's caBundle in the MutatingWebhookConfiguration; False when already so."""
    current = kube.read_mutating_webhook_configuration(configuration)
    bundle = base64.b64encode(ca_pem).decode()
    webhooks = [kube.to_dict(webhook) for webhook in current.webhooks or []]
    if all((item.get("clientConfig") or {}).get("caBundle") == bundle for item in webhooks):
        return False
    for item in webhooks:
        item["clientConfig"]["caBundle"] = bundle
    kube.patch_mutating_webhook_configuration(configuration, {"webhooks": webhooks})
    return True


# --- serving -------------------------------------------------------------------------------------

class WebhookTLS:
    """The serving certificate as a file for the webhook server, kept current.

    `refresh()` runs ensure_certificate, patches the caBundle (before a certificate from a new CA
    is served), then replaces `pem_file` (certificate and key in one file, so a reader never sees
    a certificate with the other one's key) when it changed. The webhook server (Kopf's) re-reads
    the file when its content changes. `start()` refreshes once, then every `interval` seconds in
    a daemon thread.
    """

    def __init__(self, kube: Kube, settings: OperatorSettings, directory: Path | None = None,
                 clock: Clock = _utcnow):
        self.kube, self.settings, self.clock = kube, settings, clock
        self.directory = directory or Path(tempfile.mkdtemp(prefix="envkiln-webhook-"))
        self.pem_file = self.directory / "tls.pem"
        self.certificate: WebhookCertificate | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ca_bundle(self) -> bytes:
        assert self.certificate is not None, "refresh() first"
        return self.certificate.ca_pem

    def refresh(self) -> bool:
        """Bring the Secrets, the caBundle and the file up to date; True when the file changed."""
        options = self.settings
        certificate = ensure_certificate(self.kube, options.operator_namespace, options.webhook_cert_secret,
                                         options.effective_webhook_hosts(), self.clock)
        if options.webhook_configuration and patch_ca_bundle(self.kube, options.webhook_configuration,
                                                             certificate.ca_pem):
            log.info("caBundle of %s updated", options.webhook_configuration)
        self.certificate = certificate
        content = certificate.key_pem + certificate.cert_pem
        if self.pem_file.exists() and self.pem_file.read_bytes() == content:
            return False
        temporary = self.pem_file.with_suffix(".tmp")
        temporary.touch(mode=0o600)
        temporary.chmod(0o600)
        temporary.write_bytes(content)
        os.replace(temporary, self.pem_file)
        return True

    def start(self, interval: float = CHECK_SECONDS) -> WebhookTLS:
        self.refresh()  # at start-up a failure is the operator's failure
        self._thread = threading.Thread(target=self._run, args=(interval,), name="envkiln-webhook-tls", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, interval: float) -> None:
        wait = interval
        while not self._stop.wait(wait):
            try:
                if self.refresh():
                    log.info("webhook serving certificate renewed; the server reloads it")
                wait = interval
            except Exception as error:  # the loop must outlive any one failure (API, network, disk)
                log.warning("could not check the webhook certificates (retrying in %.0fs): %s", RETRY_SECONDS,
                            error)
                wait = min(interval, RETRY_SECONDS)
