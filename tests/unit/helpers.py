from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from envkiln.core.conditions import get_condition
from envkiln.core.definition import definition_hash, image_name
from envkiln.core.models import Environment, EnvironmentBuildSpec, EnvironmentSpec
from envkiln.core.render import render

PIP_ENV: dict[str, Any] = {
    "apiVersion": "envkiln.dev/v1alpha1",
    "kind": "Environment",
    "metadata": {"name": "py"},
    "spec": {"version": "1", "image": "python:3.11-slim", "pip": ["numpy==2.1.3", "pandas==2.2.3"]},
}

CONDA_ENV: dict[str, Any] = {
    "apiVersion": "envkiln.dev/v1alpha1",
    "kind": "Environment",
    "metadata": {"name": "conda"},
    "spec": {
        "image": "debian:bookworm-slim",
        "dockerSteps": ["RUN apt-get update && apt-get install -y libgomp1", "ENV A=1"],
        "conda": {"channels": ["conda-forge", "defaults"],
                  "dependencies": ["python=3.11", "scikit-learn=1.5", "pip", {"pip": ["mlflow-skinny==2.17.2"]}]},
        "pip": ["six==1.16.0"],
    },
}


def manifest(base: dict[str, Any] = PIP_ENV, **spec_changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for key, value in spec_changes.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


def spec_of(doc: dict[str, Any]) -> EnvironmentSpec:
    return Environment.model_validate(doc).spec


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any]:
    """The condition of a type, which the test expects to be there."""
    found = get_condition(conditions, type_)
    assert found is not None, f"no {type_} condition in {conditions}"
    return found


COMMIT = "0123456789abcdef0123456789abcdef01234567"  # what a git context's ref resolved to
BUILD_REGISTRY = "reg.local:5000"


def build_for(spec: dict[str, Any], context: Mapping[str, str | bytes] | None = None) -> dict[str, Any]:
    """An EnvironmentBuild of the definition `spec` (in namespace ns), as the operator makes one."""
    doc = {**PIP_ENV, "spec": spec}
    value = definition_hash(spec_of(doc), context, commit=COMMIT if "git" in spec.get("build", {}) else None)
    build_spec = EnvironmentBuildSpec(hash=value, image=image_name(value, BUILD_REGISTRY),
                                      plan=render(spec_of(doc), value))
    return {"apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild",
            "metadata": {"name": f"envb-{value}", "namespace": "ns", "uid": "uid-1"}, "spec": build_spec.to_kube()}
