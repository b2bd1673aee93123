"""The render's parts (envkiln.core.render), each a pure function of the definition: a table per part,
input definition -> the Dockerfile lines and context files it contributes. The whole render, byte for
byte, is pinned by the golden test in test_render.py."""

from __future__ import annotations

import re
from typing import Any

import pytest

from envkiln.core.locks import LOCK_HEADER, LOCK_SCRIPT, LOCK_SCRIPT_NAME, Lock, parse_lock
from envkiln.core.models import ContextFile
from envkiln.core.names import lock_tag
from envkiln.core.render import (
    _LOCK_LAYER_PART,
    CONDA_PREFIX,
    UV_CONFIG_FROM_PIP,
    VENV_PREFIX,
    VENV_SCRIPT,
    VENV_SCRIPT_NAME,
    LockLocation,
    Part,
    RenderSettings,
    _base_part,
    _conda_part,
    _image_part,
    _install_from_part,
    _joined,
    _lock_write_command,
    _lock_write_part,
    _pip_part,
    _prepare_python,
    _python,
    final_user,
    lock_location,
    render,
)
from helpers import CONDA_ENV, PIP_ENV, manifest, spec_of

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
HASH = "0" * 32
LABEL = f'LABEL dev.envkiln.definition-hash="{HASH}" org.opencontainers.image.base.name='
CF = "https://conda.anaconda.org/conda-forge"
PYTHON_URL = f"{CF}/linux-64/python-3.11.9-hb806964_0_cpython.conda#" + "0" * 32
CONDA_LOCK = f"{LOCK_HEADER}\n[conda]\n@EXPLICIT\n{PYTHON_URL}\n"
PIP_LOCK = f"{LOCK_HEADER}\n[pip]\nnumpy==2.1.3\nsix==1.16.0\n"
BOTH_LOCK = CONDA_LOCK + "[pip]\nsix==1.16.0\n"
SCRIPT = ContextFile(path=LOCK_SCRIPT_NAME, content=LOCK_SCRIPT)
SCRIPT_COPY = f"COPY {LOCK_SCRIPT_NAME} /tmp/envkiln/{LOCK_SCRIPT_NAME}"
VENV_FILE = ContextFile(path=VENV_SCRIPT_NAME, content=VENV_SCRIPT)
VENV_COPY = f"COPY {VENV_SCRIPT_NAME} /tmp/envkiln/{VENV_SCRIPT_NAME}"
CONDA_ONLY = manifest(CONDA_ENV, pip=None, dockerSteps=None, conda={"dependencies": ["nodejs"]})
CONDA_PIP_BLOCK = manifest(CONDA_ENV, pip=None,
                           conda={"dependencies": ["python", {"pip": ["--index-url https://i", "six"]}]})
MAMBA = "MAMBA_ROOT_PREFIX=/tmp/envkiln/mamba micromamba"
MAMBA_AT = "MAMBA_ROOT_PREFIX=/tmp/envkiln/mamba /usr/local/bin/micromamba"


def lock(text: str | None) -> Lock | None:
    return None if text is None else parse_lock(text)


@pytest.mark.parametrize(("document", "base_digest", "lines"), [
    (PIP_ENV, None, ["FROM python:3.11-slim AS envkiln-base", LABEL + '"python:3.11-slim"']),
    (PIP_ENV, DIGEST, [f"FROM python@{DIGEST} AS envkiln-base",
                       LABEL + f'"python:3.11-slim" org.opencontainers.image.base.digest="{DIGEST}"']),
    (manifest(image=f"r.io/py:1@{OTHER}"), DIGEST,
     [f"FROM r.io/py:1@{OTHER} AS envkiln-base",
      LABEL + f'"r.io/py:1@{OTHER}" org.opencontainers.image.base.digest="{OTHER}"']),
    (CONDA_ENV, None, ["FROM debian:bookworm-slim AS envkiln-base", LABEL + '"debian:bookworm-slim"',
                       "RUN apt-get update && apt-get install -y libgomp1", "ENV A=1"]),
    (manifest(dockerSteps=["  RUN a \\\n && b  ", "USER 1000"]), None,
     ["FROM python:3.11-slim AS envkiln-base", LABEL + '"python:3.11-slim"', "RUN a \\\n && b", "USER 1000"]),
], ids=["tag", "tag-at-digest", "image-digest-wins", "docker-steps", "steps-stripped"])
def test_base_part(document: dict[str, Any], base_digest: str | None, lines: list[str]) -> None:
    assert _base_part(spec_of(document), HASH, base_digest) == Part(lines=tuple(lines))


UV_COPY = "COPY --from=ghcr.io/astral-sh/uv:0.9.18 /uv /tmp/envkiln/uv"


@pytest.mark.parametrize(("document", "settings", "lines"), [
    (PIP_ENV, RenderSettings(), ["FROM envkiln-base AS envkiln-install", "USER 0:0", UV_COPY]),
    (PIP_ENV, RenderSettings(uv_image=None), ["FROM envkiln-base AS envkiln-install", "USER 0:0"]),
    (CONDA_ENV, RenderSettings(), ["FROM docker.io/mambaorg/micromamba:2.3.3 AS envkiln-micromamba",
                                   "FROM envkiln-base AS envkiln-install", "USER 0:0", UV_COPY]),
    (CONDA_ONLY, RenderSettings(micromamba_image="r.local/mm:9", uv_image="r.local/uv:1"),
     ["FROM r.local/mm:9 AS envkiln-micromamba", "FROM envkiln-base AS envkiln-install", "USER 0:0"]),
    (CONDA_ENV, RenderSettings(tool_mounts=True), ["FROM envkiln-base AS envkiln-install", "USER 0:0"]),
], ids=["pip-uv-copied", "pip-without-uv", "conda", "conda-only-micromamba-setting-no-uv", "tools-mounted"])
def test_install_from_part(document: dict[str, Any], settings: RenderSettings, lines: list[str]) -> None:
    assert _install_from_part(spec_of(document), settings) == Part(lines=tuple(lines))


def _conda_lines(file: str) -> tuple[str, ...]:
    return ("COPY --from=envkiln-micromamba /bin/micromamba /usr/local/bin/micromamba",
            f"COPY {file} /tmp/envkiln/{file}",
            f"RUN {MAMBA_AT} create --yes --prefix {CONDA_PREFIX} --file /tmp/envkiln/{file} \\\n"
            f" && {MAMBA_AT} env export --prefix {CONDA_PREFIX} --explicit --md5 > /tmp/envkiln/conda-explicit.txt "
            "\\\n"
            f" && {MAMBA_AT} clean --all --yes \\\n"
            " && rm -rf /tmp/envkiln/mamba")


@pytest.mark.parametrize(("document", "pinned", "expected"), [
    (PIP_ENV, None, Part()),
    (manifest(lock=PIP_LOCK), PIP_LOCK, Part()),
    (CONDA_ONLY, None, Part(lines=_conda_lines("conda.yaml"), files=(
        ContextFile(path="conda.yaml", content="name: envkiln\nchannels: []\ndependencies:\n- nodejs\n"),))),
    (CONDA_PIP_BLOCK, None, Part(lines=_conda_lines("conda.yaml"), files=(
        ContextFile(path="conda.yaml", content="name: envkiln\nchannels: []\ndependencies:\n"
                                               "- python\n- pip\n- pip:\n  - --index-url https://i\n  - six\n"),))),
    (manifest(CONDA_ONLY, lock=CONDA_LOCK), CONDA_LOCK, Part(lines=_conda_lines("conda-lock.txt"), files=(
        ContextFile(path="conda-lock.txt", content=f"@EXPLICIT\n{PYTHON_URL}\n"),))),
], ids=["no-conda", "no-conda-pinned", "conda", "conda-pip-block-gets-pip", "conda-pinned"])
def test_conda_part(document: dict[str, Any], pinned: str | None, expected: Part) -> None:
    assert _conda_part(spec_of(document), lock(pinned), RenderSettings()) == expected


def test_a_mounted_micromamba_is_never_copied_into_the_image() -> None:
    part = _conda_part(spec_of(CONDA_ONLY), None, RenderSettings(tool_mounts=True, micromamba_image="r/mm:1"))
    copy, run = part.lines
    assert copy == "COPY conda.yaml /tmp/envkiln/conda.yaml"
    assert run.startswith("RUN --mount=type=bind,from=r/mm:1,source=/bin/micromamba,"
                          "target=/tmp/envkiln-tools/micromamba "
                          "MAMBA_ROOT_PREFIX=/tmp/envkiln/mamba /tmp/envkiln-tools/micromamba create ")


VENV_PREPARE = ('base_python="$(command -v python3 || command -v python)" \\\n'
                ' || { echo "envkiln: the base image has neither python3 nor python on its PATH; ')


VENV_BY_PIP = f' "$base_python" -m venv --system-site-packages {VENV_PREFIX}'
VENV_BY_UV = (f' "$base_python" -m venv --without-pip --system-site-packages {VENV_PREFIX} \\\n'
              f" && {VENV_PREFIX}/bin/python /tmp/envkiln/envkiln_venv.py ")


@pytest.mark.parametrize(("document", "settings", "python", "prepare", "made"), [
    (PIP_ENV, RenderSettings(), f"{VENV_PREFIX}/bin/python", VENV_PREPARE, VENV_BY_UV + "/tmp/envkiln/uv"),
    (PIP_ENV, RenderSettings(uv_image="r/uv:1", tool_mounts=True), f"{VENV_PREFIX}/bin/python", VENV_PREPARE,
     VENV_BY_UV + "/tmp/envkiln-tools/uv"),
    (PIP_ENV, RenderSettings(uv_image=None), f"{VENV_PREFIX}/bin/python", VENV_PREPARE, VENV_BY_PIP),
    (CONDA_ENV, RenderSettings(), f"{CONDA_PREFIX}/bin/python",
     f"{CONDA_PREFIX}/bin/python -m pip --version >/dev/null", None),
], ids=["venv-pip-seeded-by-uv", "venv-uv-mounted", "venv-by-ensurepip-without-uv", "conda"])
def test_the_python_that_installs(document: dict[str, Any], settings: RenderSettings, python: str, prepare: str,
                                  made: str | None) -> None:
    spec = spec_of(document)
    assert _python(spec) == python
    assert _prepare_python(spec, settings).startswith(prepare)
    if made is not None:
        assert _prepare_python(spec, settings).endswith(made)


def _uv(python: str, requirements: str, uv: str = "/tmp/envkiln/uv", flags: str = "") -> str:
    return (f"{{ {UV_CONFIG_FROM_PIP}; }} \\\n"
            f"    && UV_NATIVE_TLS=1 {uv} pip install --no-cache{flags} --python {python} --requirement {requirements}")


def _pinned_pip_run(python: str, prepare: str) -> str:
    return (f"RUN {prepare} \\\n"
            f" && {python} /tmp/envkiln/{LOCK_SCRIPT_NAME} pip-install-list /tmp/envkiln/pip-lock.txt "
            "/tmp/envkiln/pip-install.txt \\\n"
            " && if [ -f /tmp/envkiln/pip-install.txt ]; then \\\n"
            f"    {_uv(python, '/tmp/envkiln/pip-install.txt', flags=' --no-deps')}; \\\n"
            "  fi")


CONDA_PY = f"{CONDA_PREFIX}/bin/python"
CONDA_PREP = f"{CONDA_PY} -m pip --version >/dev/null"
VENV_PY = f"{VENV_PREFIX}/bin/python"
PIP_OPTIONS = ["--index-url https://i/simple", "numpy==2.1.3", "--index-url https://i/simple", " six==1.16.0 "]


@pytest.mark.parametrize(("document", "pinned", "settings", "expected"), [
    (PIP_ENV, None, RenderSettings(), Part(
        lines=("COPY requirements.txt /tmp/envkiln/requirements.txt", VENV_COPY,
               f"RUN {_prepare_python(spec_of(PIP_ENV), RenderSettings())} \\\n && "
               f"{_uv(VENV_PY, '/tmp/envkiln/requirements.txt')}"),
        files=(ContextFile(path="requirements.txt", content="numpy==2.1.3\npandas==2.2.3\n"), VENV_FILE))),
    (manifest(pip=PIP_OPTIONS), None, RenderSettings(uv_image="r/uv:1", tool_mounts=True), Part(
        lines=("COPY requirements.txt /tmp/envkiln/requirements.txt", VENV_COPY,
               "RUN --mount=type=bind,from=r/uv:1,source=/uv,target=/tmp/envkiln-tools/uv "
               f"{_prepare_python(spec_of(PIP_ENV), RenderSettings(uv_image='r/uv:1', tool_mounts=True))} \\\n && "
               f"{_uv(VENV_PY, '/tmp/envkiln/requirements.txt', uv='/tmp/envkiln-tools/uv')}"),
        files=(ContextFile(path="requirements.txt", content="--index-url https://i/simple\nnumpy==2.1.3\n"
                                                            "--index-url https://i/simple\nsix==1.16.0\n"),
               VENV_FILE))),
    (CONDA_ENV, None, RenderSettings(), Part(
        lines=("COPY requirements.txt /tmp/envkiln/requirements.txt",
               f"RUN {CONDA_PREP} \\\n && {_uv(CONDA_PY, '/tmp/envkiln/requirements.txt')}"),
        files=(ContextFile(path="requirements.txt", content="six==1.16.0\n"),))),
    (CONDA_PIP_BLOCK, None, RenderSettings(), Part()),
    (CONDA_ONLY, None, RenderSettings(), Part()),
    (manifest(CONDA_ONLY, lock=CONDA_LOCK), CONDA_LOCK, RenderSettings(), Part()),
    (manifest(pip=PIP_OPTIONS, lock=PIP_LOCK), PIP_LOCK, RenderSettings(), Part(
        lines=("COPY pip-lock.txt /tmp/envkiln/pip-lock.txt", SCRIPT_COPY, VENV_COPY,
               _pinned_pip_run(VENV_PY, _prepare_python(spec_of(PIP_ENV), RenderSettings()))),
        files=(ContextFile(path="pip-lock.txt", content="--index-url https://i/simple\nnumpy==2.1.3\nsix==1.16.0\n"),
               SCRIPT, VENV_FILE))),
    (manifest(CONDA_PIP_BLOCK, lock=BOTH_LOCK), BOTH_LOCK, RenderSettings(), Part(
        lines=("COPY pip-lock.txt /tmp/envkiln/pip-lock.txt", SCRIPT_COPY, _pinned_pip_run(CONDA_PY, CONDA_PREP)),
        files=(ContextFile(path="pip-lock.txt", content="--index-url https://i\nsix==1.16.0\n"), SCRIPT))),
    (PIP_ENV, None, RenderSettings(uv_image=None), Part(
        lines=("COPY requirements.txt /tmp/envkiln/requirements.txt",
               f"RUN {_prepare_python(spec_of(PIP_ENV), RenderSettings(uv_image=None))} \\\n"
               f" && {VENV_PY} -m pip install --no-cache-dir "
               "--disable-pip-version-check --requirement /tmp/envkiln/requirements.txt"),
        files=(ContextFile(path="requirements.txt", content="numpy==2.1.3\npandas==2.2.3\n"),))),
], ids=["pip", "pip-options-kept-in-order-uv-mounted", "conda-and-pip", "conda-pip-block-in-conda-yaml", "conda-only",
        "pinned-conda-only", "pinned-pip-options-once", "pinned-conda-pip-block", "pip-without-uv"])
def test_pip_part(document: dict[str, Any], pinned: str | None, settings: RenderSettings, expected: Part) -> None:
    assert _pip_part(spec_of(document), lock(pinned), settings) == expected


WRITE = f"/tmp/envkiln/{LOCK_SCRIPT_NAME} write /envkiln-lock/envkiln-lock.txt"


@pytest.mark.parametrize(("document", "pinned", "pip_section", "command"), [
    (PIP_ENV, None, True, f"{WRITE} --pip --uv /tmp/envkiln/uv"),
    (CONDA_ONLY, None, False, f"{WRITE} --conda /tmp/envkiln/conda-explicit.txt"),
    (CONDA_ENV, None, True, f"{WRITE} --conda /tmp/envkiln/conda-explicit.txt --pip --uv /tmp/envkiln/uv"),
    (manifest(lock=PIP_LOCK), PIP_LOCK, True,
     f"{WRITE} --pip --uv /tmp/envkiln/uv --pinned-pip /tmp/envkiln/pip-lock.txt"),
    (manifest(CONDA_ONLY, lock=CONDA_LOCK), CONDA_LOCK, False,
     f"{WRITE} --conda /tmp/envkiln/conda-explicit.txt --pinned-conda /tmp/envkiln/conda-lock.txt"),
    (manifest(CONDA_ENV, lock=BOTH_LOCK), BOTH_LOCK, True,
     f"{WRITE} --conda /tmp/envkiln/conda-explicit.txt --pip --uv /tmp/envkiln/uv "
     "--pinned-conda /tmp/envkiln/conda-lock.txt --pinned-pip /tmp/envkiln/pip-lock.txt"),
], ids=["pip", "conda-only", "conda-and-pip", "pinned-pip", "pinned-conda", "pinned-both"])
def test_lock_write_command(document: dict[str, Any], pinned: str | None, pip_section: bool, command: str) -> None:
    assert _lock_write_command(spec_of(document), lock(pinned), pip_section, RenderSettings()) == command


@pytest.mark.parametrize(("document", "pinned", "lines", "files"), [
    (PIP_ENV, None,
     [SCRIPT_COPY, f"RUN {VENV_PY} {WRITE} --pip --uv /tmp/envkiln/uv \\\n && rm -rf /tmp/envkiln"], [SCRIPT]),
    (manifest(lock=PIP_LOCK), PIP_LOCK,  # the pinned pip install copied the script already
     [f"RUN {VENV_PY} {WRITE} --pip --uv /tmp/envkiln/uv --pinned-pip /tmp/envkiln/pip-lock.txt \\\n"
      " && rm -rf /tmp/envkiln"], []),
    (CONDA_PIP_BLOCK, None,
     [SCRIPT_COPY, f"RUN {CONDA_PY} {WRITE} --conda /tmp/envkiln/conda-explicit.txt --pip --uv /tmp/envkiln/uv"
                   " \\\n && rm -rf /tmp/envkiln"], [SCRIPT]),
    (manifest(CONDA_ONLY, lock=BOTH_LOCK), BOTH_LOCK,  # a lock's [pip] section makes it a pip install
     [f"RUN {CONDA_PY} {WRITE} --conda /tmp/envkiln/conda-explicit.txt --pip --uv /tmp/envkiln/uv "
      "--pinned-conda /tmp/envkiln/conda-lock.txt --pinned-pip /tmp/envkiln/pip-lock.txt \\\n && rm -rf /tmp/envkiln"],
     []),
], ids=["pip", "pinned-pip", "conda-pip-block", "conda-only-lock-with-pip"])
def test_lock_write_part_with_pip(document: dict[str, Any], pinned: str | None, lines: list[str],
                                  files: list[ContextFile]) -> None:
    assert _lock_write_part(spec_of(document), lock(pinned), RenderSettings()) == Part(lines=tuple(lines),
                                                                                      files=tuple(files))


@pytest.mark.parametrize(("document", "pinned", "compared"), [
    (CONDA_ONLY, None, False),
    (manifest(CONDA_ONLY, lock=CONDA_LOCK), CONDA_LOCK, True),
], ids=["conda-only", "pinned-conda-only"])
def test_lock_write_part_without_pip_falls_back_to_python3_then_the_shell(
        document: dict[str, Any], pinned: str | None, compared: bool) -> None:
    part = _lock_write_part(spec_of(document), lock(pinned), RenderSettings())
    assert part.files == (SCRIPT,)
    copy, run = part.lines
    assert copy == SCRIPT_COPY
    command = _lock_write_command(spec_of(document), lock(pinned), False, RenderSettings())
    assert run.startswith(f'RUN if lock_python="$(command -v {CONDA_PY} || command -v python3)"; then \\\n'
                          f'      "$lock_python" {command}; \\\n    else \\\n      mkdir -p /envkiln-lock \\\n')
    assert run.endswith("; \\\n    fi \\\n && rm -rf /tmp/envkiln")
    assert ("cmp -s /tmp/envkiln/conda-pinned.txt /tmp/envkiln/conda-built.txt" in run) == compared


CONDA_ENVS = (f"ENV CONDA_PREFIX={CONDA_PREFIX} AZUREML_CONDA_ENVIRONMENT_PATH={CONDA_PREFIX} "
              f"LD_LIBRARY_PATH={CONDA_PREFIX}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}")


@pytest.mark.parametrize(("document", "lines"), [
    (PIP_ENV, ["FROM envkiln-base AS envkiln-image", "COPY --from=envkiln-install /opt/envkiln /opt/envkiln",
               f"ENV PATH={VENV_PREFIX}/bin:$PATH"]),
    (CONDA_ENV, ["FROM envkiln-base AS envkiln-image", "COPY --from=envkiln-install /opt/envkiln /opt/envkiln",
                 f"ENV PATH={CONDA_PREFIX}/bin:$PATH", CONDA_ENVS]),
    (CONDA_ONLY, ["FROM envkiln-base AS envkiln-image", "COPY --from=envkiln-install /opt/envkiln /opt/envkiln",
                  f"ENV PATH={CONDA_PREFIX}/bin:$PATH", CONDA_ENVS]),
], ids=["venv", "conda-and-pip", "conda-only"])
def test_image_part(document: dict[str, Any], lines: list[str]) -> None:
    assert _image_part(spec_of(document)) == Part(lines=tuple(lines))


def test_the_lock_layer_is_the_last_stage_and_one_copy() -> None:
    layer = _LOCK_LAYER_PART
    assert layer == Part(lines=(
        "FROM envkiln-image",
        "COPY --from=envkiln-install /envkiln-lock/envkiln-lock.txt /opt/envkiln/envkiln-lock.txt"))


@pytest.mark.parametrize(("document", "pinned"), [
    (PIP_ENV, None), (CONDA_ENV, None), (CONDA_ONLY, None), (manifest(CONDA_ONLY, lock=CONDA_LOCK), CONDA_LOCK),
], ids=["pip", "conda-and-pip", "conda-only-python-or-shell", "pinned-conda-only"])
def test_the_one_stage_lock_step_copies_the_lock_into_the_image_before_cleaning_up(
        document: dict[str, Any], pinned: str | None) -> None:
    spec = spec_of(document)
    staged = _lock_write_part(spec, lock(pinned), RenderSettings())
    into = _lock_write_part(spec, lock(pinned), RenderSettings(), into_image=True)
    assert staged.files == into.files
    *_, run = into.lines
    assert run == staged.lines[-1].replace(
        " \\\n && rm -rf /tmp/envkiln",
        " \\\n && cp /envkiln-lock/envkiln-lock.txt /opt/envkiln/envkiln-lock.txt \\\n && rm -rf /tmp/envkiln")
    assert run.endswith("cp /envkiln-lock/envkiln-lock.txt /opt/envkiln/envkiln-lock.txt \\\n && rm -rf /tmp/envkiln")


ONE_STAGE = RenderSettings(tool_mounts=True)


@pytest.mark.parametrize(("document", "settings", "base_user", "expected"), [
    (PIP_ENV, ONE_STAGE, "", LockLocation.LOCK_IMAGE),
    (CONDA_ENV, ONE_STAGE, "1000", LockLocation.LOCK_IMAGE),
    (CONDA_ONLY, ONE_STAGE, "", LockLocation.LOCK_IMAGE),
    (PIP_ENV, ONE_STAGE, None, LockLocation.LAST_LAYER),  # base user unknown: multi-stage
    (PIP_ENV, RenderSettings(), "", LockLocation.LAST_LAYER),  # Kaniko
    (CONDA_ENV, RenderSettings(), None, LockLocation.LAST_LAYER),
    (manifest(pip=None, dockerSteps=["RUN true"]), ONE_STAGE, "", None),  # nothing installed: no lock
    (manifest(pip=None, dockerSteps=["RUN true"]), RenderSettings(), None, None),
], ids=["one-stage-pip", "one-stage-conda-user-base", "one-stage-conda-only", "base-user-unknown", "kaniko-pip",
        "kaniko-conda", "one-stage-no-packages", "multi-stage-no-packages"])
def test_lock_location_of_each_render(document: dict[str, Any], settings: RenderSettings, base_user: str | None,
                                      expected: LockLocation | None) -> None:
    plan = render(spec_of(document), HASH, settings, base_digest=DIGEST, base_user=base_user)
    assert lock_location(plan.dockerfile) is expected
    # exactly one of the two ways into the image, or none
    assert plan.dockerfile.count("/opt/envkiln/envkiln-lock.txt") == (0 if expected is None else 1)


@pytest.mark.parametrize(("dockerfile", "expected"), [
    ("", None),  # a user build context's plan
    ("FROM x\nRUN true\n", None),
    ("FROM envkiln-image\nCOPY --from=envkiln-image /envkiln-lock/envkiln-lock.txt /opt/envkiln/envkiln-lock.txt\n",
     LockLocation.LAST_LAYER),  # a one-stage plan rendered before the lock image (its EnvironmentBuild survives)
    ("RUN python lock.py write /envkiln-lock/envkiln-lock.txt \\\n && cp /envkiln-lock/envkiln-lock.txt "
     "/opt/envkiln/envkiln-lock.txt \\\n && rm -rf /tmp/envkiln\n", LockLocation.LOCK_IMAGE),
], ids=["context", "no-lock", "older-one-stage-plan", "one-stage-plan"])
def test_lock_location_reads_the_plan(dockerfile: str, expected: LockLocation | None) -> None:
    assert lock_location(dockerfile) is expected


def test_lock_tag_is_a_valid_tag_named_by_the_digest() -> None:
    tag = lock_tag("sha256:" + "a" * 64)
    assert tag == "sha256-" + "a" * 64 + ".lock"
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag)  # the distribution spec's tag grammar


@pytest.mark.parametrize(("parts", "expected"), [
    ([], Part()),
    ([Part(lines=("A",)), Part(), Part(lines=("B", "C"), files=(SCRIPT,))],
     Part(lines=("A", "B", "C"), files=(SCRIPT,))),
    ([Part(files=(ContextFile(path="x", content="1"),)), Part(lines=("A",), files=(SCRIPT,))],
     Part(lines=("A",), files=(ContextFile(path="x", content="1"), SCRIPT))),
], ids=["none", "lines-in-order", "files-in-order"])
def test_joined(parts: list[Part], expected: Part) -> None:
    assert _joined(parts) == expected


@pytest.mark.parametrize(("steps", "base_user", "expected"), [
    (None, "", ""),
    (None, "1000:100", "1000:100"),
    (["RUN true", "USER app", "WORKDIR /w"], "", "app"),
    (["USER app", "user root"], "1000", "root"),
    (["RUN echo USER x"], "jovyan", "jovyan"),
], ids=["root-base", "base-user", "steps-user-wins", "last-user-step", "a-run-mentioning-user"])
def test_final_user(steps: list[str] | None, base_user: str, expected: str) -> None:
    assert final_user(spec_of(manifest(dockerSteps=steps)), base_user) == expected
