"""Build rendering: from a validated definition, the Dockerfile and context files a builder needs.

Deterministic by construction: the same definition and renderer settings give a
byte-identical plan (no timestamps, no dict iteration order that the user did not write).
Layers are ordered so that rarely changing ones come first: docker steps, then the conda
environment, then pip requirements. The installs run as root in their own stage; the image is the
base stage (the base and the docker steps, its USER kept) plus /opt/envkiln copied from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from envkiln.models import BuildPlan, CondaPipBlock, ContextFile, EnvironmentKind, EnvironmentSpec, buildkit
from envkiln.names import IMAGE_LABEL_BASE as LABEL_BASE
from envkiln.names import IMAGE_LABEL_HASH as LABEL_HASH

# Pinned so that renders (and therefore builds) are reproducible; both are settings.
DEFAULT_MICROMAMBA_IMAGE = "docker.io/mambaorg/micromamba:2.3.3"
DEFAULT_UV_VERSION = "0.9.18"

ENVKILN_ROOT = "/opt/envkiln"  # everything envkiln installs
CONDA_PREFIX = f"{ENVKILN_ROOT}/conda"
VENV_PREFIX = f"{ENVKILN_ROOT}/venv"
STAGING_DIR = "/tmp/envkiln"


@dataclass(frozen=True)
class RenderSettings:
    micromamba_image: str = DEFAULT_MICROMAMBA_IMAGE
    uv_version: str = DEFAULT_UV_VERSION


class NothingToBuild(ValueError):
    """Bring-your-own-container environments are run as they are."""


class RenderError(RuntimeError):
    """Internal error: the rendered Dockerfile does not read back as the instructions envkiln wrote.

    Validation (envkiln.models.lines.check_docker_step) makes this impossible; rendering checks it
    anyway, so a gap there stops a build instead of building something else.
    """


def check_round_trip(dockerfile: str, written: list[str]) -> None:
    """BuildKit's parser must read `dockerfile` as exactly the instructions in `written`, in order.

    Each written instruction is parsed alone (it must be one instruction) and the whole file must
    parse into the same instructions: same keyword, options, arguments and text, nothing swallowed,
    split or added (a trailing backslash, a heredoc or a directive in a step would do that).
    """
    try:
        expected: list[tuple[object, ...]] = []
        for number, text in enumerate(written, start=1):
            alone = buildkit.parse(text)
            if len(alone) != 1:
                raise RenderError(
                    f"internal error: instruction {number} that envkiln wrote ({text!r}) parses into "
                    f"{len(alone)} instructions; nothing was built, please report this"
                )
            expected.append(alone[0].identity)
        found = [instruction.identity for instruction in buildkit.parse(dockerfile)]
    except buildkit.DockerfileSyntaxError as error:
        raise RenderError(
            f"internal error: BuildKit cannot parse the rendered Dockerfile ({error}); nothing was built, "
            "please report this"
        ) from None
    if found != expected:
        differs = next((i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b),
                       min(len(found), len(expected)))
        where = repr(written[differs]) if differs < len(written) else "the end of the file"
        raise RenderError(
            f"internal error: the rendered Dockerfile parses into {len(found)} instructions where envkiln wrote "
            f"{len(expected)}, differing from instruction {differs + 1} ({where}) on; nothing was built, "
            "please report this"
        )


def _quote(value: str) -> str:
    # Dockerfile LABEL values in double quotes; references cannot contain quotes, but be exact.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_PIP_DEPENDENCY = re.compile(r"pip(\s*[=<>!~].*)?")


def conda_file(spec: EnvironmentSpec) -> str:
    """The conda environment file. A pip block without a `pip` dependency gets one just before it,
    as conda itself does (with a warning) when it reads such a file."""
    assert spec.conda is not None
    dependencies: list[object] = []
    has_pip = any(isinstance(d, str) and _PIP_DEPENDENCY.fullmatch(d.strip()) for d in spec.conda.dependencies)
    for dep in spec.conda.dependencies:
        if isinstance(dep, CondaPipBlock):
            if not has_pip:
                dependencies.append("pip")
            dependencies.append({"pip": list(dep.pip)})
        else:
            dependencies.append(dep)
    document = {"name": "envkiln", "channels": list(spec.conda.channels), "dependencies": dependencies}
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def requirements_file(lines: list[str]) -> str:
    return "".join(line.strip() + "\n" for line in lines)


NO_PYTHON = (
    "envkiln: the base image has neither python3 nor python on its PATH; a pip-only environment installs into "
    "the base image's Python: choose a base with Python, or add conda with a python dependency"
)


def _pip_install(python: str, settings: RenderSettings) -> str:
    # UV_NATIVE_TLS: trust the image's CA store like pip does (TLS-inspecting proxies).
    # uv when it can be installed in the build (much faster resolves and installs);
    # pip otherwise. A failing uv install of the requirements fails the build: no fallback
    # there, or a real dependency error would be retried with another resolver.
    return (
        f"if {python} -m pip install --no-cache-dir --disable-pip-version-check --quiet "
        f"--target {STAGING_DIR}/uv uv=={settings.uv_version}; then \\\n"
        f"      UV_NATIVE_TLS=1 {STAGING_DIR}/uv/bin/uv pip install --no-cache --python {python} "
        f"--requirement {STAGING_DIR}/requirements.txt; \\\n"
        f"    else \\\n"
        f"      {python} -m pip install --no-cache-dir --disable-pip-version-check "
        f"--requirement {STAGING_DIR}/requirements.txt; \\\n"
        f"    fi \\\n"
        f" && rm -rf {STAGING_DIR}"
    )


# Stage names. The base stage comes first, so `spec.image` can never name one of them.
BASE_STAGE = "envkiln-base"
MICROMAMBA_STAGE = "envkiln-micromamba"
INSTALL_STAGE = "envkiln-install"


def _system_managed(spec: EnvironmentSpec, definition_hash: str, settings: RenderSettings) -> BuildPlan:
    """A multi-stage Dockerfile, as Azure ML builds:

    - stage `envkiln-base`: FROM the base, the label, the docker steps (as whatever user they leave);
    - stage `envkiln-install`: FROM envkiln-base, `USER 0:0` (root, without needing /etc/passwd), the conda
      environment (micromamba), the pip requirements, all under /opt/envkiln;
    - the image: FROM envkiln-base again, /opt/envkiln copied from the install stage (owned by root, modes
      kept: readable and executable by every user), then the environment: PATH, and for conda CONDA_PREFIX
      and LD_LIBRARY_PATH as Azure ML sets them (plus its AZUREML_CONDA_ENVIRONMENT_PATH).

    So a non-root base is installed into as root and keeps its own USER, WORKDIR, ENTRYPOINT and CMD,
    without envkiln having to know them. pip-only definitions install into a venv made by the base image's
    own Python with `--system-site-packages`: whatever the base has installed stays importable
    (`import torch` on a PyTorch base), and the base's own files are never changed.
    """
    assert spec.image is not None
    files: list[ContextFile] = []
    lines: list[str] = ["# Rendered by envkiln; do not edit. Definition hash " + definition_hash]
    lines.append(f"FROM {spec.image} AS {BASE_STAGE}")
    lines.append(f"LABEL {LABEL_HASH}={_quote(definition_hash)} {LABEL_BASE}={_quote(spec.image)}")
    for step in spec.docker_steps or []:
        lines.append(step.strip())
    if spec.conda is None and not spec.pip:
        dockerfile = "\n".join(lines) + "\n"
        check_round_trip(dockerfile, lines[1:])
        return BuildPlan(dockerfile=dockerfile, files=files)
    if spec.conda is not None:
        lines.append(f"FROM {settings.micromamba_image} AS {MICROMAMBA_STAGE}")
    lines += [f"FROM {BASE_STAGE} AS {INSTALL_STAGE}", "USER 0:0"]
    path_entries: list[str] = []
    if spec.conda is not None:
        files.append(ContextFile(path="conda.yaml", content=conda_file(spec)))
        lines += [
            f"COPY --from={MICROMAMBA_STAGE} /bin/micromamba /usr/local/bin/micromamba",
            f"COPY conda.yaml {STAGING_DIR}/conda.yaml",
            f"RUN MAMBA_ROOT_PREFIX={STAGING_DIR}/mamba micromamba create --yes --prefix {CONDA_PREFIX} "
            f"--file {STAGING_DIR}/conda.yaml \\\n"
            f" && MAMBA_ROOT_PREFIX={STAGING_DIR}/mamba micromamba clean --all --yes \\\n"
            f" && rm -rf {STAGING_DIR}/mamba",
        ]
        path_entries.append(f"{CONDA_PREFIX}/bin")
    if spec.pip:
        files.append(ContextFile(path="requirements.txt", content=requirements_file(spec.pip)))
        lines.append(f"COPY requirements.txt {STAGING_DIR}/requirements.txt")
        if spec.conda is not None:
            # pip requirements go into the conda environment, next to its Python.
            python = f"{CONDA_PREFIX}/bin/python"
            lines.append(f"RUN {python} -m pip --version >/dev/null \\\n && " + _pip_install(python, settings))
        else:
            python = f"{VENV_PREFIX}/bin/python"
            lines.append(
                f"RUN base_python=\"$(command -v python3 || command -v python)\" \\\n"
                f" || {{ echo \"{NO_PYTHON}\" >&2; exit 1; }}; \\\n"
                f" \"$base_python\" -m venv --system-site-packages {VENV_PREFIX} \\\n"
                f" && " + _pip_install(python, settings)
            )
            path_entries.insert(0, f"{VENV_PREFIX}/bin")
    lines += [f"FROM {BASE_STAGE}", f"COPY --from={INSTALL_STAGE} {ENVKILN_ROOT} {ENVKILN_ROOT}"]
    lines.append(f"ENV PATH={':'.join(path_entries)}:$PATH")
    if spec.conda is not None:
        # As Azure ML sets them, without an empty LD_LIBRARY_PATH entry (the current directory) when it
        # was unset. One instruction: the layout of the rendered file is pinned by tests.
        lines.append(
            f"ENV CONDA_PREFIX={CONDA_PREFIX} AZUREML_CONDA_ENVIRONMENT_PATH={CONDA_PREFIX} "
            f"LD_LIBRARY_PATH={CONDA_PREFIX}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
        )
    dockerfile = "\n".join(lines) + "\n"
    check_round_trip(dockerfile, lines[1:])  # lines[0] is the comment; every other entry is one instruction
    return BuildPlan(dockerfile=dockerfile, files=files)


def render(spec: EnvironmentSpec, definition_hash: str, settings: RenderSettings | None = None) -> BuildPlan:
    """The build plan for a definition. User build contexts pass through untouched."""
    settings = settings or RenderSettings()
    kind = spec.kind
    if kind is EnvironmentKind.BRING_YOUR_OWN:
        raise NothingToBuild("userManaged environments are not built; their image is used as is")
    if kind is EnvironmentKind.BUILD_CONTEXT:
        return BuildPlan(dockerfile="", files=[], context=spec.build)
    return _system_managed(spec, definition_hash, settings)
