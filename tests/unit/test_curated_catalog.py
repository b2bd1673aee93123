"""The curated catalog (envkiln.core.catalog), defined once: the chart template and the docs' tables are its
copies (ENVKILN_UPDATE_GOLDEN=1 rewrites them), every definition validates, hashes and renders, and Azure ML
curated names map to the nearest envkiln one with the gaps stated (tables)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from envkiln.core.catalog import (
    AZURE_EXAMPLES,
    BY_NAME,
    CATALOG,
    chart_template,
    counterpart,
    docs_with_tables,
)
from envkiln.core.decisions.curated import reserved_prefix
from envkiln.core.definition import definition_hash
from envkiln.core.manifests import parse_environment
from envkiln.core.models import EnvironmentKind
from envkiln.core.names import DEFAULT_CURATED_NAMESPACE
from envkiln.core.render import NothingToBuild, render

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "envkiln" / "templates" / "curated.yaml"
DOCS = ROOT / "docs" / "curated-environments.md"
UPDATE = os.environ.get("ENVKILN_UPDATE_GOLDEN") == "1"


def _up_to_date(path: Path, text: str) -> None:
    if UPDATE:
        path.write_text(text)
    assert path.read_text() == text, (
        f"{path.relative_to(ROOT)} is not what envkiln.core.catalog generates; edit the catalog, then run "
        "ENVKILN_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_curated_catalog.py")


def test_the_chart_template_is_the_catalog() -> None:
    _up_to_date(CHART, chart_template())


def test_the_docs_tables_are_the_catalog() -> None:
    _up_to_date(DOCS, docs_with_tables(DOCS.read_text()))


def _chart_documents() -> list[dict[str, object]]:
    """The chart's Environments as Helm would write them (template lines removed, namespace filled)."""
    text = re.sub(r"\{\{-? (if|end)[^}]*\}\}\n?", "", CHART.read_text())
    text = re.sub(r" \{\{-? include \"envkiln.labels\"[^}]*\}\}", "", text)
    text = text.replace('{{ include "envkiln.curatedNamespace" . }}', DEFAULT_CURATED_NAMESPACE)
    return [d for d in yaml.safe_load_all(text) if d and d["kind"] == "Environment"]


def test_the_chart_installs_exactly_the_catalog() -> None:
    documents = _chart_documents()
    assert [d["metadata"]["name"] for d in documents] == [e.name for e in CATALOG]  # type: ignore[index]
    for document, entry in zip(documents, CATALOG, strict=True):
        assert document == entry.manifest(DEFAULT_CURATED_NAMESPACE)


HELM = Path(os.environ.get("ENVKILN_CACHE", Path.home() / ".cache" / "envkiln")) / "bin" / "helm"


@pytest.mark.skipif(not HELM.exists(), reason=f"no helm at {HELM} (make controlplane)")
@pytest.mark.parametrize("enabled", [True, False])
def test_helm_renders_the_catalog_into_the_curated_namespace(enabled: bool) -> None:
    result = subprocess.run([str(HELM), "template", "envkiln", str(ROOT / "charts" / "envkiln"), "-n", "envkiln-system",
                             "--kube-version", "1.34.0", "--set", "operator.registry=r:5000", "--set",
                             f"curated.enabled={str(enabled).lower()}", "--set", "curated.namespace=ml-curated"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    environments = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Environment"]
    if not enabled:
        assert not environments
        return
    assert [e["metadata"]["name"] for e in environments] == [e.name for e in CATALOG]
    for document, entry in zip(environments, CATALOG, strict=True):
        assert document["metadata"]["namespace"] == "ml-curated"
        assert document["metadata"]["labels"]["envkiln.dev/curated"] == "true"
        assert document["spec"] == dict(entry.spec)
        parse_environment(document, entry.name, "ml-curated")


@pytest.mark.parametrize("entry", CATALOG, ids=[e.name for e in CATALOG])
def test_each_definition_validates_hashes_and_renders(entry: object) -> None:
    from envkiln.core.catalog import CuratedEnvironment

    assert isinstance(entry, CuratedEnvironment)
    environment = parse_environment(entry.manifest(DEFAULT_CURATED_NAMESPACE), entry.name)
    digest = definition_hash(environment.spec)
    assert re.fullmatch(r"[0-9a-f]{32}", digest)
    assert environment.spec.description and "counterpart" in environment.spec.description
    if entry.spec.get("userManaged"):
        assert environment.spec.kind is EnvironmentKind.BRING_YOUR_OWN
        with pytest.raises(NothingToBuild):
            render(environment.spec, digest)
        return
    plan = render(environment.spec, digest)
    assert f"FROM {entry.spec['image']} AS envkiln-base" in plan.dockerfile
    assert digest in plan.dockerfile
    installed = "".join(f.content for f in plan.files if f.path in ("requirements.txt", "conda.yaml"))
    for line in entry.spec.get("pip", []):
        assert line in installed
    for step in entry.spec.get("dockerSteps", []):
        assert step in plan.dockerfile


def test_names_are_reserved_unique_and_definitions_distinct() -> None:
    assert len(BY_NAME) == len(CATALOG)
    for entry in CATALOG:
        assert reserved_prefix(entry.name, "team-a") == "azureml-", "only the curated namespace may hold them"
        assert reserved_prefix(entry.name, DEFAULT_CURATED_NAMESPACE) is None
    hashes = {definition_hash(parse_environment(e.manifest(DEFAULT_CURATED_NAMESPACE)).spec) for e in CATALOG}
    assert len(hashes) == len(CATALOG), "no two curated environments build the same image"


# The families Azure curates that envkiln must have: (family, framework, accelerator).
REQUIRED = [
    ("python", "3.10", "cpu"), ("python", "3.11", "cpu"), ("python", "3.12", "cpu"), ("sklearn", None, "cpu"),
    ("lightgbm", None, "cpu"), ("xgboost", None, "cpu"), ("tensorflow", None, "cpu"), ("tensorflow", None, "cuda"),
    ("pytorch", None, "cpu"), ("pytorch", None, "cuda"), ("acpt", None, "cuda"), ("mlflow", None, "cpu"),
    ("inference", None, "cpu"),
]


@pytest.mark.parametrize(("family", "framework", "accelerator"), REQUIRED)
def test_the_catalog_covers_azures_families(family: str, framework: str | None, accelerator: str) -> None:
    assert any(e.family == family and e.accelerator == accelerator and framework in (None, e.framework)
               for e in CATALOG)


# (Azure ML curated name, envkiln's counterpart or None, words of the gaps or of why there is none)
MAPPING = [
    ("AzureML-lightgbm-3.3", "azureml-lightgbm-4.5", ["Azure's LightGBM 3.3, envkiln's 4.5 (a major version newer)"]),
    ("AzureML-tensorflow-2.16-cuda12", "azureml-tensorflow-2.16-cuda", []),
    ("AzureML-tensorflow-2.16-cpu", "azureml-tensorflow-2.16-cpu", []),
    ("AzureML-acpt-pytorch-2.8-cuda12.6", "azureml-acpt-pytorch-2.5-cuda",
     ["Azure's PyTorch 2.8, envkiln's 2.5 (older)"]),
    ("AzureML-ACPT-pytorch-1.13-py38-cuda11.7-gpu", "azureml-acpt-pytorch-2.5-cuda",
     ["Azure's PyTorch 1.13, envkiln's 2.5 (a major version newer)", "Azure's Python 3.8, envkiln's 3.11"]),
    ("AzureML-pytorch-1.10-ubuntu18.04-py38-cuda11-gpu", "azureml-byoc-pytorch-2.5-cuda", ["PyTorch 1.10"]),
    ("AzureML-pytorch-2.5-ubuntu22.04-py311-cpu", "azureml-pytorch-2.5-cpu", []),
    ("AzureML-sklearn-1.5", "azureml-sklearn-1.5", []),
    ("sklearn-1.5", "azureml-sklearn-1.5", []),  # the registry form's name
    ("AzureML-sklearn-1.0-ubuntu20.04-py38-cpu", "azureml-sklearn-1.5", ["scikit-learn 1.0, envkiln's 1.5 (newer)"]),
    ("AzureML-lightgbm-3.3-cuda", "azureml-lightgbm-4.5", ["Azure's is CUDA, envkiln's lightgbm is CPU only"]),
    ("AzureML-XGBoost-0.9-Inference-CPU", "azureml-xgboost-2.1", ["XGBoost 0.9"]),
    ("AzureML-mlflow-ubuntu20.04-py38-cpu-inference", "azureml-mlflow-2.17-inference", ["Python 3.8"]),
    ("AzureML-minimal-ubuntu22.04-py39-cpu-inference", "azureml-minimal-inference",
     ["Azure's Python 3.9, envkiln's 3.11 (newer)"]),
    ("AzureML-python-3.9", "azureml-python-3.10", ["Azure's Python 3.9, envkiln's 3.10 (newer)"]),
    ("AzureML-minimal-py312", "azureml-python-3.12", []),
    ("AzureML-Minimal", "azureml-python-3.12", ["no Python version"]),
    ("AzureML-AutoML", None, ["AutoML"]),
    ("AzureML-AutoML-DNN-GPU", None, ["AutoML"]),
    ("AzureML-responsibleai-0.21-ubuntu20.04-py38-cpu", None, ["Responsible AI"]),
    ("AzureML-Chainer-5.1.0-GPU", None, ["Chainer"]),
    ("AzureML-something-new", None, ["not one of the families envkiln curates"]),
]


@pytest.mark.parametrize(("azure", "target", "words"), MAPPING, ids=[m[0] for m in MAPPING])
def test_azure_curated_names_map_to_the_nearest_with_the_gap_stated(azure: str, target: str | None,
                                                                     words: list[str]) -> None:
    match = counterpart(azure)
    assert (match.target.name if match.target else None) == target
    said = match.said()
    for word in words:
        assert word in said, said
    if target is not None and not words:
        assert not match.gaps and said.endswith("(the same versions)")


def test_the_docs_examples_all_resolve() -> None:
    assert all(counterpart(name).said() for name in AZURE_EXAMPLES)
