"""An Environment may not name another namespace's envkiln image (spec.image): the operator would look
it up with its own credential and tell the tenant that namespace's digest. Tables."""

from __future__ import annotations

import pytest

from envkiln.core.definition import envkiln_image_namespace
from envkiln.core.settings import OperatorSettings

H = "0123456789abcdef0123456789abcdef"
TEMPLATE = "{registry}/envkiln/{namespace}/env_{hash}"


@pytest.mark.parametrize(("image", "registries", "template", "owner"), [
    (f"reg:5000/envkiln/team-b/env_{H}:{H}", ["reg:5000"], TEMPLATE, "team-b"),
    (f"reg:5000/envkiln/team-b/env_{H}@sha256:{'a' * 64}", ["reg:5000"], TEMPLATE, "team-b"),
    (f"reg:5000/envkiln/team-b/env_{H}", ["reg:5000"], TEMPLATE, "team-b"),  # no tag
    (f"pull.example/envkiln/team-b/env_{H}:latest", ["reg:5000", "pull.example"], TEMPLATE, "team-b"),
    (f"other:5000/envkiln/team-b/env_{H}:{H}", ["reg:5000"], TEMPLATE, None),  # not envkiln's registry
    ("reg:5000/library/python:3.11", ["reg:5000"], TEMPLATE, None),  # not under the template
    (f"reg:5000/envkiln/team-b/env_nothex:{H}", ["reg:5000"], TEMPLATE, None),
    ("python:3.11-slim", ["reg:5000"], TEMPLATE, None),
    (f"reg:5000/shared/env_{H}:{H}", ["reg:5000"], "{registry}/shared/env_{hash}", None),  # no {namespace}
    (f"reg:5000/ml/team-b/{H}:{H}", ["reg:5000"], "{registry}/ml/{namespace}/{hash}", "team-b"),
])
def test_envkiln_image_namespace(image: str, registries: list[str], template: str, owner: str | None) -> None:
    assert envkiln_image_namespace(image, registries, template) == owner


SETTINGS = OperatorSettings(registry="reg:5000", pull_registry="pull.example", curated_namespace="envkiln-curated",
                            operator_namespace="envkiln-system")


@pytest.mark.parametrize(("image", "namespace", "refused"), [
    (f"reg:5000/envkiln/team-b/env_{H}:{H}", "team-a", True),  # another tenant's image
    (f"pull.example/envkiln/team-b/env_{H}:{H}", "team-a", True),  # the same under the pull name
    (f"reg:5000/envkiln/team-a/env_{H}:{H}", "team-a", False),  # its own
    (f"reg:5000/envkiln/envkiln-curated/env_{H}:{H}", "team-a", False),  # curated images are for everyone
    ("python:3.11-slim", "team-a", False),
    (None, "team-a", False),
])
def test_foreign_image_problem(image: str | None, namespace: str, refused: bool) -> None:
    problem = SETTINGS.foreign_image_problem(image, namespace)
    assert (problem is not None) == refused
    if problem is not None:
        assert problem.startswith("spec.image: ") and "team-b" in problem
