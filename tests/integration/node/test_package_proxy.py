"""The chart's package proxy on the real node (issue 25, item 3): builds in two namespaces install
through the operator-run pull-through proxy (proxpi, its image built here), and a package both need
is downloaded from the upstream index once. Rendered by helm from charts/envkiln (the proxy's
Deployment, Service and NetworkPolicy, and the build env the chart gives the operator), run in pods
on the node; the builds are real buildah build Jobs."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from kubernetes import client

from harness.controlplane import cache_dir
from harness.package_proxy import deploy
from harness.pypi import PackageIndex, make_wheel
from operator_helpers import Envs, environment

pytestmark = pytest.mark.kube_proxy  # its pods reach ClusterIP Services

HELM = cache_dir() / "bin" / "helm"
SHARED = make_wheel("envkiln-shared", "2.0.0", module="envkiln_shared", source="SHARED = 2\n",
                    files={"envkiln_shared_data.bin": os.urandom(256 * 1024)})
ONLY_A = make_wheel("envkiln-only-a", "1.0.0", module="envkiln_only_a", source="A = 1\n")
ONLY_B = make_wheel("envkiln-only-b", "1.0.0", module="envkiln_only_b", source="B = 1\n")


@pytest.mark.skipif(not HELM.exists(), reason=f"no helm at {HELM} (make controlplane)")
def test_two_namespaces_build_through_the_package_proxy_and_a_shared_package_is_downloaded_once(
        cluster: Any, node_api: client.ApiClient, node_namespace: str, second_namespace: str, operator_namespace: str,
        node_base_image: str, buildah_operator: Any) -> None:
    with PackageIndex([SHARED, ONLY_A, ONLY_B], host=str(cluster.address)) as upstream:
        proxy = deploy(node_api, cluster, operator_namespace, node_base_image, upstream.url + "/")
        assert sorted(d["kind"] for d in proxy.documents) == ["Deployment", "NetworkPolicy", "Service"]
        # The chart points builds at the proxy (by its address: the node's pods have no DNS).
        assert proxy.build_env == {"PIP_INDEX_URL": f"http://{proxy.address}:5000/index/",
                                   "PIP_TRUSTED_HOST": f"{proxy.address}:5000"}
        build_env = json.dumps(proxy.build_env)
        operator = buildah_operator(node_namespace, also_watch=(second_namespace,), build_env=build_env)
        first, second = Envs(node_api, node_namespace), Envs(node_api, second_namespace)
        # No index in the definitions: the build env the chart made is all that points pip/uv anywhere.
        first.create(environment("a", image=node_base_image, pip=["envkiln-shared==2.0.0", "envkiln-only-a==1.0.0"]))
        first.wait_phase("a", "Ready", timeout=400, diagnostics=operator.log)
        second.create(environment("b", image=node_base_image, pip=["envkiln-shared==2.0.0", "envkiln-only-b==1.0.0"]))
        second.wait_phase("b", "Ready", timeout=400, diagnostics=operator.log)

        for envs, mine in ((first, "envkiln-only-a"), (second, "envkiln-only-b")):
            [build] = envs.builds()
            locked = {line.split("==")[0].strip().lower() for line in build["status"]["lock"]["text"].splitlines()
                      if "==" in line}
            assert {"envkiln-shared", mine} <= locked, locked
        # Every file came through the proxy (proxpi names itself; so do pip and uv), and the file both
        # namespaces needed was downloaded once (proxpi asks HEAD first: counted are the bodies sent).
        files = [(path, agent) for path, agent, _ in upstream.transfers if path.startswith("/files/")]
        assert files and all(agent.startswith("proxpi/") for _, agent in files), files
        assert sorted(path for path, _ in files) == sorted(f"/files/{w.filename}" for w in (SHARED, ONLY_A, ONLY_B))
