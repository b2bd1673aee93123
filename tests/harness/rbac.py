"""The Kubernetes permissions the operator's code uses, declared next to the code.

The chart's ClusterRole must grant exactly these (tests/integration/test_chart.py), and the
operator is tested running under that ServiceAccount, so a missing rule fails a test and an
extra rule fails the comparison.
"""

from __future__ import annotations

# (apiGroup, resource, verb[, resourceName])
OPERATOR_PERMISSIONS: set[tuple[str, ...]] = {
    # Kopf watches both kinds and patches its annotations onto them; the operator reads them.
    *{("envkiln.dev", r, v) for r in ("environments", "environmentbuilds") for v in ("get", "list", "watch", "patch")},
    ("envkiln.dev", "environmentbuilds", "create"),  # kube.Kube.create_or_get
    ("envkiln.dev", "environments", "create"),  # the webhook's anonymous Environments (inline definitions)
    *{("envkiln.dev", f"{r}/status", v) for r in ("environments", "environmentbuilds") for v in ("get", "patch")},
    *{("batch", "jobs", v) for v in ("get", "list", "watch", "create")},  # Kaniko builder + job events
    ("", "configmaps", "get"),  # user ConfigMap contexts
    ("", "configmaps", "create"),  # rendered contexts
    ("", "pods", "list"),  # termination messages of build pods; pods waiting for an environment
    ("", "pods", "patch"),  # set the image and remove the scheduling gate
    ("", "pods/status", "patch"),  # tell a waiting pod why its environment failed
    # keep the webhook's caBundle current (RELEASE: the chart's fullname)
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get", "RELEASE"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", "RELEASE"),
    ("", "secrets", "create"),  # registry credentials copied for Kaniko
    ("", "secrets", "patch", "envkiln-registry-credentials"),
    ("", "events", "create"),
    ("", "namespaces", "list"), ("", "namespaces", "watch"),  # Kopf's namespace observer
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),  # Kopf's resource observer
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    *{("kopf.dev", r, v) for r in ("clusterkopfpeerings", "kopfpeerings") for v in ("get", "list", "watch", "patch")},
}


def permissions_of(rules: list[dict]) -> set[tuple[str, ...]]:
    """Flatten ClusterRole rules into (group, resource, verb[, name]) tuples."""
    result: set[tuple[str, ...]] = set()
    for rule in rules:
        names = rule.get("resourceNames") or [None]
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    for name in names:
                        result.add((group, resource, verb) if name is None else (group, resource, verb, name))
    return result
