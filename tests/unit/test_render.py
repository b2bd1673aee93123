"""Build rendering: deterministic Dockerfiles, conda via micromamba, pip via uv with a pip fallback."""

from __future__ import annotations

import copy

import pytest

from envkiln.definition import definition_hash
from envkiln.models import buildkit
from envkiln.render import (
    CONDA_PREFIX,
    LABEL_HASH,
    VENV_PREFIX,
    NothingToBuild,
    RenderError,
    RenderSettings,
    check_round_trip,
    render,
)
from helpers import CONDA_ENV, PIP_ENV, manifest, spec_of


def plan_of(doc: dict, settings: RenderSettings | None = None):  # type: ignore[no-untyped-def]
    spec = spec_of(doc)
    return render(spec, definition_hash(spec), settings)


def test_rendering_is_deterministic() -> None:
    first = plan_of(CONDA_ENV)
    again = plan_of(copy.deepcopy(CONDA_ENV))
    assert first.dockerfile.encode() == again.dockerfile.encode()
    assert [(f.path, f.content) for f in first.files] == [(f.path, f.content) for f in again.files]


def test_pip_only_uses_a_venv_and_uv_with_pip_fallback() -> None:
    plan = plan_of(PIP_ENV)
    lines = plan.dockerfile.splitlines()
    assert lines[1] == "FROM python:3.11-slim AS envkiln-base"
    assert "micromamba" not in plan.dockerfile
    # The base image's own Python, its packages visible: `import torch` on a PyTorch base keeps working.
    assert 'base_python="$(command -v python3 || command -v python)"' in plan.dockerfile
    assert f'"$base_python" -m venv --system-site-packages {VENV_PREFIX}' in plan.dockerfile
    assert "uv pip install" in plan.dockerfile and "-m pip install --no-cache-dir" in plan.dockerfile
    assert f"ENV PATH={VENV_PREFIX}/bin:$PATH" in lines
    assert {f.path: f.content for f in plan.files} == {"requirements.txt": "numpy==2.1.3\npandas==2.2.3\n"}
    assert f'{LABEL_HASH}="{definition_hash(spec_of(PIP_ENV))}"' in plan.dockerfile


def test_conda_uses_pinned_micromamba_stage_and_fixed_prefix() -> None:
    plan = plan_of(CONDA_ENV, RenderSettings(micromamba_image="registry.local/micromamba:2.3.3"))
    lines = plan.dockerfile.splitlines()
    assert lines[1] == "FROM debian:bookworm-slim AS envkiln-base"
    assert "FROM registry.local/micromamba:2.3.3 AS envkiln-micromamba" in lines
    assert "COPY --from=envkiln-micromamba /bin/micromamba /usr/local/bin/micromamba" in lines
    assert f"micromamba create --yes --prefix {CONDA_PREFIX}" in plan.dockerfile
    assert f"ENV PATH={CONDA_PREFIX}/bin:$PATH" in lines
    conda_yaml = {f.path: f.content for f in plan.files}["conda.yaml"]
    assert conda_yaml.index("scikit-learn") > conda_yaml.index("python=3.11"), "order kept as written"
    assert "mlflow-skinny==2.17.2" in conda_yaml
    # spec.pip goes into the conda environment's own Python.
    assert f"{CONDA_PREFIX}/bin/python -m pip" in plan.dockerfile
    # As Azure ML sets them for its conda environment; no empty LD_LIBRARY_PATH entry when it was unset.
    assert lines[-1] == (f"ENV CONDA_PREFIX={CONDA_PREFIX} AZUREML_CONDA_ENVIRONMENT_PATH={CONDA_PREFIX} "
                         f"LD_LIBRARY_PATH={CONDA_PREFIX}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}")


@pytest.mark.parametrize(("dependencies", "rendered"), [
    (["python=3.11", {"pip": ["six"]}], ["python=3.11", "pip", {"pip": ["six"]}]),  # conda adds pip; so does envkiln
    (["python=3.11", "pip=24", {"pip": ["six"]}], ["python=3.11", "pip=24", {"pip": ["six"]}]),
    (["python=3.11", {"pip": ["six"]}, "pip"], ["python=3.11", {"pip": ["six"]}, "pip"]),
    (["python=3.11"], ["python=3.11"]),
], ids=["pip-added", "pip-pinned", "pip-after-block", "no-pip-block"])
def test_conda_file_gets_pip_when_a_pip_block_needs_it(dependencies: list, rendered: list) -> None:  # type: ignore[type-arg]
    import yaml

    plan = plan_of(manifest(CONDA_ENV, conda={"dependencies": dependencies}, pip=None))
    conda_yaml = yaml.safe_load({f.path: f.content for f in plan.files}["conda.yaml"])
    assert conda_yaml["dependencies"] == rendered


def test_docker_steps_come_right_after_from_and_before_packages() -> None:
    plan = plan_of(CONDA_ENV)
    text = plan.dockerfile
    assert text.index("FROM debian:bookworm-slim") < text.index("RUN apt-get update") < text.index("ENV A=1")
    assert text.index("ENV A=1") < text.index("micromamba create") < text.index("requirements.txt")


@pytest.mark.parametrize("document", [PIP_ENV, CONDA_ENV, manifest(CONDA_ENV, pip=None)],
                         ids=["pip", "conda", "conda-no-pip"])
def test_installs_run_as_root_in_their_own_stage_and_the_image_keeps_the_bases_user(document: dict) -> None:  # type: ignore[type-arg]
    """A non-root base (or a USER step) is installed into as root; the image is the base stage again, so its
    USER, WORKDIR, ENTRYPOINT and CMD are the base's, with /opt/envkiln copied in."""
    spec = spec_of(manifest(document, dockerSteps=[*(document["spec"].get("dockerSteps") or []), "USER 1000"]))
    instructions = buildkit.parse(render(spec, definition_hash(spec)).dockerfile)
    stages = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    install = next(i for i in stages if instructions[i].value == ("envkiln-base", "AS", "envkiln-install"))
    assert instructions[install + 1].original == "USER 0:0"
    assert [i.keyword for i in instructions[install + 2:stages[-1]]].count("RUN") >= 1
    assert instructions[stages[-1]].value == ("envkiln-base",), "the image is the base stage, its USER kept"
    final = [i.original for i in instructions[stages[-1]:]]
    assert final[1] == "COPY --from=envkiln-install /opt/envkiln /opt/envkiln"
    assert not any(line.startswith(("USER", "RUN")) for line in final), final
    users = [i.original for i in instructions if i.keyword == "USER"]
    assert users == ["USER 1000", "USER 0:0"]


def test_a_definition_without_packages_is_one_stage() -> None:
    plan = plan_of(manifest(pip=None, dockerSteps=["RUN true"]))
    assert [i.keyword for i in buildkit.parse(plan.dockerfile)] == ["FROM", "LABEL", "RUN"]


def test_multiline_docker_step_is_kept_verbatim() -> None:
    plan = plan_of(manifest(dockerSteps=["RUN apt-get update \\\n && apt-get install -y git"]))
    assert "RUN apt-get update \\\n && apt-get install -y git\n" in plan.dockerfile


def test_user_build_context_passes_through() -> None:
    doc = {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "g"},
           "spec": {"build": {"git": {"url": "https://g/r.git", "ref": "v1"}, "dockerfilePath": "docker/Dockerfile"}}}
    plan = plan_of(doc)
    assert plan.dockerfile == "" and plan.files == []
    assert plan.context is not None and plan.context.git is not None
    assert plan.context.dockerfile_path == "docker/Dockerfile"


def test_bring_your_own_container_is_not_built() -> None:
    doc = manifest(pip=None, userManaged=True)
    with pytest.raises(NothingToBuild):
        plan_of(doc)


def test_different_definitions_render_differently() -> None:
    assert plan_of(PIP_ENV).dockerfile != plan_of(manifest(pip=["numpy==2.1.3"])).dockerfile


# --- the rendered Dockerfile reads back, in BuildKit's parser, as exactly what envkiln wrote ---------

@pytest.mark.parametrize("document",
                         [PIP_ENV, CONDA_ENV, manifest(CONDA_ENV, pip=None), manifest(dockerSteps=["RUN true"])],
                         ids=["pip", "conda", "conda-no-pip", "steps"])
def test_rendered_dockerfile_reads_back_in_buildkit(document: dict) -> None:  # type: ignore[type-arg]
    spec = spec_of(document)
    instructions = buildkit.parse(plan_of(document).dockerfile)
    keywords = [i.keyword for i in instructions]
    assert keywords[:2] == ["FROM", "LABEL"]
    steps = [buildkit.parse(step.strip())[0].identity for step in spec.docker_steps or []]
    first = 2
    assert [i.identity for i in instructions[first:first + len(steps)]] == steps
    assert not any(i.heredocs or i.keyword == "ONBUILD" for i in instructions)


# Steps validation refuses; written anyway (validation bypassed), BuildKit reads something else back.
SMUGGLED = {
    "second-instruction": "RUN true\nFROM evil",
    "stage-hijack": "RUN true\nFROM evil AS envkiln-install",  # a stage of envkiln's name, later stages copy it
    "escaped-backslash": "RUN true \\\\\nADD https://evil/x /x",
    "trailing-backslash": "ENV A=1 \\",
    "heredoc": "RUN cat <<EOF",
    "comment": "# escape=`",
    "continuation-into-comment": "RUN a \\\n# x",
}


@pytest.mark.parametrize("step", SMUGGLED.values(), ids=SMUGGLED.keys())
def test_render_refuses_a_dockerfile_that_does_not_read_back(step: str) -> None:
    spec = spec_of(PIP_ENV).model_copy(update={"docker_steps": ["ENV A=1", step]})
    with pytest.raises(RenderError, match=r"internal error: .*nothing was built"):
        render(spec, "0" * 32)


def test_round_trip_check_compares_whole_instructions() -> None:
    check_round_trip("# c\nFROM x\nRUN a \\\n b\n", ["FROM x", "RUN a \\\n b"])
    with pytest.raises(RenderError, match="parses into 2 instructions where envkiln wrote 3"):
        check_round_trip("FROM x\nRUN a \\\nENV B=1\n", ["FROM x", "RUN a \\", "ENV B=1"])
    with pytest.raises(RenderError, match=r"instruction 2 that envkiln wrote .* parses into 2 instructions"):
        check_round_trip("FROM x\nRUN a\nRUN b\n", ["FROM x", "RUN a\nRUN b"])
    with pytest.raises(RenderError, match=r"differing from instruction 2 \('RUN b'\)"):
        check_round_trip("FROM x\nRUN a\n", ["FROM x", "RUN b"])
    with pytest.raises(RenderError, match="BuildKit cannot parse the rendered Dockerfile"):
        check_round_trip("FROM x\nRUN <<EOF\n", ["FROM x"])
