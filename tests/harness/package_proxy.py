"""The chart's package proxy (packageProxy: proxpi, a pull-through PyPI cache) put on a harness
cluster as the chart renders it: `helm template charts/envkiln` with the proxy on, its Deployment,
Service and NetworkPolicy created in a namespace, its image built here (harness.proxy_image), and
the build env the chart gives the operator for it. For the node test and bench.builds."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client

from harness.buildah import push_archive
from harness.controlplane import REPO_ROOT, cache_dir
from harness.proxy_image import proxy_image_archive

NAME = "envkiln-package-proxy"  # the chart's name for it, release "envkiln"


def chart_documents(namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """`helm template envkiln charts/envkiln -n namespace` with `values`, as users install it."""
    helm = [str(cache_dir() / "bin" / "helm"), "template", "envkiln", str(REPO_ROOT / "charts" / "envkiln")]
    result = subprocess.run([*helm, "-n", namespace, "--kube-version", "1.34.0", "-f", "-"],
                            input=yaml.safe_dump(values), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"helm template: {result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass
class PackageProxy:
    address: str  # the Service's address (the node's pods have no DNS)
    build_env: dict[str, str]  # ENVKILN_BUILD_ENV of the chart's operator Deployment
    documents: list[dict[str, Any]]  # the proxy's objects as the chart rendered them


def deploy(api: client.ApiClient, cluster: Any, namespace: str, base_image: str, upstream: str,
           timeout: float = 240) -> PackageProxy:
    """The chart's proxy in `namespace`, reading from `upstream` (a simple index URL), Ready."""
    registry = cluster.registry.host
    digest = push_archive(proxy_image_archive(base_image), f"{registry}/envkiln/proxpi:test")
    address = cluster.network.service_cidr.rsplit(".", 1)[0] + ".200"
    documents = chart_documents(namespace, {
        "operator": {"registry": registry},
        "packageProxy": {"enabled": True, "image": f"{registry}/envkiln/proxpi@{digest}", "upstream": upstream,
                         "clusterIP": address, "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}})
    proxy = [d for d in documents if d["metadata"]["name"] == NAME]
    [operator] = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "envkiln"]
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    apps, core, net = client.AppsV1Api(api), client.CoreV1Api(api), client.NetworkingV1Api(api)
    create = {"Deployment": apps.create_namespaced_deployment, "Service": core.create_namespaced_service,
              "NetworkPolicy": net.create_namespaced_network_policy}
    for document in proxy:
        create[document["kind"]](namespace, document)
    deadline = time.monotonic() + timeout
    while (apps.read_namespaced_deployment(NAME, namespace).status.ready_replicas or 0) < 1:
        if time.monotonic() > deadline:
            pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=package-proxy")
            raise TimeoutError(f"the package proxy is not Ready after {timeout:.0f}s: "
                               f"{[p.status.to_dict() for p in pods.items]}"[:3000])
        time.sleep(0.5)
    return PackageProxy(address, json.loads(env["ENVKILN_BUILD_ENV"]), proxy)
