"""The Kubernetes permissions the operator's code uses, declared next to the code.

The chart must grant exactly these (tests/integration/bare/test_chart.py): watching all namespaces in
one ClusterRole; watching given namespaces (watchNamespaces) those on namespaced resources in a
Role per watched namespace and those on cluster-scoped ones in a ClusterRole, less
ALL_NAMESPACES_ONLY; and OWN_NAMESPACE_PERMISSIONS in a Role in the release namespace. The
operator is tested running under that ServiceAccount in both modes, so a missing rule fails a
test and an extra rule fails the comparison.
"""

from __future__ import annotations

# (apiGroup, resource, verb[, resourceName])
OPERATOR_PERMISSIONS: set[tuple[str, ...]] = {
    # Kopf watches both kinds and patches its annotations onto them; the operator reads them.
    *{("envkiln.dev", r, v) for r in ("environments", "environmentbuilds") for v in ("get", "list", "watch", "patch")},
    ("envkiln.dev", "environmentbuilds", "create"),  # kube.Kube.create_or_get
    ("envkiln.dev", "environmentbuilds", "delete"),  # envsync.collect_builds: old finished builds no Environment keeps
    ("envkiln.dev", "environments", "create"),  # anonymous Environments for gated pods (inline definitions)
    *{("envkiln.dev", f"{r}/status", v) for r in ("environments", "environmentbuilds") for v in ("get", "patch")},
    *{("batch", "jobs", v) for v in ("get", "list", "watch", "create")},  # Kaniko builder + job events
    ("batch", "jobs", "delete"),  # a build Job whose pod cannot be created (quota, admission) gives its slot back
    ("", "configmaps", "get"),  # user ConfigMap contexts
    ("", "configmaps", "create"),  # rendered contexts
    ("", "pods", "get"),  # a gated pod read again when its anonymous Environment is retried
    ("", "pods", "list"),  # termination messages of build pods; pods waiting for an environment
    ("", "pods", "watch"),  # gated pods with inline specs: the operator makes their anonymous Environments
    ("", "pods", "patch"),  # set the image and remove the scheduling gate
    ("", "pods/status", "patch"),  # tell a waiting pod why its environment failed
    # keep the webhook's caBundle current (RELEASE: the chart's fullname)
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get", "RELEASE"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", "RELEASE"),
    # The push credential copied for one build Job (<job>-push, owned by it), deleted when the attempt ends.
    ("", "secrets", "create"), ("", "secrets", "delete"),
    # The names of a build namespace's pull service account's imagePullSecrets (never the Secrets).
    ("", "serviceaccounts", "get"),
    ("", "events", "create"),
    ("", "events", "list"),  # kube.Kube.job_pod_refusals: why the Job controller cannot create a build pod
    ("", "namespaces", "list"), ("", "namespaces", "watch"),  # Kopf's namespace observer
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),  # Kopf's resource observer
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    *{("kopf.dev", r, v) for r in ("clusterkopfpeerings", "kopfpeerings") for v in ("get", "list", "watch", "patch")},
}


# In the operator's own namespace (ENVKILN_OPERATOR_NAMESPACE, the chart's release namespace), on
# its own Secrets: the key that signs build records (context.load_signing_key: created by the first
# replica), the webhook's CA and serving certificate (webhookcert: created once, replaced when
# rotated). Besides these, `get` on the registry credential (ENVKILN_REGISTRY_SECRET) and on each
# namespace's push identity (ENVKILN_PUSH_SECRET_TEMPLATE, envkiln-push-<namespace>): by name when
# the chart knows the namespaces, on any Secret there when it watches all namespaces.
WEBHOOK_SECRETS = ("envkiln-webhook-tls", "envkiln-webhook-tls-ca")
OWN_NAMESPACE_PERMISSIONS: set[tuple[str, ...]] = {
    ("", "secrets", "create"),
    *{("", "secrets", "get", name) for name in ("envkiln-signing-key", *WEBHOOK_SECRETS)},
    *{("", "secrets", "update", name) for name in WEBHOOK_SECRETS},
}
PUSH_IDENTITY = "envkiln-push-{namespace}"

# Used only when watching all namespaces: Kopf's peering object is then the cluster-scoped
# ClusterKopfPeering (watching given namespaces, a KopfPeering in each of them).
ALL_NAMESPACES_ONLY: set[tuple[str, ...]] = {
    ("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")
}


def permissions_of(rules: list[dict]) -> set[tuple[str, ...]]:
    """Flatten (Cluster)Role rules into (group, resource, verb[, name]) tuples."""
    result: set[tuple[str, ...]] = set()
    for rule in rules:
        names = rule.get("resourceNames") or [None]
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    for name in names:
                        result.add((group, resource, verb) if name is None else (group, resource, verb, name))
    return result
