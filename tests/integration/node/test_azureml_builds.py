"""Builds faithful to Azure ML's, really built by the in-cluster buildah builder on the node and run there.

Bases are made here (host buildah on the harness's Debian python image): one with a Python module
preinstalled in the system Python and the local package index in its environment, one with a stand-in
`micromamba` (the real one cannot be fetched here) that makes a conda prefix holding a shared library and
a tool, so the test checks what envkiln's render wires up: the prefix's lib/ on LD_LIBRARY_PATH and bin/
on PATH. Azure-style fixtures from tests/fixtures/azureml/build are imported with `envkiln.core.azureml` and
built as imported (only the base image reference is replaced by the local one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from envkiln.core.azureml import ImportOptions, import_azureml
from harness.buildah import build_and_push
from harness.pypi import PackageIndex
from node_helpers import PROBE, PROBE_VERSION, run_in
from operator_helpers import Envs, environment

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "azureml" / "build"
PLACEHOLDER_PIP = "localhost:5000/envkiln-test/azureml-base:pip"
PLACEHOLDER_CONDA = "localhost:5000/envkiln-test/azureml-base:conda"

FAKE_MICROMAMBA = """#!/bin/sh
# Stands in for micromamba: `create --prefix P` makes P/lib/libenvkilnprobe.so and P/bin/envkiln-conda-tool.
set -eu
[ "$1" = create ] || exit 0
prefix=
while [ $# -gt 0 ]; do
  if [ "$1" = --prefix ]; then prefix=$2; fi
  shift
done
mkdir -p "$prefix/bin" "$prefix/lib"
cp "$(find / -xdev -name 'libz.so.1*' -type f | head -n 1)" "$prefix/lib/libenvkilnprobe.so"
printf '#!/bin/sh\\necho conda-tool-on-path\\n' > "$prefix/bin/envkiln-conda-tool"
chmod 755 "$prefix/bin/envkiln-conda-tool"
"""


def _build(tmp: Path, dockerfile: str, files: dict[str, str], destination: str) -> str:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "Dockerfile").write_text(dockerfile)
    for name, content in files.items():
        (tmp / name).write_text(content)
    result = build_and_push(tmp, destination)
    return f"{destination.rsplit(':', 1)[0]}@{result.digest}"


@pytest.fixture(scope="module")
def azureml_bases(node_base_image: str, node_registry_host: str, probe_index: PackageIndex,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("azureml-bases")
    index_env = (f"ENV PIP_INDEX_URL={probe_index.url} PIP_TRUSTED_HOST={probe_index.host} "
                 "PIP_DEFAULT_TIMEOUT=5 PIP_RETRIES=0")
    repository = f"{node_registry_host}/envkiln-test/azureml-base"
    preinstalled = _build(tmp / "pip", "\n".join([
        f"FROM {node_base_image}",
        "RUN printf 'VALUE = 42\\n' > /usr/lib/python3/dist-packages/envkiln_basepkg.py",
        index_env, "",
    ]), {}, f"{repository}:pip")
    nonroot = _build(tmp / "nonroot", "\n".join([
        f"FROM {preinstalled}", "RUN useradd --uid 1000 --create-home trainer", "USER 1000",
        "WORKDIR /home/trainer", "",
    ]), {}, f"{repository}:nonroot")
    micromamba = _build(tmp / "micromamba", "\n".join([
        f"FROM {node_base_image}", "COPY micromamba /bin/micromamba", "RUN chmod 755 /bin/micromamba", "",
    ]), {"micromamba": FAKE_MICROMAMBA}, f"{node_registry_host}/envkiln-test/fake-micromamba:1")
    return {"pip": preinstalled, "conda": preinstalled, "nonroot": nonroot, "micromamba": micromamba}


def imported(fixture: str, image: str | None = None, context_from: str | None = None) -> list[dict[str, Any]]:
    outcomes, _ = import_azureml([FIXTURES / fixture], ImportOptions())
    [outcome] = outcomes
    assert outcome.status == "imported", outcome.line()
    documents = outcome.documents
    if image is not None:
        documents[0]["spec"]["image"] = image
    if context_from is not None:
        for document in documents[1:]:
            document["data"]["Dockerfile"] = document["data"]["Dockerfile"].replace(PLACEHOLDER_PIP, context_from)
    return documents


def test_pip_only_definition_keeps_the_base_pythons_packages(node_api: client.ApiClient, node_namespace: str,
                                                              azureml_bases: dict[str, str], buildah_operator: Any
                                                              ) -> None:
    operator = buildah_operator(node_namespace)
    envs = Envs(node_api, node_namespace)
    envs.create(environment("preinstalled", image=azureml_bases["pip"], pip=[f"{PROBE}=={PROBE_VERSION}"]))
    status = envs.wait_phase("preinstalled", "Ready", timeout=300, diagnostics=operator.log)
    log = run_in(envs.core, node_namespace, status["imageRef"],
                 "python -c 'import envkiln_basepkg, envkiln_probe; print(envkiln_basepkg.VALUE, "
                 "envkiln_probe.VERSION)'; python -c 'import sys; print(sys.prefix)'")
    assert f"42 {PROBE_VERSION}" in log, "the base's own package is importable next to the installed one"
    assert "/opt/envkiln/venv" in log, "installed into envkiln's venv, the base's files untouched"


def test_imported_conda_definition_finds_its_library_through_ld_library_path(
        node_api: client.ApiClient, node_namespace: str, azureml_bases: dict[str, str], buildah_operator: Any) -> None:
    operator = buildah_operator(node_namespace, micromamba_image=azureml_bases["micromamba"])
    envs = Envs(node_api, node_namespace)
    [manifest] = imported("conda-libpath.yml", image=azureml_bases["conda"])
    envs.create(manifest)
    name = manifest["metadata"]["name"]
    status = envs.wait_phase(name, "Ready", timeout=300, diagnostics=operator.log)
    log = run_in(envs.core, node_namespace, status["imageRef"],
                 "echo LD=$LD_LIBRARY_PATH; envkiln-conda-tool; "
                 "python3 -c \"import ctypes; ctypes.CDLL('libenvkilnprobe.so'); print('library found')\"")
    assert "LD=/opt/envkiln/conda/lib\n" in log, "no empty entry (the current directory) when it was unset"
    assert "conda-tool-on-path" in log and "library found" in log, log


def test_imported_directory_context_builds_from_its_configmap(node_api: client.ApiClient, node_namespace: str,
                                                              azureml_bases: dict[str, str], buildah_operator: Any
                                                              ) -> None:
    operator = buildah_operator(node_namespace)
    envs = Envs(node_api, node_namespace)
    manifest, config_map = imported("context-probe.yml", context_from=azureml_bases["pip"])
    envs.core.create_namespaced_config_map(node_namespace, config_map)
    envs.create(manifest)
    status = envs.wait_phase(manifest["metadata"]["name"], "Ready", timeout=300, diagnostics=operator.log)
    log = run_in(envs.core, node_namespace, status["imageRef"],
                 "python -c 'import envkiln_probe; print(\"probe\", envkiln_probe.VERSION)'")
    assert f"probe {PROBE_VERSION}" in log


def test_imported_nested_tree_builds_from_its_configmap(node_api: client.ApiClient, node_namespace: str,
                                                        azureml_bases: dict[str, str], buildah_operator: Any) -> None:
    """A directory with subdirectories, small enough for a ConfigMap: its subdirectories travel in the key
    .envkiln-context.tar, which the build pod's `context` container checks (digest) and unpacks."""
    operator = buildah_operator(node_namespace)
    envs = Envs(node_api, node_namespace)
    manifest, config_map = imported("nested-tree.yml", context_from=azureml_bases["pip"])
    assert set(config_map["data"]) == {"Dockerfile"} and set(config_map["binaryData"]) == {".envkiln-context.tar"}
    envs.core.create_namespaced_config_map(node_namespace, config_map)
    envs.create(manifest)
    status = envs.wait_phase(manifest["metadata"]["name"], "Ready", timeout=300, diagnostics=operator.log)
    log = run_in(envs.core, node_namespace, status["imageRef"],
                 "python3 -c 'import envkiln_nested; print(envkiln_nested.VALUE)'; cat /opt/conf/deep/settings.txt; "
                 "/opt/nested-bin/run.sh; ls -a /opt/nested")
    assert log.split() == ["nested-package", "deep-setting", "nested-script-runs", ".", "..", "envkiln_nested"], log


def test_non_root_base_is_built_as_root_and_keeps_its_user(node_api: client.ApiClient, node_namespace: str,
                                                           azureml_bases: dict[str, str], buildah_operator: Any
                                                           ) -> None:
    """The installs run as root in their own stage; the image is the base again (its USER and WORKDIR) with
    /opt/envkiln copied in, owned by root and readable and executable by the base's user."""
    operator = buildah_operator(node_namespace, build_retry_limit="0")
    envs = Envs(node_api, node_namespace)
    envs.create(environment("nonroot", image=azureml_bases["nonroot"], pip=[f"{PROBE}=={PROBE_VERSION}"]))
    status = envs.wait_phase("nonroot", "Ready", timeout=300, diagnostics=operator.log)
    log = run_in(envs.core, node_namespace, status["imageRef"],
                 "id -u; pwd; stat -c '%U %a' /opt/envkiln /opt/envkiln/venv/pyvenv.cfg; "
                 "python -c 'import envkiln_probe, envkiln_basepkg, sys; print(\"ok\", sys.prefix)'")
    assert log.split() == ["1000", "/home/trainer", "root", "755", "root", "644", "ok", "/opt/envkiln/venv"], log


def test_build_fixtures_are_what_the_tests_above_build() -> None:
    """The placeholders the tests replace are in the fixtures (so a fixture edit cannot silently skip them)."""
    assert yaml.safe_load((FIXTURES / "conda-libpath.yml").read_text())["image"] == PLACEHOLDER_CONDA
    assert (FIXTURES / "context-probe" / "Dockerfile").read_text().startswith(f"FROM {PLACEHOLDER_PIP}\n")
    assert (FIXTURES / "nested-tree" / "Dockerfile").read_text().startswith(f"FROM {PLACEHOLDER_PIP}\n")
