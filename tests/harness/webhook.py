"""A MutatingWebhookConfiguration like the chart's, calling an operator process on 127.0.0.1."""

from __future__ import annotations

from typing import Any


def webhook_configuration(name: str, port: int, namespace: str | None = None) -> dict[str, Any]:
    """Pods labelled envkiln.dev/environment (in `namespace`, or anywhere) go to https://127.0.0.1:port."""
    webhook: dict[str, Any] = {
        "name": "environments.pods.envkiln.dev", "admissionReviewVersions": ["v1"],
        "sideEffects": "NoneOnDryRun", "failurePolicy": "Fail", "timeoutSeconds": 10,
        "clientConfig": {"url": f"https://127.0.0.1:{port}/envkiln-environment"},
        "objectSelector": {"matchExpressions": [{"key": "envkiln.dev/environment", "operator": "Exists"}]},
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                   "scope": "Namespaced"}],
    }
    if namespace is not None:
        webhook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name}, "webhooks": [webhook]}
