"""Build rendering: deterministic Dockerfiles, conda via micromamba, pip via uv with a pip fallback."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envkiln.core.definition import definition_hash
from envkiln.core.locks import LOCK_HEADER, LOCK_SCRIPT, LOCK_SCRIPT_NAME, format_lock, parse_lock
from envkiln.core.models import BuildPlan, buildkit
from envkiln.core.names import IMAGE_LABEL_BASE_DIGEST, LOCK_FILE
from envkiln.core.names import IMAGE_LABEL_HASH as LABEL_HASH
from envkiln.core.render import (
    CONDA_PREFIX,
    VENV_PREFIX,
    VENV_SCRIPT,
    VENV_SCRIPT_NAME,
    InvalidLock,
    NothingToBuild,
    RenderError,
    RenderSettings,
    _conda_lock_in_shell,
    base_reference,
    check_round_trip,
    render,
)
from helpers import CONDA_ENV, PIP_ENV, manifest, spec_of


def plan_of(doc: dict[str, Any], settings: RenderSettings | None = None) -> BuildPlan:
    spec = spec_of(doc)
    commit = "0" * 40 if spec.build is not None and spec.build.git is not None else None  # the ref, resolved
    return render(spec, definition_hash(spec, commit=commit), settings)


def test_rendering_is_deterministic() -> None:
    first = plan_of(CONDA_ENV)
    again = plan_of(copy.deepcopy(CONDA_ENV))
    assert first.dockerfile.encode() == again.dockerfile.encode()
    assert [(f.path, f.content) for f in first.files] == [(f.path, f.content) for f in again.files]


def test_pip_only_uses_a_venv_and_uv_from_its_image_never_pip_installed() -> None:
    plan = plan_of(PIP_ENV)
    lines = plan.dockerfile.splitlines()
    assert lines[1] == "FROM python:3.11-slim AS envkiln-base"
    assert "micromamba" not in plan.dockerfile
    # The base image's own Python, its packages visible: `import torch` on a PyTorch base keeps working.
    assert 'base_python="$(command -v python3 || command -v python)"' in plan.dockerfile
    # Made without pip; uv installs the pip and setuptools wheels ensurepip would have (render.SEED_PIP).
    assert f'"$base_python" -m venv --without-pip --system-site-packages {VENV_PREFIX}' in plan.dockerfile
    assert f"{VENV_PREFIX}/bin/python /tmp/envkiln/envkiln_venv.py /tmp/envkiln/uv" in plan.dockerfile
    assert "COPY envkiln_venv.py /tmp/envkiln/envkiln_venv.py" in lines
    assert "uv pip install" in plan.dockerfile and "pip install uv" not in plan.dockerfile
    assert "-m pip install" not in plan.dockerfile  # no fallback: a failing install fails the build
    assert "COPY --from=ghcr.io/astral-sh/uv:0.9.18 /uv /tmp/envkiln/uv" in lines  # the discarded install stage
    without_uv = plan_of(PIP_ENV, RenderSettings(uv_image=None)).dockerfile
    assert "uv" not in without_uv.replace("--uv", "") and "-m pip install --no-cache-dir" in without_uv
    assert f'"$base_python" -m venv --system-site-packages {VENV_PREFIX}' in without_uv
    assert f"ENV PATH={VENV_PREFIX}/bin:$PATH" in lines
    assert {f.path: f.content for f in plan.files} == {"requirements.txt": "numpy==2.1.3\npandas==2.2.3\n",
                                                       LOCK_SCRIPT_NAME: LOCK_SCRIPT, VENV_SCRIPT_NAME: VENV_SCRIPT}
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
    assert lines[-3] == (f"ENV CONDA_PREFIX={CONDA_PREFIX} AZUREML_CONDA_ENVIRONMENT_PATH={CONDA_PREFIX} "
                         f"LD_LIBRARY_PATH={CONDA_PREFIX}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}")
    assert lines[-2] == "FROM envkiln-image"
    assert lines[-1] == "COPY --from=envkiln-install /envkiln-lock/envkiln-lock.txt /opt/envkiln/envkiln-lock.txt"


@pytest.mark.parametrize(("dependencies", "rendered"), [
    (["python=3.11", {"pip": ["six"]}], ["python=3.11", "pip", {"pip": ["six"]}]),  # conda adds pip; so does envkiln
    (["python=3.11", "pip=24", {"pip": ["six"]}], ["python=3.11", "pip=24", {"pip": ["six"]}]),
    (["python=3.11", {"pip": ["six"]}, "pip"], ["python=3.11", {"pip": ["six"]}, "pip"]),
    (["python=3.11"], ["python=3.11"]),
], ids=["pip-added", "pip-pinned", "pip-after-block", "no-pip-block"])
def test_conda_file_gets_pip_when_a_pip_block_needs_it(dependencies: list[Any], rendered: list[Any]) -> None:
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
def test_installs_run_as_root_in_their_own_stage_and_the_image_keeps_the_bases_user(document: dict[str, Any]) -> None:
    """A non-root base (or a USER step) is installed into as root; the image is the base stage again, so its
    USER, WORKDIR, ENTRYPOINT and CMD are the base's, with /opt/envkiln copied in (then the lock, in a
    stage of its own)."""
    spec = spec_of(manifest(document, dockerSteps=[*(document["spec"].get("dockerSteps") or []), "USER 1000"]))
    instructions = buildkit.parse(render(spec, definition_hash(spec)).dockerfile)
    stages = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    install = next(i for i in stages if instructions[i].value == ("envkiln-base", "AS", "envkiln-install"))
    assert instructions[install + 1].original == "USER 0:0"
    assert [i.keyword for i in instructions[install + 2:stages[-2]]].count("RUN") >= 1
    assert instructions[stages[-2]].value == ("envkiln-base", "AS", "envkiln-image"), "the base stage, its USER kept"
    assert instructions[stages[-1]].value == ("envkiln-image",)
    final = [i.original for i in instructions[stages[-2]:]]
    assert final[1] == "COPY --from=envkiln-install /opt/envkiln /opt/envkiln"
    assert final[-2:] == ["FROM envkiln-image", LOCK_COPY], "the lock alone in a last stage: one layer"
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
    plan = render(spec_of(doc), "0" * 32)  # a git ref is hashed once resolved; the render needs no hash
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
def test_rendered_dockerfile_reads_back_in_buildkit(document: dict[str, Any]) -> None:
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


# --- the base image pinned by digest ---------------------------------------------------------------

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def test_the_names_the_operator_reads_are_the_ones_rendered() -> None:
    """render takes these from envkiln.core.names (the tests below read the rendered lines with them)."""
    assert LOCK_FILE == "/opt/envkiln/envkiln-lock.txt"
    assert IMAGE_LABEL_BASE_DIGEST == "org.opencontainers.image.base.digest"


@pytest.mark.parametrize(("image", "base_digest", "expected"), [
    ("python:3.11-slim", DIGEST, (f"python@{DIGEST}", DIGEST)),
    ("python", DIGEST, (f"python@{DIGEST}", DIGEST)),
    ("registry.local:5000/team/py:3.11", DIGEST, (f"registry.local:5000/team/py@{DIGEST}", DIGEST)),
    ("docker.io/library/python:3.11", DIGEST, (f"docker.io/library/python@{DIGEST}", DIGEST)),
    ("localhost/py:1", DIGEST, (f"localhost/py@{DIGEST}", DIGEST)),
    (f"python:3.11@{OTHER}", DIGEST, (f"python:3.11@{OTHER}", OTHER)),  # written with a digest: as written
    (f"python@{OTHER}", None, (f"python@{OTHER}", OTHER)),
    ("python:3.11-slim", None, ("python:3.11-slim", None)),
], ids=["tag", "no-tag", "registry-port", "docker-hub-host", "localhost", "image-digest-wins", "image-digest-only",
        "no-digest"])
def test_base_reference(image: str, base_digest: str | None, expected: tuple[str, str | None]) -> None:
    assert base_reference(image, base_digest) == expected


@pytest.mark.parametrize("document", [PIP_ENV, CONDA_ENV, manifest(pip=None, dockerSteps=["RUN true"])],
                         ids=["pip", "conda", "steps-only"])
def test_the_base_stage_is_from_the_digest_and_labelled_with_it(document: dict[str, Any]) -> None:
    spec = spec_of(document)
    assert spec.image is not None
    plan = render(spec, "0" * 32, base_digest=DIGEST)
    lines = plan.dockerfile.splitlines()
    repository = spec.image.rsplit(":", 1)[0]
    assert lines[1] == f"FROM {repository}@{DIGEST} AS envkiln-base"
    assert lines[2] == (f'LABEL {LABEL_HASH}="{"0" * 32}" org.opencontainers.image.base.name="{spec.image}" '
                        f'{IMAGE_LABEL_BASE_DIGEST}="{DIGEST}"')
    unpinned = render(spec, "0" * 32).dockerfile.splitlines()
    assert unpinned[1] == f"FROM {spec.image} AS envkiln-base" and IMAGE_LABEL_BASE_DIGEST not in unpinned[2]
    assert lines[3:] == unpinned[3:], "only the FROM and the label change"


def test_an_image_written_with_a_digest_is_used_as_written_and_labelled() -> None:
    image = f"registry.local/py:3.11@{OTHER}"
    spec = spec_of(manifest(image=image))
    for base_digest in (None, OTHER):
        lines = render(spec, "0" * 32, base_digest=base_digest).dockerfile.splitlines()
        assert lines[1] == f"FROM {image} AS envkiln-base"
        assert lines[2].endswith(f'org.opencontainers.image.base.name="{image}" {IMAGE_LABEL_BASE_DIGEST}="{OTHER}"')


@pytest.mark.parametrize("digest", ["sha256:abc", "sha256:" + "A" * 64, f"{DIGEST}\nRUN evil", "latest"])
def test_a_base_digest_that_is_not_one_is_refused(digest: str) -> None:
    with pytest.raises(RenderError, match=r"internal error: the base image digest .* is not a digest"):
        render(spec_of(PIP_ENV), "0" * 32, base_digest=digest)


# --- the lock: written by the install stage, the image's last layer ---------------------------------

LOCK_COPY = f"COPY --from=envkiln-install /envkiln-lock/envkiln-lock.txt {LOCK_FILE}"


@pytest.mark.parametrize("document", [PIP_ENV, CONDA_ENV, manifest(CONDA_ENV, pip=None),
                                      manifest(CONDA_ENV, pip=None, conda={"dependencies": ["nodejs"]})],
                         ids=["pip", "conda-and-pip", "conda-with-pip-block", "conda-only"])
def test_the_lock_is_written_in_the_install_stage_and_copied_last(document: dict[str, Any]) -> None:
    spec = spec_of(document)
    plan = render(spec, "0" * 32)
    instructions = buildkit.parse(plan.dockerfile)
    assert instructions[-1].original == LOCK_COPY, "the last layer holds the lock alone"
    from_install = [i.original for i in instructions if i.keyword == "COPY" and "--from=envkiln-install" in i.original]
    assert from_install == ["COPY --from=envkiln-install /opt/envkiln /opt/envkiln", LOCK_COPY]
    files = {f.path: f.content for f in plan.files}
    assert files[LOCK_SCRIPT_NAME] == LOCK_SCRIPT
    run = [i.original for i in instructions if i.keyword == "RUN" and "envkiln_lock.py write" in i.original]
    assert len(run) == 1 and run[0].endswith("&& rm -rf /tmp/envkiln")
    assert "/envkiln-lock/envkiln-lock.txt" in run[0]
    pip = spec.pip is not None or "pip" in str(spec.conda)
    assert (" --pip --uv /tmp/envkiln/uv" in run[0]) == pip
    assert (" --conda /tmp/envkiln/conda-explicit.txt" in run[0]) == (spec.conda is not None)
    if spec.conda is not None:
        assert ("micromamba env export --prefix /opt/envkiln/conda --explicit --md5 > /tmp/envkiln/conda-explicit.txt"
                in plan.dockerfile)
    # The script is copied after the installs: a new envkiln's script reuses their cached layers.
    keywords = [i.original.split()[0] + " " + i.original.split()[1] for i in instructions]
    assert keywords.index(f"COPY {LOCK_SCRIPT_NAME}") > max(
        n for n, i in enumerate(instructions) if i.keyword == "RUN" and "install" in i.original)


def test_a_definition_without_packages_writes_no_lock() -> None:
    plan = render(spec_of(manifest(pip=None, dockerSteps=["RUN true"])), "0" * 32, base_digest=DIGEST)
    assert "envkiln-lock" not in plan.dockerfile and plan.files == []


def test_a_conda_environment_without_python_writes_its_lock_with_the_base_python_or_the_shell() -> None:
    plan = render(spec_of(manifest(CONDA_ENV, pip=None, conda={"dependencies": ["nodejs"]})), "0" * 32)
    (run,) = [i.original for i in buildkit.parse(plan.dockerfile) if "envkiln_lock.py write" in i.original]
    assert run.startswith(f'RUN if lock_python="$(command -v {CONDA_PREFIX}/bin/python || command -v python3)"; then')
    assert "grep -E" in run and "LC_ALL=C sort -u" in run


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize("pinned", [False, True], ids=["write", "pinned"])
def test_the_shell_writes_the_conda_lock_as_the_script_does(tmp_path: Path, pinned: bool) -> None:
    """Without any Python in the image, the shell writes the same [conda] section the script would."""
    cf = "https://conda.anaconda.org/conda-forge"
    urls = [f"{cf}/noarch/tzdata-2024a-h0c530f3_0.conda#" + "1" * 32, f"{cf}/linux-64/nodejs-22.9.0-hf235a45_0.conda",
            f"{cf}/linux-64/_libgcc_mutex-0.1-conda_forge.tar.bz2#" + "2" * 32]
    staging = tmp_path / "tmp" / "envkiln"
    staging.mkdir(parents=True)
    # As micromamba exports it: comments, @EXPLICIT, a package without a hash ('#' alone), a stray blank.
    exported = [*urls, f"{cf}/linux-64/zlib-1.3.1-hb9d3cd8_2.conda# "]
    (staging / "conda-explicit.txt").write_text("# platform: linux-64\n@EXPLICIT\n" + "\n".join(exported) + "\n")
    (staging / "conda-lock.txt").write_text("@EXPLICIT\n" + "\n".join(sorted(urls)[:2]) + "\n")
    command = re.sub(r"(?<![\w/])/(envkiln-lock|tmp/envkiln)", lambda m: f"{tmp_path}/{m.group(1)}",
                     _conda_lock_in_shell(pinned))
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, check=False)
    text = (tmp_path / "envkiln-lock" / "envkiln-lock.txt").read_text()
    listed = sorted([*urls, f"{cf}/linux-64/zlib-1.3.1-hb9d3cd8_2.conda"])
    assert text == f"{LOCK_HEADER}\n[conda]\n@EXPLICIT\n" + "\n".join(listed) + "\n"
    assert format_lock(parse_lock(text)) == text
    script = tmp_path / LOCK_SCRIPT_NAME
    script.write_text(LOCK_SCRIPT)
    by_script = tmp_path / "by-script.txt"
    subprocess.run([sys.executable, str(script), "write", str(by_script), "--conda",
                    str(staging / "conda-explicit.txt")], capture_output=True, timeout=30, check=True)
    assert by_script.read_text() == text
    if pinned:  # the pinned file lacks one package: the build fails and shows it
        assert done.returncode == 1 and "did not reproduce spec.lock" in done.stderr and "tzdata-2024a" in done.stderr
    else:
        assert done.returncode == 0, done.stderr


# --- a definition pinned to a lock (spec.lock) ------------------------------------------------------

CF = "https://conda.anaconda.org/conda-forge"
PIP_LOCK_TEXT = f"{LOCK_HEADER}\n[pip]\nNumPy==2.1.3\npandas==2.2.3\npip==24.0\n"
CONDA_LOCK_TEXT = (f"{LOCK_HEADER}\n[conda]\n@EXPLICIT\n"
                   f"{CF}/linux-64/python-3.11.9-hb806964_0_cpython.conda#" + "0" * 32
                   + f"\n{CF}/noarch/pip-24.2-pyh8b19718_1.conda\n[pip]\nmlflow-skinny==2.17.2\nsix==1.16.0\n")


def test_a_pinned_pip_definition_installs_the_lock_without_dependencies() -> None:
    spec = spec_of(manifest(pip=["--index-url https://idx/simple", "numpy==2.1.3", "pandas==2.2.3"],
                            lock=PIP_LOCK_TEXT))
    plan = render(spec, "0" * 32, base_digest=DIGEST)
    files = {f.path: f.content for f in plan.files}
    assert set(files) == {"pip-lock.txt", LOCK_SCRIPT_NAME, VENV_SCRIPT_NAME}, (
        "the definition's requirements are not installed")
    assert files["pip-lock.txt"] == "--index-url https://idx/simple\nnumpy==2.1.3\npandas==2.2.3\npip==24.0\n"
    text = plan.dockerfile
    assert "COPY pip-lock.txt /tmp/envkiln/pip-lock.txt" in text and "requirements.txt" not in text
    assert (f"{VENV_PREFIX}/bin/python /tmp/envkiln/envkiln_lock.py pip-install-list /tmp/envkiln/pip-lock.txt "
            "/tmp/envkiln/pip-install.txt") in text
    assert "if [ -f /tmp/envkiln/pip-install.txt ]; then" in text
    assert f"uv pip install --no-cache --no-deps --python {VENV_PREFIX}/bin/python " \
           "--requirement /tmp/envkiln/pip-install.txt" in text
    assert "-m pip install" not in text  # uv only: no pip fallback
    without_uv = render(spec, "0" * 32, RenderSettings(uv_image=None), base_digest=DIGEST).dockerfile
    assert "-m pip install --no-cache-dir --disable-pip-version-check --no-deps " \
           "--requirement /tmp/envkiln/pip-install.txt" in without_uv and "uv" not in without_uv.replace("--uv", "")
    assert "write /envkiln-lock/envkiln-lock.txt --pip --uv /tmp/envkiln/uv --pinned-pip " \
           "/tmp/envkiln/pip-lock.txt" in text
    assert text.splitlines()[-1] == LOCK_COPY


def test_a_pinned_conda_definition_installs_the_explicit_file() -> None:
    spec = spec_of(manifest(CONDA_ENV, lock=CONDA_LOCK_TEXT))
    plan = render(spec, "0" * 32)
    files = {f.path: f.content for f in plan.files}
    assert set(files) == {"conda-lock.txt", "pip-lock.txt", LOCK_SCRIPT_NAME}
    assert files["conda-lock.txt"] == ("@EXPLICIT\n" + f"{CF}/linux-64/python-3.11.9-hb806964_0_cpython.conda#"
                                       + "0" * 32 + f"\n{CF}/noarch/pip-24.2-pyh8b19718_1.conda\n")
    assert files["pip-lock.txt"] == "mlflow-skinny==2.17.2\nsix==1.16.0\n"
    text = plan.dockerfile
    assert (f"micromamba create --yes --prefix {CONDA_PREFIX} --file /tmp/envkiln/conda-lock.txt") in text
    assert "conda.yaml" not in text
    assert f"RUN {CONDA_PREFIX}/bin/python -m pip --version >/dev/null \\\n && {CONDA_PREFIX}/bin/python " in text
    assert ("--conda /tmp/envkiln/conda-explicit.txt --pip --uv /tmp/envkiln/uv "
            "--pinned-conda /tmp/envkiln/conda-lock.txt --pinned-pip /tmp/envkiln/pip-lock.txt") in text


def test_a_pinned_conda_only_definition_compares_in_the_shell_without_python() -> None:
    lock = CONDA_LOCK_TEXT.split("[pip]")[0]
    plan = render(spec_of(manifest(CONDA_ENV, pip=None, conda={"dependencies": ["python=3.11"]}, lock=lock)), "0" * 32)
    assert {f.path for f in plan.files} == {"conda-lock.txt", LOCK_SCRIPT_NAME}
    assert "--pinned-conda /tmp/envkiln/conda-lock.txt;" in plan.dockerfile
    assert "cmp -s /tmp/envkiln/conda-pinned.txt /tmp/envkiln/conda-built.txt" in plan.dockerfile


@pytest.mark.parametrize(("document", "message"), [
    (manifest(lock="numpy==2.1.3\n"), r"spec.lock: line 1: a lock starts with the line '# envkiln lock v1'"),
    (manifest(lock=f"{LOCK_HEADER}\n[pip]\nnumpy>=2\n"), r"spec.lock: line 3: 'numpy>=2' is not a pinned pip package"),
    (manifest(lock=CONDA_LOCK_TEXT), r"spec.lock has a \[conda\] section, but the definition has no spec.conda"),
    (manifest(lock=f"{LOCK_HEADER}\n"), r"spec.lock has no \[pip\] section, but the definition installs pip packages"),
    (manifest(CONDA_ENV, lock=PIP_LOCK_TEXT), r"spec.lock has no \[conda\] section, but the definition installs "
                                              r"spec.conda"),
    (manifest(CONDA_ENV, lock=CONDA_LOCK_TEXT.split("[pip]")[0]), r"no \[pip\] section"),
], ids=["no-header", "not-pinned", "conda-for-pip-only", "no-pip", "no-conda", "conda-pip-block-without-pip"])
def test_a_lock_that_does_not_fit_is_refused(document: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidLock, match=message):
        render(spec_of(document), "0" * 32)


PINNED_AND_DIGEST = {
    "pip": (manifest(lock=PIP_LOCK_TEXT), DIGEST),
    "conda": (manifest(CONDA_ENV, lock=CONDA_LOCK_TEXT), DIGEST),
    "conda-only": (manifest(CONDA_ENV, pip=None, conda={"dependencies": ["python"]},
                            lock=CONDA_LOCK_TEXT.split("[pip]")[0]), None),
    "image-digest": (manifest(CONDA_ENV, image=f"debian@{OTHER}"), DIGEST),
}


@pytest.mark.parametrize(("document", "base_digest"), PINNED_AND_DIGEST.values(), ids=PINNED_AND_DIGEST.keys())
def test_pinned_renders_read_back_and_are_deterministic(document: dict[str, Any], base_digest: str | None) -> None:
    spec = spec_of(document)
    plan = render(spec, definition_hash(spec), base_digest=base_digest)
    again = render(spec_of(copy.deepcopy(document)), definition_hash(spec), base_digest=base_digest)
    assert plan.dockerfile.encode() == again.dockerfile.encode()
    assert [(f.path, f.content) for f in plan.files] == [(f.path, f.content) for f in again.files]
    instructions = buildkit.parse(plan.dockerfile)
    check_round_trip(plan.dockerfile, [i.original for i in instructions])
    assert not any(i.heredocs or i.keyword == "ONBUILD" for i in instructions)
    assert instructions[-1].original == LOCK_COPY
    stages = [i.value for i in instructions if i.keyword == "FROM"]
    assert stages[-3:] == [("envkiln-base", "AS", "envkiln-install"), ("envkiln-base", "AS", "envkiln-image"),
                           ("envkiln-image",)]


# --- golden renders: the Dockerfile and files, byte for byte -----------------------------------------
# tests/unit/golden/render/<case>.txt were written once from the render before its stages were split
# (issue #21); any change to what a definition renders changes its image, so it must show up here.
# ENVKILN_UPDATE_GOLDEN=1 rewrites them, for a change of the render that is meant.

GOLDEN = Path(__file__).parent / "golden" / "render"
STEPS = ["RUN apt-get update && apt-get install -y git", "USER 1000", "WORKDIR /work"]
PIP_OPTIONS = ["--index-url https://idx/simple", "--extra-index-url https://extra/simple", "numpy==2.1.3",
               " pandas==2.2.3 ", "--index-url https://idx/simple"]
CONDA_NO_PIP = {"channels": ["conda-forge"], "dependencies": ["nodejs=22", "zlib"]}
CONDA_PIP_BLOCK = {"channels": ["conda-forge"],
                   "dependencies": ["python=3.11", {"pip": ["--index-url https://idx/simple", "six==1.16.0"]}]}
CONDA_ONLY_LOCK = CONDA_LOCK_TEXT.split("[pip]")[0]
GOLDEN_CASES: dict[str, tuple[dict[str, Any], str | None, RenderSettings | None]] = {
    "pip-only": (PIP_ENV, None, None),
    "pip-only-digest": (PIP_ENV, DIGEST, None),
    "pip-options-steps": (manifest(pip=PIP_OPTIONS, dockerSteps=STEPS), None, None),
    "pip-multiline-step": (manifest(dockerSteps=["RUN apt-get update \\\n && apt-get install -y git"]), None, None),
    "conda-only": (manifest(CONDA_ENV, pip=None, conda=CONDA_NO_PIP), None, None),
    "conda-only-digest-steps": (manifest(CONDA_ENV, pip=None, conda=CONDA_NO_PIP, dockerSteps=STEPS), DIGEST, None),
    "conda-pip-block": (manifest(CONDA_ENV, pip=None, conda=CONDA_PIP_BLOCK), None, None),
    "conda-and-pip": (CONDA_ENV, None, None),
    "conda-and-pip-digest": (CONDA_ENV, DIGEST, None),
    "conda-and-pip-settings": (CONDA_ENV, None, RenderSettings(micromamba_image="registry.local/mm:2",
                                                               uv_image="registry.local/uv:1")),
    "pip-without-uv": (PIP_ENV, DIGEST, RenderSettings(uv_image=None)),
    "image-with-digest": (manifest(CONDA_ENV, image=f"debian@{OTHER}"), DIGEST, None),
    "pinned-pip": (manifest(lock=PIP_LOCK_TEXT), None, None),
    "pinned-pip-options-digest": (manifest(pip=PIP_OPTIONS, lock=PIP_LOCK_TEXT, dockerSteps=STEPS), DIGEST, None),
    "pinned-conda-and-pip": (manifest(CONDA_ENV, lock=CONDA_LOCK_TEXT), None, None),
    "pinned-conda-and-pip-digest": (manifest(CONDA_ENV, lock=CONDA_LOCK_TEXT), DIGEST, None),
    "pinned-conda-pip-block": (manifest(CONDA_ENV, pip=None, conda=CONDA_PIP_BLOCK, lock=CONDA_LOCK_TEXT), None, None),
    "pinned-conda-only": (manifest(CONDA_ENV, pip=None, conda=CONDA_NO_PIP, lock=CONDA_ONLY_LOCK), None, None),
    "pinned-conda-only-lock-with-pip": (manifest(CONDA_ENV, pip=None, conda=CONDA_NO_PIP, lock=CONDA_LOCK_TEXT),
                                        None, None),
    "no-packages": (manifest(pip=None, dockerSteps=["RUN true"]), None, None),
    "no-packages-steps-digest": (manifest(pip=None, dockerSteps=STEPS), DIGEST, None),
}
MOUNTS = RenderSettings(tool_mounts=True)
# One stage (a builder that mounts tools, the base image's user known): (definition, digest, settings, base user).
ONE_STAGE_CASES: dict[str, tuple[dict[str, Any], str | None, RenderSettings | None, str | None]] = {
    "one-stage-pip-root-base": (PIP_ENV, DIGEST, MOUNTS, ""),
    "one-stage-pip-user-base-steps": (manifest(pip=PIP_OPTIONS, dockerSteps=STEPS), DIGEST, MOUNTS, "1000"),
    "one-stage-conda-and-pip-user-base": (CONDA_ENV, DIGEST, MOUNTS, "jovyan"),
    "one-stage-pinned-conda-and-pip": (manifest(CONDA_ENV, lock=CONDA_LOCK_TEXT), DIGEST, MOUNTS, ""),
    "one-stage-no-packages": (manifest(pip=None, dockerSteps=STEPS), DIGEST, MOUNTS, "1000"),
    "one-stage-pip-without-uv": (PIP_ENV, DIGEST, RenderSettings(tool_mounts=True, uv_image=None), "app"),
    "tools-mounted-base-user-unknown": (PIP_ENV, DIGEST, MOUNTS, None),
}


def golden_text(spec_document: dict[str, Any], base_digest: str | None, settings: RenderSettings | None,
                base_user: str | None = None) -> str:
    """The plan as one text: the Dockerfile, then each file in order, each headed by its length (so the
    text reads back unambiguously). The lock script is envkiln.core.locks' own: named, not copied."""
    plan = render(spec_of(spec_document), "0" * 32, settings, base_digest=base_digest, base_user=base_user)
    parts = [f"=== Dockerfile ({len(plan.dockerfile)} chars)\n{plan.dockerfile}"]
    for file in plan.files:
        content = "<envkiln.core.locks.LOCK_SCRIPT>\n" if file.content == LOCK_SCRIPT else file.content
        parts.append(f"=== file {file.path} ({len(content)} chars)\n{content}")
    return "".join(parts)


@pytest.mark.parametrize("case", [*GOLDEN_CASES, *ONE_STAGE_CASES])
def test_the_render_is_the_golden_one(case: str) -> None:
    text = golden_text(*GOLDEN_CASES[case]) if case in GOLDEN_CASES else golden_text(*ONE_STAGE_CASES[case])
    path = GOLDEN / f"{case}.txt"
    if os.environ.get("ENVKILN_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    assert path.read_bytes().decode() == text
