"""A MutatingWebhookConfiguration like the chart's, calling an operator process on 127.0.0.1; and the
files that make kube-apiserver present a client certificate to that webhook (mutual TLS)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml


def webhook_configuration(name: str, port: int, namespace: str | None = None) -> dict[str, Any]:
    """Pods labelled envkiln.dev/environment (in `namespace`, or anywhere) go to https://127.0.0.1:port."""
    webhook: dict[str, Any] = {
        "name": "environments.pods.envkiln.dev", "admissionReviewVersions": ["v1"],
        "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 10,
        "clientConfig": {"url": f"https://127.0.0.1:{port}/envkiln-environment"},
        "objectSelector": {"matchExpressions": [{"key": "envkiln.dev/environment", "operator": "Exists"}]},
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                   "scope": "Namespaced"}],
    }
    if namespace is not None:
        webhook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name}, "webhooks": [webhook]}


def admission_control_config(directory: Path, webhook: str, client_cert: Path, client_key: Path) -> Path:
    """The file for kube-apiserver's `--admission-control-config-file`: the API server presents
    `client_cert` when it calls mutating webhooks at `webhook`.

    `webhook` names the webhook as the API server looks it up in the kubeconfig's users: `host:port`
    of a URL webhook (e.g. `127.0.0.1:9443`), `<service>.<namespace>.svc` (port 443) or
    `<service>.<namespace>.svc:<port>` for a Service webhook, `*.svc` for every Service webhook.
    """
    directory.mkdir(parents=True, exist_ok=True)
    kubeconfig = directory / "webhook-client.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "users": [{"name": webhook, "user": {
            "client-certificate-data": base64.b64encode(client_cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(client_key.read_bytes()).decode()}}],
    }))
    kubeconfig.chmod(0o600)
    config = directory / "admission-control.yaml"
    config.write_text(yaml.safe_dump({
        "apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
        "plugins": [{"name": "MutatingAdmissionWebhook", "configuration": {
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "WebhookAdmissionConfiguration",
            "kubeConfigFile": str(kubeconfig)}}],
    }))
    return config
