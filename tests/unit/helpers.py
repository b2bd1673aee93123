from __future__ import annotations

import copy
from typing import Any

from envkiln.core.conditions import get_condition
from envkiln.core.models import Environment, EnvironmentSpec

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
