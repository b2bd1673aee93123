"""The webhook's TLS certificate, managed in the cluster: a CA and a serving certificate kept in
a Secret (created once, shared by all replicas), and the CA patched into the
MutatingWebhookConfiguration's caBundle."""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from envkiln.kube import Kube
from envkiln.names import MANAGED_BY

VALIDITY_DAYS = 3650


@dataclass(frozen=True)
class WebhookCertificate:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def generate(hosts: list[str]) -> WebhookCertificate:
    """A fresh CA and a serving certificate for `hosts` (DNS names or IP addresses)."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALIDITY_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("envkiln-webhook-ca")).issuer_name(_name("envkiln-webhook-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return WebhookCertificate(
        ca.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()))


def ensure_certificate(kube: Kube, namespace: str, secret_name: str, hosts: list[str]) -> WebhookCertificate:
    """Create-or-get: the first replica's certificate wins; the others use it."""
    candidate = generate(hosts)
    body = {"metadata": {"name": secret_name, "namespace": namespace, "labels": dict(MANAGED_BY)},
            "type": "kubernetes.io/tls",
            "data": {"ca.crt": base64.b64encode(candidate.ca_pem).decode(),
                     "tls.crt": base64.b64encode(candidate.cert_pem).decode(),
                     "tls.key": base64.b64encode(candidate.key_pem).decode()}}
    secret, created = kube.create_or_get_secret(namespace, body)
    if created:
        return candidate
    data = secret.data or {}
    return WebhookCertificate(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))


def patch_ca_bundle(kube: Kube, configuration: str, ca_pem: bytes) -> None:
    current = kube.read_mutating_webhook_configuration(configuration)
    bundle = base64.b64encode(ca_pem).decode()
    webhooks = []
    for webhook in current.webhooks or []:
        item = kube.to_dict(webhook)
        item["clientConfig"]["caBundle"] = bundle
        webhooks.append(item)
    kube.patch_mutating_webhook_configuration(configuration, {"webhooks": webhooks})
