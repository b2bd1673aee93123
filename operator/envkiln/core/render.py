"""Build rendering: from a validated definition, the Dockerfile and context files a builder needs.

Deterministic by construction: the same definition and renderer settings give a
byte-identical plan (no timestamps, no dict iteration order that the user did not write).
Layers are ordered so that rarely changing ones come first: docker steps, then the conda
environment, then pip requirements. With a builder that bind-mounts tools from images (buildah)
and the base image's user known, the installs run as root in the one stage FROM the base, which
then gets its user back (`one_stage`); otherwise they run in a stage of their own and the image
is the base stage plus /opt/envkiln copied from it (`_multi_stage`). The lock (the resolved
packages, envkiln.core.locks) is in the image either way, at names.LOCK_FILE: the multi-stage
render copies it into a last layer of its own, where the operator reads it from the registry; the
one-stage render writes it in its install step and also to names.LOCK_EXPORT_DIR, a directory the
builder mounts, which the builder pushes as a one-layer image beside the image (`lock_location`).

uv comes from a tool image (RenderSettings.uv_image), bind-mounted into the RUN steps that use it
or copied into the discarded install stage: it is never installed by pip, nor left in the image.

Given the base image's digest, the base stage is FROM that digest (and labelled with it), so a
rebuild of the same definition on the same digest starts from the same bytes. Given spec.lock,
the install stage installs exactly the locked packages and fails, naming them, when the packages
it ends up with differ.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from importlib import resources

import yaml

from envkiln.core.imageref import InvalidImageReference, parse_image_reference
from envkiln.core.locks import (
    LOCK_HEADER,
    LOCK_SCRIPT,
    LOCK_SCRIPT_NAME,
    Lock,
    LockError,
    conda_lines,
    parse_lock,
    pip_lines,
)
from envkiln.core.models import BuildPlan, CondaPipBlock, ContextFile, EnvironmentKind, EnvironmentSpec, buildkit
from envkiln.core.names import IMAGE_LABEL_BASE as LABEL_BASE
from envkiln.core.names import IMAGE_LABEL_BASE_DIGEST, IMAGE_LABEL_PARENT, LOCK_EXPORT_DIR, LOCK_EXPORT_FILE, LOCK_FILE
from envkiln.core.names import IMAGE_LABEL_HASH as LABEL_HASH

# Pinned so that renders (and therefore builds) are reproducible; both are settings (pin them by
# digest in production: ENVKILN_MICROMAMBA_IMAGE, ENVKILN_UV_IMAGE).
DEFAULT_MICROMAMBA_IMAGE = "docker.io/mambaorg/micromamba:2.3.3"
DEFAULT_UV_IMAGE = "ghcr.io/astral-sh/uv:0.9.18"  # FROM scratch, /uv and /uvx

ENVKILN_ROOT = "/opt/envkiln"  # everything envkiln installs
CONDA_PREFIX = f"{ENVKILN_ROOT}/conda"
VENV_PREFIX = f"{ENVKILN_ROOT}/venv"
STAGING_DIR = "/tmp/envkiln"
TOOLS_DIR = "/tmp/envkiln-tools"  # where tool images are bind-mounted for a RUN step (buildah)

# The lock: written outside /opt/envkiln (in a directory the one-stage builders mount: names.LOCK_EXPORT_DIR),
# then copied into the image at names.LOCK_FILE: by a last stage of its own in the multi-stage render
# (the image's last layer holds that one small file), by the lock step itself in the one-stage one.
LOCK_DIR = LOCK_EXPORT_DIR
LOCK_STAGED = LOCK_EXPORT_FILE
# The one-stage render's lock step ends with this copy; the operator tells the two renders apart by it.
LOCK_INTO_IMAGE = f"cp {LOCK_STAGED} {LOCK_FILE}"
LOCK_SCRIPT_PATH = f"{STAGING_DIR}/{LOCK_SCRIPT_NAME}"
# The venv seed (envkiln_venv.py, shipped in this package), written into pip-only contexts built with uv.
VENV_SCRIPT_NAME = "envkiln_venv.py"
VENV_SCRIPT = resources.files("envkiln.core").joinpath(VENV_SCRIPT_NAME).read_text(encoding="utf-8")
VENV_SCRIPT_PATH = f"{STAGING_DIR}/{VENV_SCRIPT_NAME}"
CONDA_EXPORT = f"{STAGING_DIR}/conda-explicit.txt"  # `micromamba env export --explicit --md5`
# spec.lock's sections as context files: an explicit conda file, and pip lines (with the definition's
# index options) of which the build installs those not installed already (PIP_INSTALL).
CONDA_LOCK = "conda-lock.txt"
PIP_LOCK = "pip-lock.txt"
REQUIREMENTS_FILE = "requirements.txt"  # spec.pip as a context file
PIP_INSTALL = f"{STAGING_DIR}/pip-install.txt"


@dataclass(frozen=True)
class RenderSettings:
    micromamba_image: str = DEFAULT_MICROMAMBA_IMAGE
    uv_image: str | None = DEFAULT_UV_IMAGE  # None: pip installs the packages
    # The builder supports `RUN --mount=type=bind,from=IMAGE` (buildah, the local builder): tools are
    # mounted for the steps that use them, and with the base image's user known the render has one stage.
    tool_mounts: bool = False

    def uv(self) -> str:
        """Where uv is during the RUN steps that use it."""
        return f"{TOOLS_DIR}/uv" if self.tool_mounts else f"{STAGING_DIR}/uv"

    def uv_mount(self) -> str:
        """The RUN option that mounts uv, when it is mounted ("" otherwise)."""
        if self.uv_image is None or not self.tool_mounts:
            return ""
        return f"--mount=type=bind,from={self.uv_image},source=/uv,target={self.uv()} "

    def micromamba(self) -> str:
        return f"{TOOLS_DIR}/micromamba" if self.tool_mounts else "/usr/local/bin/micromamba"

    def micromamba_mount(self) -> str:
        if not self.tool_mounts:
            return ""
        return f"--mount=type=bind,from={self.micromamba_image},source=/bin/micromamba,target={self.micromamba()} "


class NothingToBuild(ValueError):
    """Bring-your-own-container environments are run as they are."""


class RenderError(RuntimeError):
    """Internal error: the rendered Dockerfile does not read back as the instructions envkiln wrote.

    Validation (envkiln.core.models.lines.check_docker_step) makes this impossible; rendering checks it
    anyway, so a gap there stops a build instead of building something else.
    """


class InvalidLock(RenderError):
    """spec.lock cannot be read, or does not fit the definition (its sections are not the ones the
    definition installs). The message says what to write."""


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


# uv does not read pip's configuration: the index settings pip would use become uv's variables, read
# at build time (the values never stand in the Dockerfile): those of /etc/pip.conf (where a build env
# puts PIP_INDEX_URL & co: envkiln.adapters.builders.jobs), then, as with pip, the PIP_* variables a
# definition's docker steps set (`ENV PIP_INDEX_URL=...`), which win.
UV_CONFIG_FROM_PIP = (
    "if [ -r /etc/pip.conf ]; then for pair in index-url=UV_INDEX_URL extra-index-url=UV_EXTRA_INDEX_URL "
    "trusted-host=UV_INSECURE_HOST cert=SSL_CERT_FILE; do "
    "value=$(sed -n \"s/^[[:space:]]*${pair%%=*}[[:space:]]*=[[:space:]]*//p\" /etc/pip.conf | head -n 1); "
    "[ -z \"$value\" ] || export \"${pair#*=}=$value\"; done; fi; "
    "[ -z \"${PIP_INDEX_URL:-}\" ] || export UV_INDEX_URL=\"$PIP_INDEX_URL\"; "
    "[ -z \"${PIP_EXTRA_INDEX_URL:-}\" ] || export UV_EXTRA_INDEX_URL=\"$PIP_EXTRA_INDEX_URL\"; "
    "[ -z \"${PIP_TRUSTED_HOST:-}\" ] || export UV_INSECURE_HOST=\"$PIP_TRUSTED_HOST\"; "
    "[ -z \"${PIP_CERT:-}\" ] || export SSL_CERT_FILE=\"$PIP_CERT\""
)


def _pip_install(python: str, settings: RenderSettings, requirements: str, no_deps: bool = False) -> str:
    # uv from the tool image (much faster resolves and installs), with UV_NATIVE_TLS: trust the image's
    # CA store like pip does (TLS-inspecting proxies); pip when there is no uv image. A failing install
    # fails the build. `no_deps`: a pinned lock's packages, exactly those (it lists the dependencies itself).
    flags = " --no-deps" if no_deps else ""
    if settings.uv_image is None:
        return f"{python} -m pip install --no-cache-dir --disable-pip-version-check{flags} --requirement {requirements}"
    return (f"{{ {UV_CONFIG_FROM_PIP}; }} \\\n"
            f"    && UV_NATIVE_TLS=1 {settings.uv()} pip install --no-cache{flags} --python {python} "
            f"--requirement {requirements}")


# Stage names. The base stage comes first, so `spec.image` can never name one of them.
BASE_STAGE = "envkiln-base"
MICROMAMBA_STAGE = "envkiln-micromamba"
INSTALL_STAGE = "envkiln-install"
IMAGE_STAGE = "envkiln-image"


def base_reference(image: str, base_digest: str | None) -> tuple[str, str | None]:
    """(what the base stage is FROM, the digest it is pinned to). An image written with a digest is
    used as written (its own digest); else, given `base_digest`, the repository at that digest (the
    tag dropped, the registry host as written); else the image as written, no digest."""
    reference = parse_image_reference(image)
    if reference.digest:
        return image, reference.digest
    if base_digest is None:
        return image, None
    try:
        pinned = parse_image_reference(f"{reference.name}@{base_digest}")
    except InvalidImageReference as error:
        raise RenderError(f"internal error: the base image digest {base_digest!r} is not a digest ({error}); "
                          "nothing was built, please report this") from None
    return str(pinned), base_digest


def _conda_pip_lines(spec: EnvironmentSpec) -> list[str]:
    return [line for dep in (spec.conda.dependencies if spec.conda else []) if isinstance(dep, CondaPipBlock)
            for line in dep.pip]


def installs_pip(spec: EnvironmentSpec) -> bool:
    """Whether the definition installs pip packages (spec.pip, or a pip block in spec.conda): its lock
    then has a [pip] section."""
    return bool(spec.pip) or bool(_conda_pip_lines(spec))


def pinned_lock(spec: EnvironmentSpec) -> Lock | None:
    """spec.lock read, its sections checked against the definition: [conda] exactly when spec.conda
    is set, [pip] whenever the definition installs pip packages. Raises InvalidLock."""
    if spec.lock is None:
        return None
    try:
        lock = parse_lock(spec.lock)
    except LockError as error:
        raise InvalidLock(f"spec.lock: {error}") from None
    again = "; put the lock `envkiln lock` prints for a build of this definition in spec.lock"
    if spec.conda is not None and not lock.has_conda:
        raise InvalidLock("spec.lock has no [conda] section, but the definition installs spec.conda" + again)
    if spec.conda is None and lock.has_conda:
        raise InvalidLock("spec.lock has a [conda] section, but the definition has no spec.conda" + again)
    if installs_pip(spec) and not lock.has_pip:
        raise InvalidLock("spec.lock has no [pip] section, but the definition installs pip packages" + again)
    return lock


def _pip_options(spec: EnvironmentSpec) -> list[str]:
    """The definition's pip option lines (--index-url, ...), in order, once each: a pinned install
    finds its packages where the definition's did."""
    options: list[str] = []
    for line in [*(spec.pip or []), *_conda_pip_lines(spec)]:
        text = line.strip()
        if text.startswith("-") and text not in options:
            options.append(text)
    return options


def _lock_file(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


# What the lock's [conda] section keeps of `micromamba env export --explicit --md5` (as envkiln.core.locks
# reads it), for the shell's fallback when the image has no Python to run the lock script.
_CONDA_URL_ERE = r"^[A-Za-z][A-Za-z0-9+.-]*://[^[:space:]]*/[^/#[:space:]]+\.(conda|tar\.bz2)(#[0-9a-fA-F]+)?$"
_CONDA_URLS = f"sed -e 's/[[:space:]]*$//' -e 's/#$//' {{}} | grep -E '{_CONDA_URL_ERE}' | LC_ALL=C sort -u"


def _conda_lock_in_shell(pinned: bool) -> str:
    """The [conda]-only lock written by the shell (the lines the script keeps, sorted as it sorts them),
    and with a pinned lock the comparison of the package lines; for a conda environment without Python
    on a base without python3."""
    text = (
        f"mkdir -p {LOCK_DIR} \\\n"
        f"      && {{ echo '{LOCK_HEADER}'; echo '[conda]'; echo '@EXPLICIT'; "
        f"{_CONDA_URLS.format(CONDA_EXPORT)}; }} > {LOCK_STAGED}"
    )
    if pinned:
        pinned_urls, built_urls = f"{STAGING_DIR}/conda-pinned.txt", f"{STAGING_DIR}/conda-built.txt"
        text += (
            f" \\\n      && {_CONDA_URLS.format(f'{STAGING_DIR}/{CONDA_LOCK}')} > {pinned_urls}"
            f" \\\n      && {_CONDA_URLS.format(CONDA_EXPORT)} > {built_urls}"
            f" \\\n      && {{ cmp -s {pinned_urls} {built_urls}"
            f" || {{ echo 'envkiln: the build did not reproduce spec.lock (conda packages pinned, then built):' >&2;"
            f" diff {pinned_urls} {built_urls} >&2; exit 1; }}; }}"
        )
    return text


@dataclass(frozen=True)
class Part:
    """A piece of the render: Dockerfile instructions (one entry each) and the context files they copy,
    in order. `_system_managed` joins the parts; none of them sees or changes another."""

    lines: tuple[str, ...] = ()
    files: tuple[ContextFile, ...] = ()


def _joined(parts: list[Part]) -> Part:
    return Part(lines=tuple(line for part in parts for line in part.lines),
                files=tuple(file for part in parts for file in part.files))


def _pins_pip(pinned: Lock | None) -> bool:
    """Whether the install is of a lock's [pip] section (then the lock script is copied before it)."""
    return pinned is not None and pinned.has_pip


def _python(spec: EnvironmentSpec) -> str:
    """The Python pip installs with and the lock script runs with: the conda environment's, else the venv's."""
    return f"{CONDA_PREFIX}/bin/python" if spec.conda is not None else f"{VENV_PREFIX}/bin/python"


def _labels(definition_hash: str, image: str, base_digest: str | None) -> str:
    """The LABEL instruction: the definition hash, the base as written and, when pinned, its digest."""
    label = f"LABEL {LABEL_HASH}={_quote(definition_hash)} {LABEL_BASE}={_quote(image)}"
    return label + (f" {IMAGE_LABEL_BASE_DIGEST}={_quote(base_digest)}" if base_digest is not None else "")


def _base_part(spec: EnvironmentSpec, definition_hash: str, base_digest: str | None) -> Part:
    """Stage envkiln-base: FROM the base (at its digest when known), the labels, the docker steps."""
    assert spec.image is not None
    base, digest = base_reference(spec.image, base_digest)
    label = _labels(definition_hash, spec.image, digest)
    return Part(lines=(f"FROM {base} AS {BASE_STAGE}", label, *(step.strip() for step in spec.docker_steps or [])))


def _install_from_part(spec: EnvironmentSpec, settings: RenderSettings) -> Part:
    """The micromamba stage (for conda, unless mounted), then stage envkiln-install FROM envkiln-base, as
    root, with uv copied from its image when it is not mounted (this stage is discarded: uv never
    reaches the image)."""
    micromamba = [f"FROM {settings.micromamba_image} AS {MICROMAMBA_STAGE}"] if (
        spec.conda is not None and not settings.tool_mounts) else []
    uv = [f"COPY --from={settings.uv_image} /uv {settings.uv()}"] if (
        installs_pip(spec) and settings.uv_image is not None and not settings.tool_mounts) else []
    return Part(lines=(*micromamba, f"FROM {BASE_STAGE} AS {INSTALL_STAGE}", "USER 0:0", *uv))


def _conda_part(spec: EnvironmentSpec, pinned: Lock | None, settings: RenderSettings) -> Part:
    """The conda environment, from conda.yaml or (pinned) the lock's explicit [conda] file; exported
    for the lock. Nothing without spec.conda."""
    if spec.conda is None:
        return Part()
    if pinned is not None:
        environment = ContextFile(path=CONDA_LOCK, content=_lock_file(conda_lines(pinned)))
    else:
        environment = ContextFile(path="conda.yaml", content=conda_file(spec))
    mamba = f"MAMBA_ROOT_PREFIX={STAGING_DIR}/mamba {settings.micromamba()}"
    staged = f"{STAGING_DIR}/{environment.path}"
    copy = [] if settings.tool_mounts else [f"COPY --from={MICROMAMBA_STAGE} /bin/micromamba {settings.micromamba()}"]
    return Part(lines=(
        *copy,
        f"COPY {environment.path} {staged}",
        f"RUN {settings.micromamba_mount()}{mamba} create --yes --prefix {CONDA_PREFIX} --file {staged} \\\n"
        f" && {mamba} env export --prefix {CONDA_PREFIX} --explicit --md5 > {CONDA_EXPORT} \\\n"
        f" && {mamba} clean --all --yes \\\n"
        f" && rm -rf {STAGING_DIR}/mamba",
    ), files=(environment,))


def _prepare_python(spec: EnvironmentSpec, settings: RenderSettings) -> str:
    """The shell that readies the Python pip installs into: the conda environment's (checked to have pip),
    else a venv made by the base's own Python, seeing the base's packages. With uv, the venv is made
    without pip and envkiln_venv.py (copied by _venv_script_part) has uv install the pip and setuptools
    wheels ensurepip would have, from the base Python's own copies: the same packages without ensurepip's
    pip run and bytecode compilation (2.5 s of CPU a build here, and half the venv's size)."""
    if spec.conda is not None:
        return f"{_python(spec)} -m pip --version >/dev/null"
    find_python = (f"base_python=\"$(command -v python3 || command -v python)\" \\\n"
                   f" || {{ echo \"{NO_PYTHON}\" >&2; exit 1; }}; \\\n")
    if not _seeds_pip(spec, settings):
        return find_python + f" \"$base_python\" -m venv --system-site-packages {VENV_PREFIX}"
    return (find_python + f" \"$base_python\" -m venv --without-pip --system-site-packages {VENV_PREFIX} \\\n"
            f" && {_python(spec)} {VENV_SCRIPT_PATH} {settings.uv()}")


def _seeds_pip(spec: EnvironmentSpec, settings: RenderSettings) -> bool:
    """Whether the install makes a venv without pip and seeds it with envkiln_venv.py: a venv (no conda)
    and uv. The one place _prepare_python and _venv_script_part ask, so the RUN never names a script the
    context lacks."""
    return spec.conda is None and settings.uv_image is not None


def _venv_script_part(spec: EnvironmentSpec, settings: RenderSettings) -> Part:
    """envkiln_venv.py into the staging directory, for _prepare_python's venv made without pip (a venv
    and uv); nothing otherwise."""
    if not _seeds_pip(spec, settings):
        return Part()
    return Part(lines=(f"COPY {VENV_SCRIPT_NAME} {VENV_SCRIPT_PATH}",),
                files=(ContextFile(path=VENV_SCRIPT_NAME, content=VENV_SCRIPT),))


_SCRIPT_PART = Part(lines=(f"COPY {LOCK_SCRIPT_NAME} {LOCK_SCRIPT_PATH}",),
                    files=(ContextFile(path=LOCK_SCRIPT_NAME, content=LOCK_SCRIPT),))


def _pip_part(spec: EnvironmentSpec, pinned: Lock | None, settings: RenderSettings) -> Part:
    """The pip install: of the lock's [pip] lines not installed already, without dependencies (the lock
    script, copied first, lists them); else of spec.pip; else nothing (a conda pip block is in conda.yaml)."""
    python, prepare = _python(spec), _prepare_python(spec, settings)
    if pinned is not None and _pins_pip(pinned):
        lock = ContextFile(path=PIP_LOCK, content=_lock_file(_pip_options(spec) + pip_lines(pinned)))
        copy = Part(lines=(f"COPY {PIP_LOCK} {STAGING_DIR}/{PIP_LOCK}",), files=(lock,))
        install = Part(lines=(
            f"RUN {settings.uv_mount()}{prepare} \\\n"
            f" && {python} {LOCK_SCRIPT_PATH} pip-install-list {STAGING_DIR}/{PIP_LOCK} {PIP_INSTALL} \\\n"
            f" && if [ -f {PIP_INSTALL} ]; then \\\n"
            f"    {_pip_install(python, settings, PIP_INSTALL, no_deps=True)}; \\\n"
            f"  fi",
        ))
        return _joined([copy, _SCRIPT_PART, _venv_script_part(spec, settings), install])
    if pinned is None and spec.pip:
        requirements = f"{STAGING_DIR}/{REQUIREMENTS_FILE}"
        command = _pip_install(python, settings, requirements)
        return _joined([
            Part(lines=(f"COPY {REQUIREMENTS_FILE} {requirements}",),
                 files=(ContextFile(path=REQUIREMENTS_FILE, content=requirements_file(spec.pip)),)),
            _venv_script_part(spec, settings),
            Part(lines=(f"RUN {settings.uv_mount()}{prepare} \\\n && {command}",))])
    return Part()


def _lock_write_command(spec: EnvironmentSpec, pinned: Lock | None, pip_section: bool,
                        settings: RenderSettings) -> str:
    """The lock script's arguments: write the lock from what was installed, and compare it with spec.lock."""
    write = f"{LOCK_SCRIPT_PATH} write {LOCK_STAGED}"
    if spec.conda is not None:
        write += f" --conda {CONDA_EXPORT}"
    if pip_section:
        write += " --pip" + (f" --uv {settings.uv()}" if settings.uv_image is not None else "")
    if pinned is not None and pinned.has_conda:
        write += f" --pinned-conda {STAGING_DIR}/{CONDA_LOCK}"
    if pinned is not None and pinned.has_pip:
        write += f" --pinned-pip {STAGING_DIR}/{PIP_LOCK}"
    return write


def _lock_write_part(spec: EnvironmentSpec, pinned: Lock | None, settings: RenderSettings,
                     into_image: bool = False) -> Part:
    """The lock script (unless the pinned pip install copied it already), then the lock written to
    /envkiln-lock (and with `into_image` copied to names.LOCK_FILE) and the staging directory removed."""
    python = _python(spec)
    pip_section = pinned.has_pip if pinned is not None else installs_pip(spec)
    write = _lock_write_command(spec, pinned, pip_section, settings)
    cleanup = (f" \\\n && {LOCK_INTO_IMAGE}" if into_image else "") + f" \\\n && rm -rf {STAGING_DIR}"
    if pip_section:
        run = f"RUN {settings.uv_mount()}{python} {write}{cleanup}"
    else:
        # conda without pip packages: the environment may have no Python; then the base's python3 runs
        # the script, and without one the shell writes the [conda] section itself.
        run = (
            f"RUN if lock_python=\"$(command -v {python} || command -v python3)\"; then \\\n"
            f"      \"$lock_python\" {write}; \\\n"
            f"    else \\\n"
            f"      {_conda_lock_in_shell(pinned is not None)}; \\\n"
            f"    fi{cleanup}"
        )
    return _joined([Part() if _pins_pip(pinned) else _SCRIPT_PART, Part(lines=(run,))])


def _env_lines(spec: EnvironmentSpec) -> tuple[str, ...]:
    """The environment of the installed packages: PATH, and for conda what Azure ML sets."""
    path = f"{CONDA_PREFIX}/bin" if spec.conda is not None else f"{VENV_PREFIX}/bin"
    # As Azure ML sets them, without an empty LD_LIBRARY_PATH entry (the current directory) when it
    # was unset. One instruction: the layout of the rendered file is pinned by tests.
    conda = [
        f"ENV CONDA_PREFIX={CONDA_PREFIX} AZUREML_CONDA_ENVIRONMENT_PATH={CONDA_PREFIX} "
        f"LD_LIBRARY_PATH={CONDA_PREFIX}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
    ] if spec.conda is not None else []
    return (f"ENV PATH={path}:$PATH", *conda)


def _image_part(spec: EnvironmentSpec) -> Part:
    """Stage envkiln-image: FROM envkiln-base again, /opt/envkiln copied in, the environment variables."""
    return Part(lines=(f"FROM {BASE_STAGE} AS {IMAGE_STAGE}",
                       f"COPY --from={INSTALL_STAGE} {ENVKILN_ROOT} {ENVKILN_ROOT}", *_env_lines(spec)))


# Last, alone in the image's last layer: the lock the operator reads from the registry. A stage of
# its own, because buildah without --layers commits a whole stage as one layer (Kaniko: one per
# instruction); a stage FROM the image stage adds exactly this one layer with either.
_LOCK_LAYER_PART = Part(lines=(f"FROM {IMAGE_STAGE}", f"COPY --from={INSTALL_STAGE} {LOCK_STAGED} {LOCK_FILE}"))


def _multi_stage(spec: EnvironmentSpec, definition_hash: str, settings: RenderSettings,
                 base_digest: str | None) -> Part:
    """A multi-stage Dockerfile, as Azure ML builds (for Kaniko, and when the base image's user is not known):

    - stage `envkiln-base`: FROM the base (at its digest when known), the labels, the docker steps (as
      whatever user they leave);
    - stage `envkiln-install`: FROM envkiln-base, `USER 0:0` (root, without needing /etc/passwd), the conda
      environment (micromamba), the pip requirements, all under /opt/envkiln; then the lock, written by
      envkiln_lock.py (envkiln.core.locks.LOCK_SCRIPT) to /envkiln-lock/envkiln-lock.txt;
    - stage `envkiln-image`: FROM envkiln-base again, /opt/envkiln copied from the install stage (owned by root, modes
      kept: readable and executable by every user), then the environment: PATH, and for conda CONDA_PREFIX
      and LD_LIBRARY_PATH as Azure ML sets them (plus its AZUREML_CONDA_ENVIRONMENT_PATH);
    - the image: FROM envkiln-image, the lock copied to /opt/envkiln/envkiln-lock.txt, alone in the
      image's last layer (a stage of its own, so that buildah without --layers also makes it one layer).

    So a non-root base is installed into as root and keeps its own USER, WORKDIR, ENTRYPOINT and CMD,
    without envkiln having to know them. pip-only definitions install into a venv made by the base image's
    own Python with `--system-site-packages`: whatever the base has installed stays importable
    (`import torch` on a PyTorch base), and the base's own files are never changed.

    With spec.lock, the install stage installs the lock instead of the definition's packages: its [conda]
    section as an explicit file (no solve), its [pip] section with `--no-deps` (the lines not installed
    already: the base's own packages stay as they are); the lock script then writes the lock again and
    fails the build, naming the packages, when it differs from spec.lock.
    """
    pinned = pinned_lock(spec)
    parts = [_base_part(spec, definition_hash, base_digest)]
    if spec.conda is not None or spec.pip:
        parts += [_install_from_part(spec, settings), _conda_part(spec, pinned, settings),
                  _pip_part(spec, pinned, settings), _lock_write_part(spec, pinned, settings), _image_part(spec),
                  _LOCK_LAYER_PART]
    return _joined(parts)


ROOT_USERS = ("", "0", "0:0", "root", "root:root")


def final_user(spec: EnvironmentSpec, base_user: str) -> str:
    """The user the image runs as: the last USER of the docker steps, else the base image's."""
    user = base_user
    for step in spec.docker_steps or []:
        words = step.split(None, 1)
        if len(words) == 2 and words[0].upper() == "USER":
            user = words[1].strip()
    return user


def _one_stage(spec: EnvironmentSpec, definition_hash: str, settings: RenderSettings, base_digest: str | None,
               base_user: str) -> Part:
    """One build stage, for a builder that mounts tools from images (buildah), with the base image's
    user known (`base_user`, from its config; "" is root):

    - FROM the base (at its digest when known), the docker steps (as whatever user they leave);
    - `USER 0:0` when that user is not root, the conda environment (micromamba mounted from its image)
      and the pip requirements (uv mounted from its image) under /opt/envkiln, the lock written to
      /envkiln-lock, the environment (PATH, conda's variables), then that user again: the base's USER,
      WORKDIR, ENTRYPOINT and CMD (and whatever the docker steps set) are the image's;
    - the labels last, so that an edit of the definition changes only the last instruction of the stage.

    The lock step writes the lock to /envkiln-lock (names.LOCK_EXPORT_DIR: the builder mounts a
    directory of its own there and pushes the lock from it as a one-layer image beside the image,
    names.lock_tag) and copies it to /opt/envkiln/envkiln-lock.txt in the image. No stage copies
    another's root filesystem (BUILDS.md: each stage on vfs is a full copy and commit; the lock's own
    stage cost 13 s of a 95 s build)."""
    assert spec.image is not None
    base, digest = base_reference(spec.image, base_digest)
    label = _labels(definition_hash, spec.image, digest)
    steps = tuple(step.strip() for step in spec.docker_steps or [])
    if spec.conda is None and not spec.pip:
        return Part(lines=(f"FROM {base} AS {IMAGE_STAGE}", *steps, label))
    user = final_user(spec, base_user)
    as_root = user not in ROOT_USERS
    pinned = pinned_lock(spec)
    return _joined([
        Part(lines=(f"FROM {base} AS {IMAGE_STAGE}", *steps, *(("USER 0:0",) if as_root else ()))),
        _conda_part(spec, pinned, settings), _pip_part(spec, pinned, settings),
        _lock_write_part(spec, pinned, settings, into_image=True),
        Part(lines=(*_env_lines(spec), *((f"USER {user}",) if as_root else ()), label)),
    ])


class LockLocation(enum.Enum):
    """Where the operator reads a build's lock from the registry."""

    LAST_LAYER = "the image's last layer"  # the multi-stage render (and earlier one-stage renders)
    LOCK_IMAGE = "the lock image beside the image"  # the one-stage render: names.lock_tag(digest)


def lock_location(dockerfile: str) -> LockLocation | None:
    """Where the build of a rendered Dockerfile leaves its lock (None: it writes none: user build
    contexts, definitions without packages). A builder mounts a directory at names.LOCK_EXPORT_DIR
    and pushes the lock image exactly when this is LOCK_IMAGE."""
    if LOCK_FILE not in dockerfile:
        return None
    return LockLocation.LOCK_IMAGE if LOCK_INTO_IMAGE in dockerfile else LockLocation.LAST_LAYER


HEADER = "# Rendered by envkiln; do not edit. Definition hash "


def _dockerfile(header: str, part: Part) -> str:
    dockerfile = "\n".join([header, *part.lines]) + "\n"
    check_round_trip(dockerfile, list(part.lines))  # every line but the comment is one instruction
    return dockerfile


def _system_managed(spec: EnvironmentSpec, definition_hash: str, settings: RenderSettings,
                    base_digest: str | None, base_user: str | None) -> BuildPlan:
    if settings.tool_mounts and base_user is not None:
        plan = _one_stage(spec, definition_hash, settings, base_digest, base_user)
    else:
        plan = _multi_stage(spec, definition_hash, settings, base_digest)
    return BuildPlan(dockerfile=_dockerfile(HEADER + definition_hash, plan), files=list(plan.files))


# The files of a plan that can be a parent or be built on one (envkiln.core.decisions.parent).
_REUSABLE_FILES = sorted([REQUIREMENTS_FILE, LOCK_SCRIPT_NAME, VENV_SCRIPT_NAME])


def reuse_shape(dockerfile: str, file_paths: list[str]) -> str | None:
    """A one-stage, pip-only plan's Dockerfile without its definition hash (what two plans that differ only
    in their pip requirements share); None for any other plan (multi-stage, conda, a pinned lock, no pip
    requirements, not rendered by envkiln)."""
    header, _, rest = dockerfile.partition("\n")
    if not header.startswith(HEADER) or sorted(file_paths) != _REUSABLE_FILES or LOCK_INTO_IMAGE not in rest:
        return None
    definition_hash = header.removeprefix(HEADER).strip()
    if not re.fullmatch(r"[0-9a-f]{32}", definition_hash):
        return None
    return rest.replace(definition_hash, "<hash>")


def render_on_parent(spec: EnvironmentSpec, definition_hash: str, settings: RenderSettings, base_digest: str | None,
                     base_user: str, parent_image: str) -> str:
    """The Dockerfile that builds a one-stage, pip-only definition FROM the image of an earlier build of
    its namespace (`parent_image`, repository@digest; chosen by envkiln.core.decisions.parent: the same
    render but for some pip requirements, all of which this definition has too). The parent already holds
    the docker steps, the venv, the environment and the base's user: this installs the requirements into
    that venv (uv adds only the missing ones), writes the lock of the whole venv as the one-stage render
    does (to /envkiln-lock and into the image), and sets the labels, with the parent's digest besides.
    The plan's own Dockerfile stays the one from the base: the builder falls back to it when the parent
    cannot be pulled."""
    assert spec.image is not None and spec.pip and spec.conda is None and spec.lock is None
    _, digest = base_reference(spec.image, base_digest)
    label = _labels(definition_hash, spec.image, digest) + f" {IMAGE_LABEL_PARENT}={_quote(parent_image)}"
    user = final_user(spec, base_user)
    as_root = user not in ROOT_USERS
    python, requirements = _python(spec), f"{STAGING_DIR}/{REQUIREMENTS_FILE}"
    part = _joined([
        Part(lines=(f"FROM {parent_image} AS {IMAGE_STAGE}", *(("USER 0:0",) if as_root else ()),
                    f"COPY {REQUIREMENTS_FILE} {requirements}",
                    f"RUN {settings.uv_mount()}{_pip_install(python, settings, requirements)}")),
        _lock_write_part(spec, None, settings, into_image=True),
        Part(lines=(*((f"USER {user}",) if as_root else ()), label)),
    ])
    return _dockerfile(f"{HEADER}{definition_hash}, on {parent_image}", part)


def render(spec: EnvironmentSpec, definition_hash: str, settings: RenderSettings | None = None,
           base_digest: str | None = None, base_user: str | None = None) -> BuildPlan:
    """The build plan for a definition. User build contexts pass through untouched.

    `base_digest`: the digest spec.image's tag points to now ("sha256:..."), which the base stage is
    then FROM (and labelled with); None renders the image as written. `base_user`: the User of the
    base image's config ("" is root; None: not known, which renders the multi-stage Dockerfile).
    Raises InvalidLock when
    spec.lock cannot be read or does not fit the definition."""
    settings = settings or RenderSettings()
    kind = spec.kind
    if kind is EnvironmentKind.BRING_YOUR_OWN:
        raise NothingToBuild("userManaged environments are not built; their image is used as is")
    if kind is EnvironmentKind.BUILD_CONTEXT:
        return BuildPlan(dockerfile="", files=[], context=spec.build)
    return _system_managed(spec, definition_hash, settings, base_digest, base_user)
