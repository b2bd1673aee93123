"""The Helm chart rendered by helm itself (`helm template`, no cluster): the standard values, the
availability defaults (two replicas, a PodDisruptionBudget, a rolling update that keeps the webhook
answering), the CRD mode, the checksums and `helm test`. Skipped where no helm binary is cached
(`make controlplane` builds it); the node suite installs the chart for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "envkiln"
HELM = Path(os.environ.get("ENVKILN_CACHE", Path.home() / ".cache" / "envkiln")) / "bin" / "helm"
BASE = ("--kube-version", "1.34.0", "--set", "operator.registry=r:5000")
pytestmark = pytest.mark.skipif(not HELM.exists(), reason=f"no helm at {HELM} (make controlplane)")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def render(*values: str, upgrade: bool = False, release: str = "envkiln") -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "-n", "envkiln-system", *BASE, *(["--is-upgrade"] if upgrade else [])]
    for value in values:
        args += ["--set", value]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def pod_spec(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return one(documents, "Deployment")["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def defaults() -> list[dict[str, Any]]:
    return render()


def test_lint_strict_and_the_schema_takes_global_and_refuses_the_unknown() -> None:
    for values in ([], ["global.imageRegistry=x", "global.anything.nested=1"], ["replicas=1"],
                   ["crds.install=false", "tests.enabled=false", "webhook.enabled=false"]):
        args = ["lint", "--strict", str(CHART), "--kube-version", "1.34.0", "--set", "operator.registry=r:5000"]
        for value in values:
            args += ["--set", value]
        result = helm(*args)
        assert result.returncode == 0, result.stdout + result.stderr
    for bad in ("image.digest=latest", "nameOverride=Bad_Name", "serviceAccount.nam=x", "crds.instal=true",
                "strategy.type=Sideways", "podDisruptionBudget.enabled=maybe", "tests.enabled=1"):
        result = helm("template", "x", str(CHART), *BASE, "--set", bad)
        assert "values don't meet the specifications of the schema" in result.stderr, bad


def test_two_replicas_roll_without_a_gap_and_a_budget_guards_drains(defaults: list[dict[str, Any]]) -> None:
    deployment = one(defaults, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    budget = one(defaults, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1 and "maxUnavailable" not in budget["spec"]
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    container = pod_spec(defaults)["containers"][0]
    # Ready only when the webhook listens; a stopping pod answers a while longer.
    assert container["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < sleep < pod_spec(defaults)["terminationGracePeriodSeconds"]
    assert not [d for d in render("replicas=1") if d["kind"] == "PodDisruptionBudget"], "one replica: never drainable"
    assert one(render("podDisruptionBudget.maxUnavailable=1"), "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1, "selector": budget["spec"]["selector"]}
    assert not [d for d in render("podDisruptionBudget.enabled=false") if d["kind"] == "PodDisruptionBudget"]
    webhookless = pod_spec(render("webhook.enabled=false"))["containers"][0]
    assert webhookless["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_names_service_account_and_image(defaults: list[dict[str, Any]]) -> None:
    assert one(defaults, "ServiceAccount", "envkiln")["automountServiceAccountToken"] is True
    assert pod_spec(defaults)["serviceAccountName"] == "envkiln"
    assert pod_spec(defaults)["containers"][0]["image"] == "ghcr.io/envkiln/envkiln:0.1.0"
    digest = "sha256:" + "a" * 64
    named = render("fullnameOverride=ek", "nameOverride=kiln", f"image.digest={digest}", "image.tag=9.9",
                   "serviceAccount.annotations.azure\\.workload\\.identity/client-id=abc")
    deployment = one(named, "Deployment", "ek")
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "kiln"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/envkiln/envkiln@{digest}"
    account = one(named, "ServiceAccount", "ek")
    assert account["metadata"]["annotations"] == {"azure.workload.identity/client-id": "abc"}
    own = render("serviceAccount.create=false", "serviceAccount.name=platform-sa")
    assert not [d for d in own if d["kind"] == "ServiceAccount" and d["metadata"]["name"] != "envkiln-crds"
                and d["metadata"]["name"] != "envkiln-test"]
    assert pod_spec(own)["serviceAccountName"] == "platform-sa"
    subjects = [s for d in own if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
                and d["metadata"]["name"] in ("envkiln", "envkiln-secrets") for s in d["subjects"]]
    assert subjects and {s["name"] for s in subjects} == {"platform-sa"}
    missing = helm("template", "x", str(CHART), *BASE, "--set", "serviceAccount.create=false")
    assert missing.returncode != 0 and "serviceAccount.name" in missing.stderr


def test_pod_settings_are_overridable(defaults: list[dict[str, Any]]) -> None:
    spec = pod_spec(defaults)
    assert spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}, \
        "no uid: OpenShift's restricted SCC assigns one"
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    spread = spec["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == one(defaults, "Deployment")["spec"]["selector"]["matchLabels"]
    custom = render("podSecurityContext.runAsUser=1000740000", "securityContext.readOnlyRootFilesystem=false",
                    "priorityClassName=system-cluster-critical", "podAnnotations.a=b", "podLabels.team=ml",
                    "extraVolumes[0].name=ca", "extraVolumes[0].configMap.name=ca",
                    "extraVolumeMounts[0].name=ca", "extraVolumeMounts[0].mountPath=/etc/ca",
                    "nodeSelector.pool=system", "tolerations[0].operator=Exists",
                    "topologySpreadConstraints[0].maxSkew=2", "topologySpreadConstraints[0].topologyKey=zone",
                    "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule")
    template = one(custom, "Deployment")["spec"]["template"]
    spec = template["spec"]
    assert spec["securityContext"]["runAsUser"] == 1000740000
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert template["metadata"]["annotations"]["a"] == "b" and template["metadata"]["labels"]["team"] == "ml"
    assert {"name": "ca", "configMap": {"name": "ca"}} in spec["volumes"]
    assert {"name": "ca", "mountPath": "/etc/ca"} in spec["containers"][0]["volumeMounts"]
    assert spec["nodeSelector"] == {"pool": "system"} and spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "zone"


def test_a_checksum_rolls_the_pods_when_a_file_read_at_start_changes(defaults: list[dict[str, Any]]) -> None:
    def annotations(*values: str) -> dict[str, str]:
        return one(render(*values), "Deployment")["spec"]["template"]["metadata"].get("annotations") or {}

    assert not annotations()
    first, second = annotations("webhook.clientCA=one"), annotations("webhook.clientCA=two")
    assert first["checksum/webhook-client-ca"] != second["checksum/webhook-client-ca"]


def test_crds_are_adopted_after_install_and_templates_on_upgrade(defaults: list[dict[str, Any]]) -> None:
    files = {}
    for path in (CHART / "crds").glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd:
                files[crd["metadata"]["name"]] = crd
    # Install: the CRDs come from crds/ (the chart's Environments need them before anything is
    # created); a Job per revision adopts them (not a hook: nothing waits for it).
    assert not [d for d in defaults if d["kind"] == "CustomResourceDefinition"]
    job = one(defaults, "Job", "envkiln-crds-1")
    assert "annotations" not in job["metadata"]
    assert one(render("crds.keep=false"), "Job")["spec"]["template"]["spec"]["containers"][0]["env"][3] == {
        "name": "KEEP", "value": "false"}
    role = one(defaults, "ClusterRole", "envkiln-crds")
    [rule] = role["rules"]
    assert sorted(rule.pop("resourceNames")) == sorted(files)
    assert rule == {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                    "verbs": ["get", "patch"]}
    # Upgrade: the same CRDs as templates, labelled, kept on uninstall.
    upgraded = {d["metadata"]["name"]: d for d in render(upgrade=True) if d["kind"] == "CustomResourceDefinition"}
    assert upgraded.keys() == files.keys()
    for name, crd in upgraded.items():
        assert crd["spec"] == files[name]["spec"], name
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    unkept = [d for d in render("crds.keep=false", "crds.annotations.team=ml", upgrade=True)
              if d["kind"] == "CustomResourceDefinition"]
    assert unkept and all(d["metadata"]["annotations"] == {"team": "ml"} for d in unkept)
    unmanaged = render("crds.install=false", upgrade=True)
    assert not [d for d in unmanaged if d["kind"] == "CustomResourceDefinition"
                or d["metadata"]["name"].startswith("envkiln-crds")]


def test_helm_test_pod_and_notes(defaults: list[dict[str, Any]]) -> None:
    pod = one(defaults, "Pod", "envkiln-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["WEBHOOK_SERVICE"] == "envkiln-webhook" and env["REVIEW_NAMESPACE"] == "envkiln-system"
    scoped = one(render("operator.watchNamespaces={team-a}"), "Pod", "envkiln-test")
    assert {e["name"]: e["value"] for e in scoped["spec"]["containers"][0]["env"]}["REVIEW_NAMESPACE"] == "team-a"
    assert not [d for d in render("tests.enabled=false") if d["kind"] == "Pod"]
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "crds/" not in notes and "helm test" in notes, "NOTES points only at what an installed chart has"
    ignored = (CHART / ".helmignore").read_text().splitlines()
    assert ".git/" in ignored


def test_works_as_a_subchart_with_global_values(tmp_path: Path) -> None:
    """A parent chart passes `global` to every subchart: the schema must take it."""
    parent = tmp_path / "platform"
    shutil.copytree(CHART, parent / "charts" / "envkiln")
    (parent / "Chart.yaml").write_text("apiVersion: v2\nname: platform\nversion: 0.0.1\n"
                                       "dependencies:\n  - name: envkiln\n    version: '>=0.0.0-0'\n")
    (parent / "values.yaml").write_text("global: {imageRegistry: registry.example.com, storageClass: fast}\n"
                                        "envkiln: {operator: {registry: 'r:5000'}, fullnameOverride: kiln}\n")
    result = helm("template", "p", str(parent), "--kube-version", "1.34.0")
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert one(documents, "Deployment", "kiln")["spec"]["replicas"] == 2


def _build_env(documents: list[dict[str, Any]]) -> dict[str, str]:
    operator = one(documents, "Deployment", "envkiln")["spec"]["template"]["spec"]["containers"][0]
    return json.loads({e["name"]: e.get("value") for e in operator["env"]}["ENVKILN_BUILD_ENV"])  # type: ignore[no-any-return]


PROXY_URL = "http://envkiln-package-proxy.envkiln-system.svc:5000/index/"


@pytest.mark.parametrize(("values", "build_env"), [
    ([], {}),  # off by default: nothing of it, the build env as given
    (["builds.env.HTTP_PROXY=http://p:3128"], {"HTTP_PROXY": "http://p:3128"}),
    (["packageProxy.enabled=true"],
     {"PIP_INDEX_URL": PROXY_URL, "PIP_TRUSTED_HOST": "envkiln-package-proxy.envkiln-system.svc:5000"}),
    (["packageProxy.enabled=true", "packageProxy.clusterIP=10.96.0.50", "packageProxy.port=8080"],
     {"PIP_INDEX_URL": "http://10.96.0.50:8080/index/", "PIP_TRUSTED_HOST": "10.96.0.50:8080"}),
    (["packageProxy.enabled=true", "builds.env.HTTP_PROXY=http://p:3128"],
     {"HTTP_PROXY": "http://p:3128", "PIP_INDEX_URL": PROXY_URL,
      "PIP_TRUSTED_HOST": "envkiln-package-proxy.envkiln-system.svc:5000"}),
    # An index the administrator set wins: the chart adds nothing.
    (["packageProxy.enabled=true", "builds.env.PIP_INDEX_URL=https://mirror/simple"],
     {"PIP_INDEX_URL": "https://mirror/simple"}),
])
def test_the_package_proxy_and_the_build_env_it_gives(values: list[str], build_env: dict[str, str]) -> None:
    documents = render(*values)
    assert _build_env(documents) == build_env
    proxy = [d for d in documents if d["metadata"]["name"] == "envkiln-package-proxy"]
    if "packageProxy.enabled=true" not in values:
        assert not proxy
        return
    assert sorted(d["kind"] for d in proxy) == ["Deployment", "NetworkPolicy", "Service"]
    spec = one(proxy, "Deployment")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    # It answers every file from its cache (never a redirect to the upstream), from the upstream only.
    assert env["PROXPI_DOWNLOAD_TIMEOUT"] == "600" and env["PROXPI_INDEX_URL"] == "https://pypi.org/simple/"
    assert env["PROXPI_CACHE_DIR"] == "/var/cache/proxpi" and env["PROXPI_CACHE_SIZE"] == "21474836480"
    assert spec["securityContext"]["runAsNonRoot"] and spec["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"]
    service = one(proxy, "Service")["spec"]
    assert service["selector"] == one(proxy, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service.get("clusterIP") == ("10.96.0.50" if "packageProxy.clusterIP=10.96.0.50" in values else None)
    assert one(proxy, "NetworkPolicy")["spec"]["policyTypes"] == ["Ingress"]


def test_the_package_proxy_keeps_its_cache_on_a_claim_when_asked() -> None:
    documents = render("packageProxy.enabled=true", "packageProxy.persistence.enabled=true",
                       "packageProxy.upstream=https://mirror.example/simple/",
                       "packageProxy.extraUpstreams={https://download.pytorch.org/whl/cu121/}")
    claim = one(documents, "PersistentVolumeClaim", "envkiln-package-proxy")
    assert claim["spec"]["resources"]["requests"]["storage"] == "25Gi"
    spec = one(documents, "Deployment", "envkiln-package-proxy")["spec"]["template"]["spec"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "envkiln-package-proxy"}} in spec["volumes"]
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env["PROXPI_INDEX_URL"] == "https://mirror.example/simple/"
    assert env["PROXPI_EXTRA_INDEX_URLS"] == "https://download.pytorch.org/whl/cu121/"
    for bad in ("packageProxy.upstream=ftp://x", "packageProxy.port=0", "packageProxy.clusterIP=not-an-ip",
                "packageProxy.unknown=1"):
        result = helm("template", "x", str(CHART), *BASE, "--set", bad)
        assert "values don't meet the specifications of the schema" in result.stderr, bad
