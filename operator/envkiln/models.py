"""The resources envkiln serves, as pydantic models.

These models are the single source of truth: the CRDs in crds/ are generated from them
(envkiln.crdgen), the operator and the CLI validate with them. Python attributes are
snake_case; the Kubernetes field names are their camelCase aliases.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from envkiln.imageref import InvalidImageReference, parse_image_reference

# Bounds keep specs small enough for etcd and keep the CRD's CEL rules within the
# API server's cost budget (unbounded lists and strings make CEL rules refuse to install).
MAX_LINE = 1024
MAX_PACKAGES = 500
MAX_STEPS = 100
MAX_STEP_LENGTH = 8192

RESERVED_NAME_PREFIXES = ("azureml-", "microsoft")
DEFAULT_CURATED_NAMESPACE = "envkiln-system"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONDA_CHANNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:+-]*$")
# Characters that could end a line or reach a shell. Requirement and dependency lines are
# written into files in the build context (never onto a RUN line), but a newline or a
# shell metacharacter there is always a mistake or an attack, so they are refused early.
_SHELL_META = set("`$|&\\\n\r\t\0{}")
_PIP_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "--pre", "--only-binary", "--no-binary")
_MARKER_CHARS = re.compile(r"^[A-Za-z0-9_.\s'\"<>=!~()-]*$")
_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,\s-]+\])?"  # name[extras]
    r"(\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+(\s*,\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?"
    r"(\s*@\s*(https|git\+https|file)://\S+)?\s*$"
)
_CONDA_DEP = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._/:+-]*(\[[^\]\n]*\])?(\s*(==|=|>=|<=|>|<|!=|~=)?\s*[A-Za-z0-9.*+!_,|<>=-]*)*$"
)
_STEP_INSTRUCTIONS = {
    "RUN", "ENV", "WORKDIR", "USER", "LABEL", "ARG", "SHELL", "EXPOSE", "VOLUME",
    "ENTRYPOINT", "CMD", "STOPSIGNAL", "HEALTHCHECK", "ONBUILD",
}


def _camel(name: str) -> str:
    return to_camel(name)


class KubeModel(BaseModel):
    """Base for every model that maps to Kubernetes JSON: camelCase aliases, no unknown fields."""

    model_config = ConfigDict(
        alias_generator=_camel,
        populate_by_name=True,
        extra="forbid",
        str_strip_whitespace=False,
        validate_default=True,
    )

    def to_kube(self) -> dict[str, Any]:
        """The Kubernetes JSON form: aliases, and unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(KubeModel):
    # Status written by older or newer operators may carry fields this one does not know.
    model_config = ConfigDict(extra="ignore")


Line = Annotated[str, StringConstraints(max_length=MAX_LINE)]


def _check_line(text: str, what: str) -> str:
    if not text.strip():
        raise ValueError(f"{what} is empty; remove the entry")
    bad = sorted({repr(ch) for ch in text if ch in _SHELL_META})
    if bad:
        raise ValueError(
            f"{what} {text!r} contains {', '.join(bad)}; line breaks and shell metacharacters are not "
            "allowed (put build commands in spec.dockerSteps)"
        )
    if not text.isascii():
        raise ValueError(f"{what} {text!r} contains non-ASCII characters (look for look-alike letters)")
    return text


def check_pip_requirement(text: str, what: str = "requirement") -> str:
    """Validate one pip requirement line (PEP 508 subset, a few index options)."""
    _check_line(text, what)
    stripped = text.strip()
    if stripped.startswith("-"):
        option = stripped.split("=", 1)[0].split(" ", 1)[0]
        if option not in _PIP_OPTIONS:
            raise ValueError(
                f"{what} {text!r}: pip option {option} is not supported; allowed options: {', '.join(_PIP_OPTIONS)}"
            )
        return text
    requirement, _, marker = stripped.partition(";")
    if marker and not _MARKER_CHARS.match(marker):
        raise ValueError(f"{what} {text!r}: the environment marker after ';' has characters a marker cannot have")
    if not _REQUIREMENT.match(requirement.strip()):
        raise ValueError(
            f"{what} {text!r} is not a pip requirement; expected e.g. 'numpy==1.26.4' or 'torch>=2.2,<3'"
        )
    return text


def _pip_item(text: str) -> str:
    return check_pip_requirement(text, "requirement")


def _channel_item(channel: str) -> str:
    _check_line(channel, "channel")
    if not _CONDA_CHANNEL.match(channel):
        raise ValueError(f"{channel!r} is not a conda channel name or URL")
    return channel


def _conda_dep_item(dep: str) -> str:
    _check_line(dep, "dependency")
    if not _CONDA_DEP.match(dep.strip()):
        raise ValueError(f"{dep!r} is not a conda package spec (e.g. numpy=1.26)")
    return dep


PipLine = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_pip_item)]
ChannelLine = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_channel_item)]
CondaDependency = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_conda_dep_item)]


class CondaPipBlock(KubeModel):
    """The `- pip: [...]` entry inside conda dependencies."""

    pip: list[PipLine] = Field(max_length=MAX_PACKAGES)


class CondaSpec(KubeModel):
    """A conda environment specification, as in a conda environment.yml."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="Ignored for the build (the prefix is fixed); kept for round-tripping."
    )
    channels: list[ChannelLine] = Field(default_factory=list, max_length=50)
    dependencies: list[CondaDependency | CondaPipBlock] = Field(max_length=MAX_PACKAGES)

    @field_validator("dependencies")
    @classmethod
    def _dependencies(cls, deps: list[str | CondaPipBlock]) -> list[str | CondaPipBlock]:
        if not deps:
            raise ValueError("dependencies is empty; list at least one package (e.g. python=3.11)")
        pip_blocks = 0
        for dep in deps:
            if isinstance(dep, CondaPipBlock):
                pip_blocks += 1
        if pip_blocks > 1:
            raise ValueError("dependencies has more than one pip block; merge them into one '- pip: [...]'")
        if pip_blocks and not any(
            isinstance(d, str) and re.match(r"^pip(\s*[=<>!~].*)?$", d.strip()) for d in deps
        ):
            # conda only installs the nested pip list when pip itself is a dependency.
            raise ValueError("dependencies has a pip block but no 'pip' package; add '- pip' to dependencies")
        return deps

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(
                "a conda specification is a mapping with 'dependencies' (and optionally 'channels'), "
                f"not {type(data).__name__}"
            )
        if "dependencies" not in data:
            raise ValueError("a conda specification needs 'dependencies' (a list of packages)")
        return data


class ConfigMapContext(KubeModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=253)]

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _DNS_SUBDOMAIN.match(name):
            raise ValueError(f"{name!r} is not a ConfigMap name (lowercase letters, digits, '-' and '.')")
        return name


class GitContext(KubeModel):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    ref: Annotated[str, StringConstraints(min_length=1, max_length=255)] = Field(
        description="A branch, tag or commit. Pin a commit for reproducible builds: the hash covers the ref as written."
    )
    path: Annotated[str, StringConstraints(max_length=1024)] = ""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        _check_line(url, "url")
        if not re.match(r"^(https://|git://|ssh://|git@)[^\s]+$", url):
            raise ValueError(f"{url!r} is not a git URL; use https://host/org/repo.git")
        return url

    @field_validator("ref", "path")
    @classmethod
    def _plain(cls, value: str) -> str:
        if value and (not re.fullmatch(r"[A-Za-z0-9._/+-]+", value) or ".." in value.split("/")):
            raise ValueError(f"{value!r} may only hold letters, digits and . _ / + - (no '..'): a branch, tag, "
                             "commit or path")
        return value


class TarballContext(KubeModel):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="Expected SHA-256 of the tarball; part of the definition hash when given."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        _check_line(url, "url")
        if not re.match(r"^https://[^\s]+$", url):
            raise ValueError(f"{url!r} is not an https URL; tarball contexts are fetched over https")
        return url


class BuildContext(KubeModel):
    """A Docker build context the user brings: exactly one source, plus the Dockerfile path in it."""

    config_map: ConfigMapContext | None = None
    git: GitContext | None = None
    tarball: TarballContext | None = None
    dockerfile_path: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = "Dockerfile"

    @field_validator("dockerfile_path")
    @classmethod
    def _dockerfile_path(cls, path: str) -> str:
        if path.startswith("/") or ".." in path.split("/") or any(ch in _SHELL_META or ch.isspace() for ch in path):
            raise ValueError(f"{path!r} must be a relative path inside the context, without '..' or spaces")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> BuildContext:
        given = [n for n in ("configMap", "git", "tarball") if getattr(self, _snake(n)) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one build context source: configMap, git or tarball"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def source(self) -> Literal["configMap", "git", "tarball"]:
        if self.config_map is not None:
            return "configMap"
        return "git" if self.git is not None else "tarball"


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


class InferenceConfig(KubeModel):
    """Runtime metadata for serving; never enters the hash."""

    liveness_route: Line | None = None
    readiness_route: Line | None = None
    scoring_route: Line | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


DockerStep = Annotated[
    str, StringConstraints(max_length=MAX_STEP_LENGTH), AfterValidator(lambda step: check_docker_step(step))
]


class EnvironmentKind(StrEnum):
    SYSTEM_MANAGED = "SystemManaged"
    BUILD_CONTEXT = "BuildContext"
    BRING_YOUR_OWN = "BringYourOwnContainer"


class EnvironmentSpec(KubeModel):
    """What the user writes under `spec:` of an Environment."""

    version: Annotated[str, StringConstraints(max_length=63)] = Field(
        default="1",
        description="A label for this definition; the image-affecting fields are immutable per version.",
        json_schema_extra={"pattern": _VERSION},
    )
    description: Annotated[str, StringConstraints(max_length=4096)] | None = None
    tags: dict[str, Annotated[str, StringConstraints(max_length=256)]] | None = Field(default=None, max_length=50)
    image: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        default=None, description="Base image (system-managed) or the image to run as is (userManaged)."
    )
    user_managed: bool = Field(
        default=False, description="true: the image already holds everything; envkiln builds nothing."
    )
    conda: CondaSpec | None = None
    pip: list[PipLine] | None = Field(default=None, max_length=MAX_PACKAGES)
    docker_steps: list[DockerStep] | None = Field(
        default=None, max_length=MAX_STEPS, description="Dockerfile instructions applied after FROM."
    )
    build: BuildContext | None = None
    environment_variables: dict[str, Annotated[str, StringConstraints(max_length=MAX_LINE * 4)]] | None = Field(
        default=None, max_length=200
    )
    inference: InferenceConfig | None = None

    @field_validator("version")
    @classmethod
    def _version(cls, version: str) -> str:
        if not re.match(_VERSION, version):
            raise ValueError(
                f"{version!r} is not a version label: letters, digits, '.', '_' and '-', starting with a "
                "letter or digit, at most 63 characters (e.g. \"3\" or \"2024.06\")"
            )
        return version

    @field_validator("image")
    @classmethod
    def _image(cls, image: str | None) -> str | None:
        if image is None:
            return image
        try:
            parse_image_reference(image)
        except InvalidImageReference as error:
            raise ValueError(str(error)) from None
        return image

    @field_validator("pip")
    @classmethod
    def _pip(cls, lines: list[str] | None) -> list[str] | None:
        if lines is not None and not lines:
            raise ValueError("empty list; list at least one requirement or remove the field")
        return lines

    @field_validator("environment_variables")
    @classmethod
    def _env(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (env or {}).items():
            if not _ENV_VAR_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name (letters, digits, '_')")
            if "\0" in value:
                raise ValueError(f"the value of {key} contains a NUL character")
        return env

    @model_validator(mode="after")
    def _kind_rules(self) -> EnvironmentSpec:
        packages = self.conda is not None or bool(self.pip)
        if self.build is not None:
            clashes = [
                field
                for field, present in (
                    ("conda", self.conda is not None),
                    ("pip", self.pip is not None),
                    ("image", self.image is not None),
                    ("dockerSteps", self.docker_steps is not None),
                )
                if present
            ]
            if clashes:
                raise ValueError(
                    f"spec.build cannot be combined with spec.{', spec.'.join(clashes)}: a build context is built "
                    "as is; install packages in its Dockerfile, or drop spec.build for a system-managed environment"
                )
            return self
        if self.image is None:
            if packages or self.docker_steps:
                raise ValueError(
                    "spec.image is required: name the base image to install packages on "
                    "(e.g. python:3.11-slim or mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04)"
                )
            raise ValueError(
                "the definition is empty: set spec.image (with spec.conda/spec.pip/spec.dockerSteps, or "
                "spec.userManaged: true) or spec.build"
            )
        if self.user_managed:
            extra = [f for f, p in (("conda", self.conda), ("pip", self.pip), ("dockerSteps", self.docker_steps)) if p]
            if extra:
                raise ValueError(
                    f"spec.userManaged: true runs spec.image as is, so spec.{', spec.'.join(extra)} would be "
                    "ignored; remove them, or set userManaged: false to have envkiln install them"
                )
            return self
        if not packages and not self.docker_steps:
            raise ValueError(
                "spec.image alone builds nothing: set spec.userManaged: true to run the image as is, "
                "or add spec.conda, spec.pip or spec.dockerSteps"
            )
        return self

    @property
    def kind(self) -> EnvironmentKind:
        if self.build is not None:
            return EnvironmentKind.BUILD_CONTEXT
        if self.user_managed:
            return EnvironmentKind.BRING_YOUR_OWN
        return EnvironmentKind.SYSTEM_MANAGED


def check_docker_step(step: str) -> str:
    if not step.strip():
        raise ValueError("the step is empty; remove it")
    if "\0" in step or "\r" in step:
        raise ValueError("the step contains a NUL or carriage return")
    if not step.isascii():
        raise ValueError("the step contains non-ASCII characters (look for look-alike letters)")
    lines = step.split("\n")
    for line_no, line in enumerate(lines[:-1]):
        if not line.rstrip().endswith("\\"):
            raise ValueError(
                f"the step spans several lines, but line {line_no + 1} does not end with '\\'; give one "
                "instruction per entry (continue lines with a trailing backslash)"
            )
    instruction = step.lstrip().split(None, 1)[0].upper()
    if instruction in ("FROM", "COPY", "ADD"):
        raise ValueError(
            f"{instruction} is not allowed in docker steps (there is no build context and the base "
            "is spec.image); use spec.build with your own Dockerfile instead"
        )
    if instruction not in _STEP_INSTRUCTIONS:
        raise ValueError(
            f"the step starts with {instruction!r}, which is not a Dockerfile instruction; expected one of "
            + ", ".join(sorted(_STEP_INSTRUCTIONS))
        )
    if instruction == "ONBUILD" and re.match(r"^\s*ONBUILD\s+(FROM|COPY|ADD)\b", step, re.IGNORECASE):
        raise ValueError("ONBUILD may not wrap FROM, COPY or ADD")
    return step


class ObjectMeta(KubeModel):
    """The part of metadata envkiln reads; everything else passes through."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        if name is not None and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
            raise ValueError(
                f"{name!r} is not a valid resource name: lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit, at most 253 characters"
            )
        return name


class Environment(KubeModel):
    """A whole Environment manifest."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["envkiln.dev/v1alpha1"] = "envkiln.dev/v1alpha1"
    kind: Literal["Environment"] = "Environment"
    metadata: ObjectMeta
    spec: EnvironmentSpec

    @model_validator(mode="after")
    def _named(self) -> Environment:
        if not self.metadata.name and not self.metadata.generate_name:
            raise ValueError("metadata.name is required")
        return self


def check_reserved_name(name: str, namespace: str | None, curated_namespace: str = DEFAULT_CURATED_NAMESPACE) -> None:
    """Refuse the curated prefixes outside the curated namespace (the chart's admission policy does the same)."""
    lowered = name.lower()
    for prefix in RESERVED_NAME_PREFIXES:
        if lowered.startswith(prefix) and namespace != curated_namespace:
            raise ValueError(
                f"metadata.name: {name!r} starts with the reserved prefix {prefix!r}, which only curated "
                f"environments in namespace {curated_namespace!r} may use; rename the environment"
            )


# --- status ----------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """metav1.Condition."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    status: ConditionStatus
    reason: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)]
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    last_transition_time: str
    observed_generation: int | None = Field(default=None, ge=0)


class Phase(StrEnum):
    PENDING = "Pending"
    BUILDING = "Building"
    READY = "Ready"
    FAILED = "Failed"


class VersionRecord(StatusModel):
    version: str
    hash: str
    image_ref: str | None = None
    when: str


class EnvironmentStatus(StatusModel):
    phase: Phase | None = None
    kind: EnvironmentKind | None = Field(default=None, description="Which of the three kinds this definition is.")
    hash: str | None = None
    short_hash: str | None = Field(default=None, description="First 12 characters of the hash, for listings.")
    image: str | None = Field(default=None, description="repository:tag of the built image.")
    image_digest: str | None = None
    image_ref: str | None = Field(default=None, description="repository@sha256:... — what workloads run.")
    cache_hit: bool | None = None
    build: str | None = Field(default=None, description="Name of the EnvironmentBuild for this hash.")
    message: str | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None
    versions: list[VersionRecord] | None = None


class ContextFile(KubeModel):
    path: str
    content: str


class BuildPlan(KubeModel):
    """Everything a builder needs, rendered from a definition (envkiln.render)."""

    dockerfile: str = Field(description="The rendered Dockerfile (empty for user build contexts).")
    files: list[ContextFile] = Field(default_factory=list, description="Context files besides the Dockerfile.")
    context: BuildContext | None = Field(default=None, description="The user's build context, passed through.")


class BuildReason(StrEnum):
    NEW_DEFINITION = "NewDefinition"
    IMAGE_MISSING = "ImageMissing"


class EnvironmentBuildSpec(KubeModel):
    hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    image: str = Field(description="Destination repository:tag (the tag is the hash).")
    builder: Literal["kaniko", "local"] = "kaniko"
    plan: BuildPlan
    reason: BuildReason = BuildReason.IMAGE_MISSING


class BuildPhase(StrEnum):
    PENDING = "Pending"
    BUILDING = "Building"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class EnvironmentBuildStatus(StatusModel):
    phase: BuildPhase | None = None
    job: str | None = Field(default=None, description="The Job (kaniko) of the current attempt.")
    attempts: int | None = Field(default=None, description="Attempts started so far (1 = first try).")
    retry_after: str | None = Field(default=None, description="The next attempt starts after this time.")
    builder_instance: str | None = Field(default=None, description="Operator process running a local build.")
    start_time: str | None = None
    completion_time: str | None = None
    digest: str | None = None
    image_ref: str | None = None
    log_tail: str | None = None
    message: str | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None


class EnvironmentBuildManifest(KubeModel):
    model_config = ConfigDict(extra="ignore")

    api_version: Literal["envkiln.dev/v1alpha1"] = "envkiln.dev/v1alpha1"
    kind: Literal["EnvironmentBuild"] = "EnvironmentBuild"
    metadata: ObjectMeta
    spec: EnvironmentBuildSpec
