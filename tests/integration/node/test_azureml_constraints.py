"""Azure ML's `-c constraints.txt`, as the importer writes it (envkiln.core.azureml.constraint_steps), holds in a
real build on the node: the index serves 1.0.0 and 2.0.0 of a package, the definition asks for it unpinned, and
the constraint `<2` makes the install pick 1.0.0 (pip reads PIP_CONSTRAINT; uv, when the build has it,
UV_CONSTRAINT). Without the constraint the same index gives 2.0.0 (the control)."""

from __future__ import annotations

import uuid
from typing import Any

from kubernetes import client

from envkiln.core.azureml import CONSTRAINTS_FILE, constraint_steps
from harness.pypi import PackageIndex, make_wheel
from node_helpers import probe_spec
from operator_helpers import Envs, environment, wait_for

PACKAGE = "envkiln-constrained"


def _print_version(core: client.CoreV1Api, namespace: str, image: str) -> str:
    name = f"constrained-{uuid.uuid4().hex[:8]}"
    script = ("python -c 'import envkiln_constrained as m; print(\"version\", m.VERSION)'; "
              "echo PIP_CONSTRAINT=$PIP_CONSTRAINT")
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": image, "command": ["/bin/sh", "-c", script]}]}})
    phase = wait_for(lambda: (core.read_namespaced_pod(name, namespace).status.phase
                              if core.read_namespaced_pod(name, namespace).status.phase in ("Succeeded", "Failed")
                              else None), timeout=120, interval=0.5, what=f"pod {name}")
    log = str(core.read_namespaced_pod_log(name, namespace, container="main"))
    assert phase == "Succeeded", log
    return log


def test_a_constraints_file_holds_for_the_install(node_api: client.ApiClient, node_namespace: str,
                                                   node_base_image: str, probe_index: PackageIndex,
                                                   buildah_operator: Any) -> None:
    for version in ("1.0.0", "2.0.0"):
        probe_index.add(make_wheel(PACKAGE, version, module="envkiln_constrained", source=f'VERSION = "{version}"\n'))
    operator = buildah_operator(node_namespace)
    envs = Envs(node_api, node_namespace)
    constrained = probe_spec(node_base_image, probe_index, *constraint_steps([f"{PACKAGE}<2"]), pip=[PACKAGE])
    control = probe_spec(node_base_image, probe_index, pip=[PACKAGE])
    envs.create(environment("constrained", **constrained))
    envs.create(environment("unconstrained", **control))
    for name, version, constraint in (("constrained", "1.0.0", CONSTRAINTS_FILE), ("unconstrained", "2.0.0", "")):
        status = envs.wait_phase(name, "Ready", timeout=300, diagnostics=operator.log)
        log = _print_version(envs.core, node_namespace, status["imageRef"])
        assert f"version {version}" in log and f"PIP_CONSTRAINT={constraint}\n" in log, log
