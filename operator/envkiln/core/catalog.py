"""The curated catalog: envkiln's curated environments, defined once.

Everything else is derived from `CATALOG` and checked against it by tests/unit/test_curated_catalog.py
(`ENVKILN_UPDATE_GOLDEN=1` rewrites the derived copies):

- the chart's `charts/envkiln/templates/curated.yaml` (`chart_template()`);
- the tables of docs/curated-environments.md (`catalog_table()`, `azure_mapping_table()`);
- the Azure ML importer's mapping of Azure curated names to envkiln ones (`counterpart()`, used by
  envkiln.core.azureml).

The definitions are envkiln's own, written for envkiln: each says which Azure ML curated environment it
stands for (its family, the framework version, CPU or CUDA), not what that environment holds. Their names
carry the reserved prefix `azureml-` (envkiln.core.decisions.curated), so only the curated namespace may
hold them. CUDA ones run on the official framework images (used as they are, or with a few pip packages on
top); they are validated, hashed and rendered in the unit tests only (no GPU here).

Pure: data and text, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import yaml

Accelerator = Literal["cpu", "cuda"]

# Azure ML's curated families, as envkiln names them, with the words of Azure names that mean each
# (tried in this order: `acpt-pytorch` is ACPT, `mlflow-...-inference` is MLflow).
FAMILY_WORDS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("acpt", ("acpt",)),
    ("mlflow", ("mlflow",)),
    ("tensorflow", ("tensorflow",)),
    ("pytorch", ("pytorch",)),
    ("lightgbm", ("lightgbm",)),
    ("xgboost", ("xgboost",)),
    ("sklearn", ("sklearn", "scikit-learn", "scikit")),
    ("inference", ("inference",)),
    ("python", ("minimal", "python", "py3")),
)
# Azure curated families envkiln has no counterpart for, and why.
NO_FAMILY: Final[Mapping[str, str]] = {
    "automl": "AutoML bundles Azure's AutoML SDK with many frameworks",
    "responsibleai": "Responsible AI runs Azure's RAI dashboard SDK",
    "vowpalwabbit": "Vowpal Wabbit is not curated by envkiln",
    "designer": "Designer environments run Azure ML designer modules",
    "triton": "Triton is NVIDIA's inference server image: bring it as a userManaged image",
    "chainer": "Chainer is not curated by envkiln",
    "dask": "Dask is not curated by envkiln",
    "pyspark": "PySpark is not curated by envkiln",
    "hyperdrive": "HyperDrive environments run Azure's sweep SDK",
}


@dataclass(frozen=True)
class CuratedEnvironment:
    """One curated Environment: its name, spec, and which Azure ML curated environment it stands for."""

    name: str
    family: str  # a key of FAMILY_WORDS
    framework: str  # the family's framework version ("4.5"); for `python`, the Python version
    accelerator: Accelerator
    python: str | None  # the Python version in the image, when envkiln knows it
    stands_for: str  # the Azure ML curated environment(s) it stands for
    contents: str  # one line: what it holds (docs table, importer lines)
    spec: Mapping[str, Any] = field(default_factory=dict)  # the Environment spec, as the chart writes it

    @property
    def kind(self) -> str:
        if self.spec.get("userManaged"):
            return "bring your own container"
        parts = [p for p, key in (("conda", "conda"), ("pip", "pip"), ("docker steps", "dockerSteps"))
                 if self.spec.get(key)]
        return "system-managed (" + " + ".join(parts) + ")"

    def manifest(self, namespace: str) -> dict[str, Any]:
        return {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment",
                "metadata": {"name": self.name, "namespace": namespace, "labels": {"envkiln.dev/curated": "true"}},
                "spec": dict(self.spec)}


_SLIM = "docker.io/library/python:{}-slim-bookworm"
_LIBGOMP = "RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*"
_DATA = ["numpy==2.1.3", "pandas==2.2.3", "pyarrow==18.1.0"]
_MLFLOW = "mlflow-skinny==2.17.2"
_SERVER = "azureml-inference-server-http==1.3.4"
# azureml-inference-server-http's routes and port (as Azure ML's inference images serve them).
_INFERENCE = {"livenessRoute": "/", "readinessRoute": "/", "scoringRoute": "/score", "port": 5001}


def _python(version: str) -> CuratedEnvironment:
    return CuratedEnvironment(
        name=f"azureml-python-{version}", family="python", framework=version, accelerator="cpu", python=version,
        stands_for=f"Azure ML's minimal CPU environments and bases (AzureML-minimal-*, the openmpi ubuntu22.04 "
                   f"images) with Python {version}",
        contents=f"python:{version}-slim-bookworm + numpy 2.1.3, pandas 2.2.3, pyarrow 18.1.0",
        spec={"version": "1",
              "description": f"Python {version} with the common data libraries; envkiln's counterpart of Azure "
                             f"ML's minimal CPU environments with Python {version}.",
              "image": _SLIM.format(version), "pip": list(_DATA)})


CATALOG: Final[tuple[CuratedEnvironment, ...]] = (
    _python("3.10"),
    _python("3.11"),
    _python("3.12"),
    CuratedEnvironment(
        name="azureml-sklearn-1.5", family="sklearn", framework="1.5", accelerator="cpu", python="3.11",
        stands_for="AzureML-sklearn-1.5 (scikit-learn 1.5 on CPU)",
        contents="debian:bookworm-slim + conda-forge python 3.11, scikit-learn 1.5, pandas 2.2, mlflow-skinny 2.17.2",
        spec={"version": "1",
              "description": "scikit-learn 1.5 from conda-forge, with MLflow tracking; envkiln's counterpart of "
                             "Azure ML's AzureML-sklearn-1.5.",
              "image": "docker.io/library/debian:bookworm-slim",
              "conda": {"channels": ["conda-forge"],
                        "dependencies": ["python=3.11", "scikit-learn=1.5", "pandas=2.2", "pip",
                                         {"pip": [_MLFLOW]}]}}),
    CuratedEnvironment(
        name="azureml-lightgbm-4.5", family="lightgbm", framework="4.5", accelerator="cpu", python="3.11",
        stands_for="AzureML-lightgbm-3.3 (LightGBM 3.3 on CPU, ubuntu20.04, Python 3.8)",
        contents="python:3.11-slim-bookworm + libgomp1, lightgbm 4.5.0, scikit-learn 1.5.2, pandas 2.2.3, "
                 "mlflow-skinny 2.17.2",
        spec={"version": "1",
              "description": "LightGBM 4.5 on CPU with scikit-learn and MLflow tracking; envkiln's counterpart of "
                             "Azure ML's AzureML-lightgbm-3.3 (LightGBM 3.3, Python 3.8).",
              "image": _SLIM.format("3.11"), "dockerSteps": [_LIBGOMP],
              "pip": ["lightgbm==4.5.0", "scikit-learn==1.5.2", "pandas==2.2.3", _MLFLOW]}),
    CuratedEnvironment(
        name="azureml-xgboost-2.1", family="xgboost", framework="2.1", accelerator="cpu", python="3.11",
        stands_for="Azure ML's XGBoost environments (AzureML-XGBoost-*-CPU, retired; XGBoost in the AutoML and "
                   "designer images)",
        contents="python:3.11-slim-bookworm + xgboost-cpu 2.1.3, scikit-learn 1.5.2, pandas 2.2.3, "
                 "mlflow-skinny 2.17.2",
        spec={"version": "1",
              "description": "XGBoost 2.1 (the CPU-only wheel) with scikit-learn and MLflow tracking; envkiln's "
                             "counterpart of Azure ML's XGBoost CPU environments.",
              "image": _SLIM.format("3.11"),
              "pip": ["xgboost-cpu==2.1.3", "scikit-learn==1.5.2", "pandas==2.2.3", _MLFLOW]}),
    CuratedEnvironment(
        name="azureml-tensorflow-2.16-cpu", family="tensorflow", framework="2.16", accelerator="cpu",
        python="3.11",
        stands_for="AzureML-tensorflow-2.16-cuda12 run on CPU nodes (Azure curates TensorFlow for CUDA only)",
        contents="python:3.11-slim-bookworm + tensorflow-cpu 2.16.2, mlflow-skinny 2.17.2",
        spec={"version": "1",
              "description": "TensorFlow 2.16 on CPU with MLflow tracking; envkiln's counterpart of Azure ML's "
                             "AzureML-tensorflow-2.16-cuda12 for nodes without a GPU.",
              "image": _SLIM.format("3.11"), "pip": ["tensorflow-cpu==2.16.2", _MLFLOW]}),
    CuratedEnvironment(
        name="azureml-tensorflow-2.16-cuda", family="tensorflow", framework="2.16", accelerator="cuda",
        python="3.11",
        stands_for="AzureML-tensorflow-2.16-cuda12 (TensorFlow 2.16, CUDA 12)",
        contents="tensorflow/tensorflow:2.16.1-gpu (CUDA 12.3), used as is",
        spec={"version": "1",
              "description": "The official TensorFlow 2.16 GPU image (CUDA 12), used as is; envkiln's counterpart "
                             "of Azure ML's AzureML-tensorflow-2.16-cuda12.",
              "userManaged": True, "image": "docker.io/tensorflow/tensorflow:2.16.1-gpu"}),
    CuratedEnvironment(
        name="azureml-pytorch-2.5-cpu", family="pytorch", framework="2.5", accelerator="cpu", python="3.11",
        stands_for="Azure ML's PyTorch CPU environments (AzureML-pytorch-*-cpu)",
        contents="python:3.11-slim-bookworm + libgomp1, torch 2.5.1 / torchvision 0.20.1 CPU wheels",
        spec={"version": "1",
              "description": "PyTorch 2.5 (CPU wheels) on Python 3.11; envkiln's counterpart of Azure ML's PyTorch "
                             "CPU environments.",
              "image": _SLIM.format("3.11"), "dockerSteps": [_LIBGOMP],
              "pip": ["--extra-index-url https://download.pytorch.org/whl/cpu", "torch==2.5.1",
                      "torchvision==0.20.1"],
              "environmentVariables": {"OMP_NUM_THREADS": "1"}}),
    CuratedEnvironment(
        name="azureml-byoc-pytorch-2.5-cuda", family="pytorch", framework="2.5", accelerator="cuda", python="3.11",
        stands_for="Azure ML's PyTorch CUDA environments (AzureML-pytorch-*-cuda*, AzureML-pytorch-*-gpu)",
        contents="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime, used as is",
        spec={"version": "1",
              "description": "The official PyTorch CUDA runtime image, used as is (bring your own container); "
                             "envkiln's counterpart of Azure ML's PyTorch CUDA environments.",
              "userManaged": True, "image": "docker.io/pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"}),
    CuratedEnvironment(
        name="azureml-acpt-pytorch-2.5-cuda", family="acpt", framework="2.5", accelerator="cuda", python="3.11",
        stands_for="Azure Container for PyTorch (AzureML-acpt-pytorch-*-cuda*): PyTorch with the distributed "
                   "training libraries",
        contents="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel + accelerate 1.1.1, transformers 4.46.3, "
                 "mlflow-skinny 2.17.2",
        spec={"version": "1",
              "description": "PyTorch 2.5 on CUDA 12.4 (devel image, for extensions built at run time) with "
                             "accelerate, transformers and MLflow tracking; envkiln's counterpart of Azure Container "
                             "for PyTorch (ACPT). DeepSpeed, ONNX Runtime training and Nebula are not included.",
              "image": "docker.io/pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel",
              "pip": ["accelerate==1.1.1", "transformers==4.46.3", _MLFLOW]}),
    CuratedEnvironment(
        name="azureml-mlflow-2.17-inference", family="mlflow", framework="2.17", accelerator="cpu", python="3.11",
        stands_for="Azure ML's MLflow inference environments (AzureML-mlflow-*-inference, mlflow-py3*-inference)",
        contents="python:3.11-slim-bookworm + azureml-inference-server-http 1.3.4, mlflow-skinny 2.17.2, "
                 "pandas 2.2.3; routes /, /score on port 5001",
        spec={"version": "1",
              "description": "Serves MLflow models with azureml-inference-server-http; envkiln's counterpart of "
                             "Azure ML's MLflow inference environments.",
              "image": _SLIM.format("3.11"), "pip": [_SERVER, _MLFLOW, "pandas==2.2.3"],
              "inference": dict(_INFERENCE)}),
    CuratedEnvironment(
        name="azureml-minimal-inference", family="inference", framework="1.3", accelerator="cpu", python="3.11",
        stands_for="AzureML-minimal-ubuntu22.04-py39-cpu-inference and minimal-py3*-inference (the inference "
                   "server alone)",
        contents="python:3.11-slim-bookworm + azureml-inference-server-http 1.3.4; routes /, /score on port 5001",
        spec={"version": "1",
              "description": "A minimal inference server (azureml-inference-server-http) on Python 3.11; envkiln's "
                             "counterpart of Azure ML's minimal CPU inference environments.",
              "image": _SLIM.format("3.11"), "pip": [_SERVER], "inference": dict(_INFERENCE)}),
)

BY_NAME: Final[Mapping[str, CuratedEnvironment]] = {entry.name: entry for entry in CATALOG}

# Azure ML curated names the docs' mapping table shows (what `counterpart` makes of each is generated).
AZURE_EXAMPLES: Final[tuple[str, ...]] = (
    "AzureML-minimal-ubuntu22.04-py39-cpu-inference",
    "AzureML-sklearn-1.5",
    "AzureML-sklearn-1.0-ubuntu20.04-py38-cpu",
    "AzureML-lightgbm-3.3",
    "AzureML-XGBoost-0.9-Inference-CPU",
    "AzureML-tensorflow-2.16-cuda12",
    "AzureML-tensorflow-2.12-cuda11",
    "AzureML-PyTorch-1.6-CPU",
    "AzureML-pytorch-1.10-ubuntu18.04-py38-cuda11-gpu",
    "AzureML-acpt-pytorch-2.8-cuda12.6",
    "AzureML-ACPT-pytorch-1.13-py38-cuda11.7-gpu",
    "AzureML-mlflow-ubuntu20.04-py38-cpu-inference",
    "AzureML-Minimal",
    "AzureML-AutoML",
    "AzureML-responsibleai-0.21-ubuntu20.04-py38-cpu",
)


# --- Azure curated names to envkiln's -------------------------------------------------------------------


@dataclass(frozen=True)
class CuratedMatch:
    """What an Azure ML curated name maps to: `target` (None: no family), the family, and each gap."""

    azure: str
    family: str | None
    target: CuratedEnvironment | None
    gaps: tuple[str, ...] = ()
    why_none: str = ""

    def said(self) -> str:
        """One phrase for messages and the docs: the target and the gaps, or why there is none."""
        if self.target is None:
            return f"no envkiln family ({self.why_none})"
        return self.target.name + (f" ({'; '.join(self.gaps)})" if self.gaps else " (the same versions)")


def bare_name(azure: str) -> str:
    """An Azure curated name lowercased, without its `AzureML-` prefix."""
    return re.sub(r"^azureml-", "", azure.strip().lower())


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _family(bare: str) -> str | None:
    words = re.split(r"[-_.@:/]", bare)
    for family, keys in FAMILY_WORDS:
        if any(word.startswith(key) for key in keys for word in words):
            return family
    return None


def _framework_version(bare: str, family: str) -> str | None:
    if family == "python":
        found = re.search(r"(?:python-?|py)3\.?(\d{1,2})(?!\d)", bare)
        return f"3.{found.group(1)}" if found else None
    keys = {"acpt": ("pytorch",)}.get(family) or dict(FAMILY_WORDS)[family]
    for key in keys:
        found = re.search(re.escape(key) + r"[-_]?(\d+(?:\.\d+)*)", bare)
        if found:
            return found.group(1)
    return None


def _python_version(bare: str) -> str | None:
    found = re.search(r"(?:^|[-_])py3\.?(\d{1,2})(?!\d)", bare)
    return f"3.{found.group(1)}" if found else None


FAMILY_TITLES: Final[Mapping[str, str]] = {
    "acpt": "PyTorch", "mlflow": "MLflow", "tensorflow": "TensorFlow", "pytorch": "PyTorch", "lightgbm": "LightGBM",
    "xgboost": "XGBoost", "sklearn": "scikit-learn", "inference": "inference server", "python": "Python"}


def _gap(what: str, azure: str, ours: str) -> str | None:
    """`Azure's LightGBM 3.3, envkiln's 4.5 (a major version newer)`, or None when the versions are the same."""
    a, o = _version_tuple(azure), _version_tuple(ours)
    if a == o:
        return None
    how = ("a major version newer" if o[:1] > a[:1] else "a major version older") if o[:1] != a[:1] else \
        ("newer" if o > a else "older")
    return f"Azure's {what} {azure}, envkiln's {ours} ({how})"


def _distance(azure: tuple[int, ...], ours: tuple[int, ...]) -> tuple[int, int, int]:
    major = abs((azure[:1] or (0,))[0] - (ours[:1] or (0,))[0])
    minor = abs((azure[1:2] or (0,))[0] - (ours[1:2] or (0,))[0])
    return (major, minor, -ours[1] if len(ours) > 1 else 0)  # a tie goes to the newer one


def counterpart(azure: str) -> CuratedMatch:
    """The nearest envkiln curated environment for an Azure ML curated name (`AzureML-lightgbm-3.3`,
    `acpt-pytorch-2.8-cuda12.6`, ...), with the version gaps stated; or none, saying why."""
    bare = bare_name(azure)
    words = re.split(r"[-_.@:/]", bare)
    for key, why in NO_FAMILY.items():
        if any(word.startswith(key) for word in words):
            return CuratedMatch(azure, None, None, why_none=why)
    family = _family(bare)
    if family is None:
        return CuratedMatch(azure, None, None, why_none="not one of the families envkiln curates: "
                            + ", ".join(f for f, _ in FAMILY_WORDS))
    accelerator: Accelerator = "cuda" if re.search(r"cuda|gpu", bare) else "cpu"
    entries = [e for e in CATALOG if e.family == family]
    gaps: list[str] = []
    same = [e for e in entries if e.accelerator == accelerator]
    if not same:
        gaps.append(f"Azure's is {accelerator.upper()}, envkiln's {family} is {entries[0].accelerator.upper()} only")
        same = entries
    wanted = _framework_version(bare, family)
    if wanted:
        target = min(same, key=lambda e: _distance(_version_tuple(wanted), _version_tuple(e.framework)))
        gap = _gap(FAMILY_TITLES[family], wanted, target.framework)
        if gap:
            gaps.insert(0, gap)
    else:
        target = max(same, key=lambda e: _version_tuple(e.framework))
        if family == "python":
            gaps.insert(0, f"Azure's names no Python version, envkiln's newest is {target.framework}")
    python = _python_version(bare)
    if family != "python" and python and target.python and _version_tuple(python) != _version_tuple(target.python):
        gaps.append(_gap("Python", python, target.python) or "")
    return CuratedMatch(azure, family, target, tuple(gaps))


# --- the derived copies: chart template and docs tables ---------------------------------------------------


CHART_HEADER = """\
{{- if .Values.curated.enabled }}
{{- if .Values.curated.createNamespace }}
# Curated environments live in a namespace of their own, not the release namespace (its Secrets).
apiVersion: v1
kind: Namespace
metadata:
  name: {{ include "envkiln.curatedNamespace" . }}
  labels: {{- include "envkiln.labels" . | nindent 4 }}
    envkiln.dev/curated: "true"
---
{{- end }}
# Curated environments (docs/curated-environments.md). GENERATED from operator/envkiln/core/catalog.py:
# edit the catalog there, then `ENVKILN_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_curated_catalog.py`.
"""


class _Dumper(yaml.SafeDumper):
    """Lists indented under their key, as the chart's other templates write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _indented(document: Any, spaces: int) -> str:
    text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=200)
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


def chart_template() -> str:
    """charts/envkiln/templates/curated.yaml, exactly."""
    documents = []
    for entry in CATALOG:
        documents.append(
            "apiVersion: envkiln.dev/v1alpha1\n"
            "kind: Environment\n"
            "metadata:\n"
            f"  name: {entry.name}\n"
            "  namespace: {{ include \"envkiln.curatedNamespace\" . }}\n"
            "  labels: {{- include \"envkiln.labels\" . | nindent 4 }}\n"
            "    envkiln.dev/curated: \"true\"\n"
            "spec:\n" + _indented(dict(entry.spec), 2))
    return CHART_HEADER + "---\n".join(documents) + "{{- end }}\n"


def catalog_table() -> str:
    """The docs' table of curated environments."""
    rows = ["| name | version | kind | contents | stands for (Azure ML) |", "|---|---|---|---|---|"]
    rows += [f"| `{e.name}` | {e.spec.get('version', '1')} | {e.kind} | {e.contents} | {e.stands_for} |"
             for e in CATALOG]
    return "\n".join(rows) + "\n"


def azure_mapping_table() -> str:
    """The docs' table of Azure ML curated names and what the importer maps each to."""
    rows = ["| Azure ML curated name | envkiln curated environment | gap |", "|---|---|---|"]
    for azure in AZURE_EXAMPLES:
        match = counterpart(azure)
        if match.target is None:
            rows.append(f"| `{azure}` | none | no envkiln family: {match.why_none} |")
        else:
            rows.append(f"| `{azure}` | `{match.target.name}` | {'; '.join(match.gaps) or 'none'} |")
    return "\n".join(rows) + "\n"


# The docs file holds the tables between these markers.
DOC_MARKERS: Final = {"catalog": ("<!-- catalog: begin (generated) -->", "<!-- catalog: end -->"),
                      "mapping": ("<!-- mapping: begin (generated) -->", "<!-- mapping: end -->")}


def docs_with_tables(text: str) -> str:
    """The docs text with each generated table replaced by the current one."""
    for key, table in (("catalog", catalog_table()), ("mapping", azure_mapping_table())):
        begin, end = DOC_MARKERS[key]
        head, found, rest = text.partition(begin)
        _, found_end, tail = rest.partition(end)
        if not found or not found_end:
            raise ValueError(f"the docs have no {begin} ... {end} block")
        text = head + begin + "\n" + table + end + tail
    return text
