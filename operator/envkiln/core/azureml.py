"""`envkiln import azureml`: Azure Machine Learning CLI v2 YAML to Environment manifests.

Pure core (files in, manifests and one outcome per definition out; no cluster). It reads:

- environment YAML (`image`, `conda_file`, `build.path` + `build.dockerfile_path`, `inference_config`...);
- job, command, sweep, pipeline, parallel and component YAML: every `environment:` found in them, inline
  or a reference; `component:` / `trial:` values naming another YAML file are followed;
- online and batch deployment YAML (`environment:` with `inference_config`);
- asset folders: `asset.yaml` (`spec:`, `extra_config:`) and/or `spec.yaml`, with the build context or
  conda file in a subfolder; the asset placeholders `{{asset.name}}`, `{{asset.version}}`,
  `{{image.context.path}}` (`{{image.context.dir}}`), `{{image.dockerfile.path}}` are filled in.

Azure's release-pipeline templates: `--set NAME=VALUE` (ImportOptions.variables) fills any; by default
`{{latest-image-tag}}` is `latest` and `=={{latest-pypi-version}}` pins are dropped (recorded in an annotation
and said on the stderr line); any other is an error naming the file, the field (or line) and the --set.

Names and versions become Kubernetes names and envkiln versions (the originals are kept in annotations,
envkiln.core.names); tags become strings; pip lists as Azure writes them (`-r`, `-c`, index options; an index
URL with credentials is dropped, never hashed); every reference form (`azureml:NAME[:VERSION|@LABEL]`,
`azureml://registries/R/environments/NAME[/versions/V|/labels/L]`, the workspace's full form) is reported, and
curated ones are mapped to the nearest envkiln curated environment (envkiln.core.catalog) with the gaps stated,
or said to have no family. Directory build contexts become a ConfigMap
when they are small (top-level files as keys; subdirectories packed in the key `.envkiln-context.tar`, which
the build unpacks), otherwise a tarball the importer writes (to be uploaded where `tarball_url` says).

Only the imported tree is read: each PATH given (a file's folder), or `ImportOptions.root`. A path a
definition names (conda_file, build.path, build.dockerfile_path, `-r` files, component, trial, environment
files, asset spec and extra_config) must be relative and stay inside it, and no symbolic link is followed
or packed, anywhere: each is an error naming the file and the field. Errors never quote a file's text: a
file that is not valid YAML is named with the line and column of the problem, a Dockerfile or
requirements file with the line.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import yaml

from envkiln.core.catalog import CATALOG, counterpart
from envkiln.core.decisions.curated import reserved_prefix
from envkiln.core.definition import UnresolvedGitRef, definition_hash
from envkiln.core.errors import DefinitionError
from envkiln.core.manifests import parse_environment
from envkiln.core.models import StrictLoader
from envkiln.core.names import (
    ANNOTATION_AZUREML_IGNORED,
    ANNOTATION_AZUREML_NAME,
    ANNOTATION_AZUREML_SOURCE,
    ANNOTATION_AZUREML_TEMPLATES,
    ANNOTATION_AZUREML_VERSION,
    API_VERSION,
    CONTEXT_TREE_KEY,
    CURATED_LABEL_PREFIX,
    CURATED_REFERENCE_PREFIX,
    DEFAULT_CURATED_NAMESPACE,
    KIND_ENVIRONMENT,
    LATEST,
)

# A ConfigMap holds at most 1 MiB (data, base64 binaryData and metadata together).
DEFAULT_MAX_CONFIGMAP_BYTES = 768 * 1024
MAX_NAME = 63  # pods name their environment in a label value: at most 63 characters
_CONFIG_MAP_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_TEMPLATE = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
_YAML_SUFFIXES = (".yml", ".yaml")

# Azure ML environment fields envkiln maps; every other field is reported as ignored.
_ENV_FIELDS = {"name", "version", "description", "tags", "image", "conda_file", "build", "inference_config",
               "os_type", "$schema"}

# asset.yaml fields the importer reads (others, e.g. `categories`, `test`, are listed as ignored).
_ASSET_FIELDS = {"name", "version", "type", "spec", "extra_config"}
# The templates Azure's asset release pipeline fills, and what envkiln fills them with by default.
LATEST_IMAGE_TAG = "latest-image-tag"  # the newest tag of the image: `latest` (the build pins its digest)
LATEST_PYPI_VERSION = "latest-pypi-version"  # the newest release: the pin is dropped
_PYPI_PIN = re.compile(r"\s*(===|==|~=|>=|<=|!=|=|>|<)\s*\{\{\s*" + re.escape(LATEST_PYPI_VERSION) + r"\s*\}\}")
# Template names an error names (with the --set that fills them): Azure's are lowercase (`asset.repo.url`).
# Others are not quoted: they are the file's text.
_SET_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# Files of a build context besides Dockerfiles whose known templates are filled (unknown ones are left: they
# may be the file's own templating).
_TEMPLATED_SUFFIXES = (".txt", ".in", ".yml", ".yaml")
# Azure ML registries that hold Azure's curated environments.
CURATED_REGISTRIES = ("azureml", "azureml-meta", "azureml-preview")

Status = Literal["imported", "skipped", "curated", "reference", "error"]


class ImportProblem(ValueError):
    """A definition that cannot be imported; the message names the file and the field."""


@dataclass
class ImportOptions:
    namespace: str | None = None
    curated_namespace: str = DEFAULT_CURATED_NAMESPACE
    max_configmap_bytes: int = DEFAULT_MAX_CONFIGMAP_BYTES
    tarball_url: str | None = None  # https base URL where written tarballs will be served
    tarball_dir: Path = Path(".")  # where tarballs are written
    root: Path | None = None  # the tree no path may leave; None: each path given (a file's folder)
    # `--set NAME=VALUE`: fills `{{NAME}}` anywhere (before the defaults: {{latest-image-tag}} -> latest, and
    # `=={{latest-pypi-version}}` pins dropped).
    variables: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    """One definition (or reference) found, and what became of it: the stderr line."""

    source: str  # file: field
    status: Status
    message: str
    name: str | None = None
    documents: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        if self.message.startswith(self.source):  # the message names the file and field itself
            return f"{self.status}: {self.message}"
        subject = f"{self.source}" + (f" -> {self.name}" if self.name else "")
        return f"{self.status}: {subject}: {self.message}"


@dataclass
class _Context:
    options: ImportOptions
    outcomes: list[Outcome] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # name -> definition identity
    seen_files: set[Path] = field(default_factory=set)
    consumed: set[Path] = field(default_factory=set)  # conda files and specs read through another file
    tarballs: dict[Path, bytes] = field(default_factory=dict)
    root: Path = Path(".")  # the imported tree (absolute, not resolved) of what is being read now
    # Of the definition being imported now: the asset's variables ({{asset.name}}...), the templates filled
    # (where -> the text as written) and notes for its stderr line.
    asset_variables: dict[str, str] = field(default_factory=dict)
    asset_ignored: list[str] = field(default_factory=list)  # fields of asset.yaml and extra_config not used
    templated: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _at(where: str, name: str) -> str:
    """A field under `where`: `FILE: name` for a file's own fields, `FILE: a.b.name` below a field."""
    return f"{where}.{name}" if ": " in where else f"{where}: {name}"


# --- names, tags, versions ----------------------------------------------------------------------------


def kube_name(name: str) -> str:
    """A valid Environment name (DNS subdomain, at most 63 characters) for an Azure ML name."""
    lowered = name.strip().lower()
    coerced = re.sub(r"[^a-z0-9.-]+", "-", lowered)
    coerced = re.sub(r"-*\.[-.]*", ".", coerced)
    coerced = re.sub(r"-{2,}", "-", coerced).strip(".-")
    if not coerced:
        coerced = "env-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    if len(coerced) > MAX_NAME:
        coerced = coerced[:MAX_NAME - 9].rstrip(".-") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return coerced


def tag_value(value: Any) -> str:
    """Azure ML tags are any YAML value; Kubernetes-side they are strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def coerce_version(text: str) -> str:
    """A valid envkiln version for an Azure ML version (`1-<VERSION>` -> `1-VERSION`), as names are coerced:
    other characters become '-', it starts with a letter or digit, at most 63 characters (a hash suffix when
    cut)."""
    if _VERSION.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    coerced = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip())
    coerced = re.sub(r"-{2,}", "-", coerced)
    coerced = re.sub(r"^[^A-Za-z0-9]+", "", coerced).rstrip("-._")
    if not coerced:
        return "v-" + digest
    if len(coerced) > MAX_NAME:
        coerced = coerced[:MAX_NAME - 9].rstrip("-._") + "-" + digest
    return coerced


def _version(value: Any) -> tuple[str, str | None]:
    """(the envkiln version, the Azure version as written when it had to be coerced)."""
    if value is None or value == "auto":
        return "1", None
    text = tag_value(value)
    coerced = coerce_version(text)
    return coerced, (text if coerced != text else None)


# --- templating ---------------------------------------------------------------------------------------


def _template_problem(key: str, where: str, ctx: _Context) -> ImportProblem:
    known = sorted({*ctx.asset_variables, *ctx.options.variables, LATEST_IMAGE_TAG})
    if _SET_NAME.fullmatch(key):
        fill = f"fill it with --set {key}=VALUE (envkiln import azureml ... --set {key}=VALUE)"
        shown = "{{" + key + "}}"
    else:  # not one of Azure's names: not quoted (it is the file's text)
        fill, shown = "write the value itself, or fill it with --set NAME=VALUE", "templating ({{...}})"
    return ImportProblem(f"{where}: {shown} is Azure ML templating that nothing fills here (Azure's asset release "
                         f"pipeline fills it); {fill}; filled here: " + ", ".join("{{" + k + "}}" for k in known))


def _fill_text(text: str, where: str, ctx: _Context, strict: bool = True) -> str:
    """`text` with its templates filled: `--set` values first, then the asset's variables, then the defaults
    ({{latest-image-tag}} -> latest; a `=={{latest-pypi-version}}` pin dropped). What is filled by a default or
    --set is recorded (ctx.templated). An unfilled template is an error naming `where` and the --set that fills
    it (`strict`), or left as written."""
    if "{{" not in text:
        return text
    given = ctx.options.variables
    filled = text
    if LATEST_PYPI_VERSION not in given:
        filled = _PYPI_PIN.sub("", filled)

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in given:
            return given[key]
        if key in ctx.asset_variables:
            return ctx.asset_variables[key]
        if key == LATEST_IMAGE_TAG:
            return "latest"
        if strict:
            raise _template_problem(key, where, ctx)
        return match.group(0)

    filled = _TEMPLATE.sub(replace, filled)
    if filled != text and any(m.group(1) not in ctx.asset_variables or m.group(1) in given
                              for m in _TEMPLATE.finditer(text)):
        ctx.templated[where] = text[:300]
    return filled


def _fill(value: Any, where: str, ctx: _Context) -> Any:
    """Every string of a YAML value filled (`_fill_text`); an unfilled template is an error naming the field."""
    if isinstance(value, str):
        return _fill_text(value, where, ctx)
    if isinstance(value, dict):
        return {k: _fill(v, _at(where, str(k)), ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, f"{where}[{i}]", ctx) for i, v in enumerate(value)]
    return value


def _fill_file(path: Path, shown: str, ctx: _Context, strict: bool) -> bytes | None:
    """A build context file with its templates filled line by line (None: unchanged, or not text). Errors
    name the file and line, never its text."""
    raw = path.read_bytes()
    if b"{{" not in raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    filled = [_fill_text(line, f"{shown} line {number}", ctx, strict) for number, line in enumerate(lines, start=1)]
    return None if filled == lines else "\n".join(filled).encode("utf-8")


# --- the imported tree --------------------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    """`path` absolute and normalised ('..' taken away lexically), symbolic links not resolved."""
    return Path(os.path.abspath(path))


def _link_in(path: Path, root: Path) -> Path | None:
    """The first symbolic link on the way from `root` (excluded) to `path` (included), if any."""
    here = root
    for part in path.relative_to(root).parts:
        here = here / part
        if here.is_symlink():
            return here
    return None


def _confined(base: Path, written: str, where: str, ctx: _Context) -> Path:
    """The path `written` in a definition (relative to `base`, the folder of the file that names it),
    refused with `where` (the file and field) unless it is relative, stays in the imported tree, and
    goes through no symbolic link. The tree's own folder may be reached through a link (the user named
    it); nothing below it."""
    if "\0" in written:
        raise ImportProblem(f"{where}: the path holds a NUL character; write a plain relative path")
    if not written or PurePosixPath(written).is_absolute() or PureWindowsPath(written).drive or \
            written.startswith("~"):
        raise ImportProblem(f"{where}: {written!r} is not a relative path; write the path relative to the file, "
                            f"inside the imported tree {ctx.root}")
    path = _absolute(base / written)
    if not path.is_relative_to(ctx.root):
        raise ImportProblem(f"{where}: {written!r} leaves the imported tree {ctx.root}; keep the file inside it, "
                            "or import from a root that holds both (envkiln import azureml --root DIR)")
    _no_link(path, where, ctx)
    return Path(os.path.normpath(base / written))  # the same file, as the user's paths spell it


def _no_link(path: Path, where: str, ctx: _Context) -> None:
    link = _link_in(_absolute(path), ctx.root)
    if link is not None:
        raise ImportProblem(f"{where}: {_shown(link)} is a symbolic link; the importer reads only real files inside "
                            "the imported tree (copy the file there)")
    if path.exists() and not path.resolve().is_relative_to(ctx.root.resolve()):
        raise ImportProblem(f"{where}: {_shown(path)} is outside the imported tree {ctx.root}")


def _shown(path: Path) -> str:
    """A path as messages show it: relative to the working folder when under it."""
    absolute = _absolute(path)
    here = _absolute(Path("."))
    return str(absolute.relative_to(here)) if absolute.is_relative_to(here) else str(absolute)


# --- reading files ------------------------------------------------------------------------------------

# What a YAML problem says, without what the file holds: quoted text (a key, an alias, a tag) becomes '…';
# grammar tokens ('<stream end>', one character such as ',') stay.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _unquoted(problem: str) -> str:
    return _QUOTED.sub(lambda m: m.group(0) if len(m.group(0)) <= 3 or re.fullmatch(r".<[a-z ]+>.", m.group(0))
                       else "…", problem)


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None)
    return f"not valid YAML{where}" + (f": {_unquoted(problem)}" if isinstance(problem, str) else "")


def _read_text(path: Path, where: str | None = None) -> str:
    """The file's text; ImportProblem names `where` (the file and field that name it), the file and why,
    never what it holds."""
    named = f"{where}: {path}" if where else str(path)
    try:
        if stat.S_ISLNK(path.lstat().st_mode):
            raise ImportProblem(f"{named}: a symbolic link; the importer reads only real files inside the tree")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ImportProblem(f"{named}: not UTF-8 text") from None
    except OSError as error:
        raise ImportProblem(f"{named}: cannot read: {error.strerror or type(error).__name__}") from None


def _load_yaml(path: Path) -> list[Any]:
    text = _read_text(path)
    try:
        return [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as error:
        raise ImportProblem(f"{path}: {_yaml_problem(error)}") from None
    except (ValueError, OverflowError):  # a scalar that resolves to a type but cannot be built (2024-13-01)
        raise ImportProblem(f"{path}: not valid YAML: a value cannot be read (an impossible date or number)") from None


def _one_mapping(path: Path) -> dict[str, Any]:
    documents = _load_yaml(path)
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise ImportProblem(f"{path}: expected one YAML mapping")
    return documents[0]


@dataclass
class _PipBlock:
    """The pip lines of one block as read (`-r` files inlined) and the constraints (`-c` files) found in it."""

    lines: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)  # `NAME SPECIFIERS`, in the order read


# Where the build finds a definition's constraints (`-c` files): a file the docker steps write, named by pip's and
# uv's own variables, so the conda pip block, the pip install and uv all honour them, for every package they
# install (named or not), as `pip install -c` does.
CONSTRAINTS_FILE = "/etc/envkiln/pip-constraints.txt"
_CONSTRAINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?\s*"
                         r"(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+(\s*,\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*")
_STEP_BUDGET = 900  # characters of constraints per RUN step (a docker step holds at most 1024)


# A requirement or constraint: name, extras, specifiers, marker (pip's requirement syntax, without URLs).
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s@]+@")
_INDEX_OPTION = re.compile(r"(-i|--index-url|--extra-index-url)(?:\s+|=)(\S+)")


def _requirements_lines(path: Path, where: str, ctx: _Context, block: _PipBlock, depth: int = 0) -> None:
    """The lines of a pip requirements file into `block`, `-r` and `-c` files read (relative to it)."""
    if depth > 10:
        raise ImportProblem(f"{where}: -r files nest more than 10 deep")
    text = _read_text(path, f"{where}: -r")
    ctx.consumed.add(path.resolve())
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            line_where = f"{where} ({path} line {number})"
            _pip_line(_fill_text(line, line_where, ctx), path.parent, line_where, ctx, block, depth)


def _constraints(path: Path, where: str, ctx: _Context, block: _PipBlock) -> None:
    """A constraints file (`-c`): each line `NAME SPECIFIERS`, kept to apply to the block's requirements."""
    text = _read_text(path, f"{where}: -c")
    ctx.consumed.add(path.resolve())
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _fill_text(re.sub(r"(^|\s)#.*$", "", raw).strip(), f"{where} ({path} line {number})", ctx)
        if not line:
            continue
        if not _CONSTRAINT.fullmatch(line):
            raise ImportProblem(f"{where} ({path} line {number}): not a constraint envkiln reads (a name and version "
                                "specifiers, e.g. 'numpy==1.26.4' or 'urllib3<2', without a marker or URL); write it "
                                "so, or drop it")
        if line not in block.constraints:
            block.constraints.append(line)


def _pip_line(line: str, base: Path, where: str, ctx: _Context, block: _PipBlock, depth: int = 0) -> None:
    """One pip entry as Azure ML writes it, into `block`: `-r FILE` inlined, `-c FILE` read as constraints,
    `-i URL` written `--index-url URL`, an index URL with credentials dropped (said on the stderr line)."""
    match = re.fullmatch(r"(-r|--requirement)(\s+|=)(\S+)", line)
    if match:
        _requirements_lines(_confined(base, match.group(3), f"{where}: -r", ctx), where, ctx, block, depth + 1)
        return
    match = re.fullmatch(r"(-c|--constraint)(\s+|=)(\S+)", line)
    if match:
        _constraints(_confined(base, match.group(3), f"{where}: -c", ctx), where, ctx, block)
        return
    match = _INDEX_OPTION.fullmatch(line)
    if match:
        option = "--index-url" if match.group(1) == "-i" else match.group(1)
        if _USERINFO.match(match.group(2)) or "$" in match.group(2):
            ctx.notes.append(
                f"{where}: {option} with credentials dropped (they would enter the definition hash and be readable "
                "in the Environment): give the build that index through the build env, e.g. PIP_EXTRA_INDEX_URL in "
                "the chart's builds.env or builds.namespaces.NAMESPACE.env (docs/registries.md)")
            return
        block.lines.append(f"{option} {match.group(2)}")
        return
    if _USERINFO.search(line):
        raise ImportProblem(f"{where}: a URL with credentials (user:password@); they would enter the definition hash "
                            "and be readable in the Environment: serve the file from an index the build env names "
                            "(docs/registries.md) and write its name and version")
    block.lines.append(line)


def constraint_steps(constraints: list[str]) -> list[str]:
    """Docker steps that write `constraints` to CONSTRAINTS_FILE and name it in PIP_CONSTRAINT and UV_CONSTRAINT
    (they stay set in the image: later pip installs there keep to them too). Each constraint is a name and
    specifiers (_CONSTRAINT), safe inside single quotes."""
    steps: list[str] = []
    chunk: list[str] = []
    for constraint in [*constraints, ""]:
        if chunk and (not constraint or sum(len(c) + 3 for c in chunk) + len(constraint) > _STEP_BUDGET):
            quoted = " ".join(f"'{c}'" for c in chunk)
            steps.append(f"RUN mkdir -p {CONSTRAINTS_FILE.rsplit('/', 1)[0]} && printf '%s\\n' {quoted} "
                         f"{'>' if not steps else '>>'} {CONSTRAINTS_FILE}")
            chunk = []
        if constraint:
            chunk.append(constraint)
    if steps:
        steps.append(f"ENV PIP_CONSTRAINT={CONSTRAINTS_FILE} UV_CONSTRAINT={CONSTRAINTS_FILE}")
    return steps


def _conda_spec(value: Any, base: Path, where: str, ctx: _Context
                ) -> tuple[dict[str, Any], dict[str, str], list[str], list[str]]:
    """(the envkiln conda spec, environment variables from conda `variables`, ignored conda fields, the
    constraints of its pip block's `-c` files)."""
    if isinstance(value, str):
        path = _confined(base, value, where, ctx)
        where = f"{where} ({value})"
        document = _one_mapping(path)
        ctx.consumed.add(path.resolve())
        base = path.parent
    elif isinstance(value, dict):
        document = value
    else:
        raise ImportProblem(f"{where}: conda_file is a path or a mapping, not {type(value).__name__}")
    document = _fill(document, where, ctx)
    ignored = [f"conda_file.{k}" for k in document if k not in ("name", "channels", "dependencies", "variables")]
    dependencies: list[Any] = []
    constraints: list[str] = []
    for index, dep in enumerate(document.get("dependencies") or []):
        if isinstance(dep, dict) and set(dep) == {"pip"}:
            block = _PipBlock()
            for line in dep["pip"] or []:
                _pip_line(str(line).strip(), base, f"{where}: dependencies[{index}].pip", ctx, block)
            dependencies.append({"pip": block.lines})
            constraints += block.constraints
        else:
            dependencies.append(dep if isinstance(dep, dict) else tag_value(dep))
    spec: dict[str, Any] = {"dependencies": dependencies}
    if document.get("channels"):
        spec["channels"] = [tag_value(c) for c in document["channels"]]
    variables = {str(k): tag_value(v) for k, v in (document.get("variables") or {}).items()}
    return spec, variables, ignored, constraints


# --- build contexts -----------------------------------------------------------------------------------


def _context_files(root: Path, where: str) -> list[Path]:
    """The regular files of a build context folder (not under .git), sorted; a symbolic link anywhere in it
    (to a file or a folder) is refused, naming it: it would pack a file from outside the tree."""
    files = []
    for folder, folders, names in os.walk(root, followlinks=False):
        here = Path(folder)
        folders[:] = [name for name in folders if name != ".git"]
        for name in [*folders, *names]:
            if (here / name).is_symlink():
                raise ImportProblem(f"{where}: {_shown(here / name)} is a symbolic link; a build context is packed "
                                    "from real files only (copy what it points to into the folder)")
        files += [here / name for name in names if (here / name).is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def deterministic_tar(root: Path, files: list[Path], contents: dict[Path, bytes] | None = None) -> bytes:
    """An uncompressed tar of `files` under `root`: sorted, no times, owners or modes beyond the exec bit,
    so the same tree always gives the same bytes (and sha256). `contents`: files whose bytes are these
    (templates filled) instead of what is on disk."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for path in files:
            relative = path.relative_to(root).as_posix()
            parts = relative.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            data = (contents or {})[path] if path in (contents or {}) else path.read_bytes()
            info = tarfile.TarInfo(relative)
            info.size, info.mtime = len(data), 0
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _git_context(url: str, dockerfile: str, where: str) -> dict[str, Any]:
    # Docker's git context syntax: https://host/org/repo.git#REF:DIR
    repository, _, fragment = url.partition("#")
    ref, _, path = fragment.partition(":")
    if not ref:
        raise ImportProblem(f"{_at(where, 'build.path')}: {url!r} names no ref; write {repository}#REF[:DIR] "
                            "(a branch, tag or commit: envkiln resolves it to a commit)")
    return {"git": {"url": repository, "ref": ref, "path": path}, "dockerfilePath": dockerfile}


def _directory_context(directory: Path, dockerfile: str, name: str, where: str, ctx: _Context
                       ) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """(spec.build, extra documents, what was chosen) for a local build context directory."""
    if not directory.is_dir():
        raise ImportProblem(f"{_at(where, 'build.path')}: {directory} is not a directory")
    field_path = _at(where, "build.dockerfile_path")
    if not _absolute(directory / dockerfile).is_relative_to(_absolute(directory)):
        raise ImportProblem(f"{field_path}: {dockerfile!r} is not inside the build context {directory}; give its "
                            "path relative to build.path, without '..'")
    _confined(directory, dockerfile, field_path, ctx)
    files = _context_files(directory, _at(where, "build.path"))
    if not (directory / dockerfile).is_file():
        raise ImportProblem(f"{field_path}: {dockerfile!r} is not a file in {directory}")
    # Templates: in Dockerfiles every one is filled or an error naming the line; in requirement and conda
    # files the known ones are filled and others left as written.
    contents: dict[Path, bytes] = {}
    for path in files:
        dockerfile_like = path.name.startswith("Dockerfile") or path == directory / dockerfile
        if dockerfile_like or path.suffix in _TEMPLATED_SUFFIXES:
            filled = _fill_file(path, str(path), ctx, strict=dockerfile_like)
            if filled is not None:
                contents[path] = filled
    # Top-level files whose names are ConfigMap keys are keys (readable in the ConfigMap); the rest (files in
    # subdirectories, other names) go into one tar under the key CONTEXT_TREE_KEY, which the build unpacks.
    tree = [p for p in files if p.parent != directory or not _CONFIG_MAP_KEY.fullmatch(p.name)
            or p.name.startswith("..") or p.name == CONTEXT_TREE_KEY]
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    size = 0
    for path in files:
        if path in tree:
            continue
        raw = contents[path] if path in contents else path.read_bytes()
        try:
            data[path.name] = raw.decode("utf-8")
            size += len(raw)
        except UnicodeDecodeError:
            binary[path.name] = base64.b64encode(raw).decode()
            size += len(binary[path.name])
    if tree:
        binary[CONTEXT_TREE_KEY] = base64.b64encode(deterministic_tar(directory, tree, contents)).decode()
        size += len(binary[CONTEXT_TREE_KEY])
    if size <= ctx.options.max_configmap_bytes:
        config_map_name = kube_name(f"{name}-context")
        config_map: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": config_map_name}}
        if ctx.options.namespace:
            config_map["metadata"]["namespace"] = ctx.options.namespace
        if data:
            config_map["data"] = data
        if binary:
            config_map["binaryData"] = binary
        packed = (f"; {len(tree)} in subdirectories or not named as ConfigMap keys are packed in {CONTEXT_TREE_KEY}, "
                  "which the build unpacks" if tree else "")
        chosen = f"build context: ConfigMap {config_map_name} ({len(files)} files, {size} bytes{packed})"
        return {"configMap": {"name": config_map_name}, "dockerfilePath": dockerfile}, [config_map], chosen
    why = f"{size} bytes is more than a ConfigMap holds (limit {ctx.options.max_configmap_bytes})"
    if not ctx.options.tarball_url:
        raise ImportProblem(
            f"{_at(where, 'build.path')}: {directory} cannot be a ConfigMap context: {why}; rerun with --tarball-url "
            "https://HOST/PATH/ (the importer writes the tarball for you to upload there), or push the directory "
            "to git and write spec.build.git (url, a commit as ref, path)")
    archive = deterministic_tar(directory, files, contents)
    filename = f"{name}-context.tar"
    target = ctx.options.tarball_dir / filename
    ctx.tarballs[target] = archive
    url = ctx.options.tarball_url.rstrip("/") + "/" + filename
    digest = hashlib.sha256(archive).hexdigest()
    chosen = f"build context: tarball {target} ({len(files)} files; {why}): upload it to {url}"
    return {"tarball": {"url": url, "sha256": digest}, "dockerfilePath": dockerfile}, [], chosen


# --- curated references -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    name: str
    version: str | None  # None: a label, or the newest version
    registry: str | None  # None: the workspace
    label: str | None = None  # `@LABEL`, `/labels/LABEL` (`latest` or any other)

    @property
    def curated(self) -> bool:
        return (self.registry or "").lower() in CURATED_REGISTRIES or self.name.lower().startswith("azureml-")


_REGISTRY_REFERENCE = re.compile(
    r"azureml://registries/(?P<registry>[^/]+)/environments/(?P<name>[^/]+)(?:/(?P<kind>versions|labels)/(?P<value>[^/]+))?",
    re.IGNORECASE)
_WORKSPACE_REFERENCE = re.compile(
    r"azureml:/{1,2}subscriptions/[^/]+/resource[gG]roups/[^/]+/(?:providers/Microsoft\.MachineLearningServices/)?"
    r"workspaces/[^/]+/environments/(?P<name>[^/]+)(?:/(?P<kind>versions|labels)/(?P<value>[^/]+))?", re.IGNORECASE)
_SHORT_REFERENCE = re.compile(r"azureml:(?P<name>[^:@/]+)(?::(?P<version>[^:@/]+)|@(?P<label>[^:@/]+))?")


def parse_reference(text: str) -> Reference | None:
    """Every form Azure ML accepts: `azureml:NAME`, `azureml:NAME:VERSION`, `azureml:NAME@LABEL`,
    `azureml://registries/REG/environments/NAME[/versions/V | /labels/L]`, and the workspace's full form
    `azureml://subscriptions/S/resourceGroups/G/workspaces/W/environments/NAME[/versions/V | /labels/L]`;
    None otherwise."""
    text = text.strip()
    match = _REGISTRY_REFERENCE.fullmatch(text) or _WORKSPACE_REFERENCE.fullmatch(text)
    if match:
        kind, value = match.group("kind"), match.group("value")
        registry = match.groupdict().get("registry")
        return Reference(match.group("name"), value if kind and kind.lower() == "versions" else None, registry,
                         value if kind and kind.lower() == "labels" else None)
    match = _SHORT_REFERENCE.fullmatch(text)
    if match:
        return Reference(match.group("name"), match.group("version"), None, match.group("label"))
    return None


def curated_counterpart(reference: Reference) -> str | None:
    """The envkiln curated environment for a curated reference (the nearest of its family), or None."""
    if not reference.curated:
        return None
    target = counterpart(reference.name).target
    return target.name if target else None


def _wanted(reference: Reference) -> str:
    if reference.version:
        return f"version {reference.version}"
    if reference.label and reference.label != LATEST:
        return f"label {reference.label}"
    return "the newest version"


def _reference_outcome(text: str, reference: Reference, source: str, ctx: _Context) -> Outcome:
    wanted = _wanted(reference)
    label_note = (f"; Azure's label {reference.label!r} has no envkiln counterpart (envkiln knows versions and "
                  "@latest)" if reference.label and reference.label != LATEST else "")
    if reference.curated:
        match = counterpart(reference.name)
        if match.target is None:
            return Outcome(source, "skipped", f"curated {text} has no envkiln counterpart: {match.why_none}; import "
                           "its definition (an asset folder) or write an Environment (envkiln curates: "
                           f"{', '.join(e.name for e in CATALOG)})")
        target = match.target.name
        namespace = ctx.options.curated_namespace
        gaps = f" ({'; '.join(match.gaps)})" if match.gaps else " (the same versions)"
        pinned = (f"; Azure's version {reference.version} is not an envkiln version: to pin one, write "
                  f"{CURATED_REFERENCE_PREFIX}{target}:VERSION with a version from kubectl get environment -n "
                  f"{namespace} {target} -o jsonpath='{{.status.versions}}'" if reference.version else "")
        return Outcome(source, "curated", f"{text} is Azure ML's curated {reference.name} ({wanted}); use envkiln's "
                       f"curated {target}{gaps} in namespace {namespace}: annotate pods "
                       f"envkiln.dev/environment={curated_reference(target)} and label them "
                       f"envkiln.dev/environment={CURATED_LABEL_PREFIX}{target}{pinned}{label_note}; nothing to "
                       "import", name=target)
    name = kube_name(reference.name)
    where = (f"the environment {reference.name} of the Azure ML registry {reference.registry}" if reference.registry
             else f"the workspace environment {reference.name}")
    annotation = ""
    if reference.version:
        version = coerce_version(reference.version)
        coerced = (f"; Azure's version {reference.version!r} is not an envkiln version: the importer writes it "
                   f"{version!r}" if version != reference.version else "")
        annotation = f" (annotation envkiln.dev/environment={name}:{version}{coerced})"
    elif reference.label == LATEST:
        annotation = f" (annotation envkiln.dev/environment={name}@{LATEST})"
    return Outcome(source, "reference", f"{text} refers to {where} ({wanted}); import its definition too, then "
                   f"label pods envkiln.dev/environment={name}{annotation}{label_note}", name=name)


def curated_reference(target: str) -> str:
    """How pods name an envkiln curated environment from any namespace (envkiln.core.workloads)."""
    return f"{CURATED_REFERENCE_PREFIX}{target}@{LATEST}"


# --- environment definitions --------------------------------------------------------------------------


def _inference(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImportProblem(f"{_at(where, 'inference_config')}: expected a mapping of routes")
    inference: dict[str, Any] = {}
    port: int | None = None
    for azure, ours in (("liveness_route", "livenessRoute"), ("readiness_route", "readinessRoute"),
                        ("scoring_route", "scoringRoute")):
        route = value.get(azure)
        if route is None:
            continue
        if not isinstance(route, dict) or "path" not in route:
            raise ImportProblem(f"{_at(where, f'inference_config.{azure}')}: expected path and port")
        inference[ours] = str(route["path"])
        if route.get("port") is not None:
            route_port = int(route["port"])
            if port is not None and route_port != port:
                raise ImportProblem(f"{_at(where, 'inference_config')}: routes use ports {port} and {route_port}; "
                                    "envkiln records one port for the environment: use one")
            port = route_port
    if port is not None:
        inference["port"] = port
    return inference


def environment_manifest(definition: dict[str, Any], base: Path, where: str, default_name: str, ctx: _Context
                         ) -> tuple[list[dict[str, Any]], str]:
    """(the Environment manifest and any ConfigMap, what was chosen) for one Azure ML environment mapping."""
    azure_name = str(definition.get("name") or default_name)
    name = kube_name(azure_name)
    if reserved_prefix(name, ctx.options.namespace, ctx.options.curated_namespace):
        name = kube_name("imported-" + name)
    os_type = str(definition.get("os_type") or "linux").lower()
    if os_type != "linux":
        raise ImportProblem(f"{_at(where, 'os_type')}: {os_type} images are not built by envkiln (Linux builders only)")
    ignored = sorted(k for k in definition if k not in _ENV_FIELDS) + ctx.asset_ignored
    version, azure_version = _version(definition.get("version"))
    spec: dict[str, Any] = {"version": version}
    if definition.get("description"):
        spec["description"] = str(definition["description"])
    tags = definition.get("tags")
    if tags:
        if not isinstance(tags, dict):
            raise ImportProblem(f"{_at(where, 'tags')}: expected a mapping")
        spec["tags"] = {str(k): tag_value(v) for k, v in tags.items()}
    chosen = ""
    extra: list[dict[str, Any]] = []
    build = definition.get("build")
    image = definition.get("image")
    conda = definition.get("conda_file")
    if build is not None:
        if image is not None or conda is not None:
            raise ImportProblem(f"{where}: build cannot be combined with image or conda_file (Azure ML refuses it "
                                "too); keep one")
        if not isinstance(build, dict) or not build.get("path"):
            raise ImportProblem(f"{_at(where, 'build')}: expected path (and dockerfile_path)")
        path = str(build["path"])
        dockerfile = str(build.get("dockerfile_path") or "Dockerfile")
        ignored += [f"build.{k}" for k in build if k not in ("path", "dockerfile_path")]
        if re.match(r"[a-z+]+://", path):
            if not path.startswith("https://"):
                raise ImportProblem(f"{_at(where, 'build.path')}: {path!r}: only local directories and https git URLs "
                                    "(https://host/org/repo.git#COMMIT:DIR) are imported")
            spec["build"] = _git_context(path, dockerfile, where)
            chosen = "build context: git"
        else:
            directory = _confined(base, path, _at(where, "build.path"), ctx)
            spec["build"], extra, chosen = _directory_context(directory, dockerfile, name, where, ctx)
    elif image is not None:
        spec["image"] = str(image)
        if conda is None:
            spec["userManaged"] = True
            chosen = "image used as is (no conda_file: Azure ML builds nothing either)"
        else:
            spec["conda"], variables, conda_ignored, constraints = _conda_spec(conda, base, _at(where, "conda_file"),
                                                                                ctx)
            ignored += conda_ignored
            if variables:
                spec["environmentVariables"] = variables
            chosen = "image + conda environment"
            if constraints:
                spec["dockerSteps"] = constraint_steps(constraints)
                chosen += (f"; {len(constraints)} constraints (-c) written to {CONSTRAINTS_FILE} by docker steps and "
                           "named in PIP_CONSTRAINT and UV_CONSTRAINT (set in the image too)")
    else:
        raise ImportProblem(f"{where}: neither image nor build; an Azure ML environment needs one")
    if definition.get("inference_config") is not None:
        spec["inference"] = _inference(definition["inference_config"], where)
    annotations = {ANNOTATION_AZUREML_NAME: azure_name, ANNOTATION_AZUREML_SOURCE: where}
    if ignored:
        annotations[ANNOTATION_AZUREML_IGNORED] = ", ".join(ignored)
    if azure_version is not None:
        annotations[ANNOTATION_AZUREML_VERSION] = azure_version
        chosen += f"; version {azure_version!r} is not an envkiln version: written {version!r}"
    if ctx.templated:
        annotations[ANNOTATION_AZUREML_TEMPLATES] = json.dumps(ctx.templated, sort_keys=True)
        chosen += f"; templates filled: {_templates_said(ctx)}"
    if ctx.notes:
        chosen += "; " + "; ".join(ctx.notes)
    metadata: dict[str, Any] = {"name": name, "annotations": annotations}
    if ctx.options.namespace:
        metadata["namespace"] = ctx.options.namespace
    manifest = {"apiVersion": API_VERSION, "kind": KIND_ENVIRONMENT, "metadata": metadata, "spec": spec}
    if ignored:
        chosen += f"; ignored: {', '.join(ignored)}"
    return [manifest, *extra], chosen


def _templates_said(ctx: _Context) -> str:
    """What was filled where, for the stderr line: `FILE: image: {{latest-image-tag}} -> latest`."""
    said = []
    for where, text in ctx.templated.items():
        filled = []
        for key in dict.fromkeys(m.group(1) for m in _TEMPLATE.finditer(text)):
            if key in ctx.options.variables:
                filled.append("{{" + key + "}} from --set")
            elif key == LATEST_IMAGE_TAG:
                filled.append("{{" + key + "}} -> latest")
            elif key == LATEST_PYPI_VERSION:
                filled.append("{{" + key + "}} pin dropped (the newest release)")
        if filled:
            said.append(f"{where}: {', '.join(filled)}")
    return "; ".join(said)


def _validated(documents: list[dict[str, Any]], where: str, ctx: _Context) -> str:
    """Validate the Environment with envkiln's own rules; returns its identity (the definition hash)."""
    manifest = documents[0]
    try:
        environment = parse_environment(manifest, where, ctx.options.curated_namespace)
    except DefinitionError as error:
        raise ImportProblem(f"{where}: not a valid envkiln definition: {'; '.join(error.problems)}") from None
    context = None
    for document in documents[1:]:
        context = {**document.get("data", {}),
                   **{k: base64.b64decode(v) for k, v in document.get("binaryData", {}).items()}}
    try:
        identity = definition_hash(environment.spec, context)
    except UnresolvedGitRef:  # a branch: the operator resolves it; the spec itself identifies the definition
        identity = "git"
    return identity + json.dumps(manifest["spec"], sort_keys=True, default=str)


def _add_environment(definition: dict[str, Any], base: Path, where: str, default_name: str, ctx: _Context,
                     asset: bool = False) -> None:
    if not asset:  # an asset's templates were filled already, with its variables
        ctx.templated, ctx.notes, ctx.asset_variables, ctx.asset_ignored = {}, [], {}, []
    try:
        definition = _fill(definition, where, ctx)
        documents, chosen = environment_manifest(definition, base, where, default_name, ctx)
        name = documents[0]["metadata"]["name"]
        identity = _validated(documents, where, ctx)
    except ImportProblem as problem:
        ctx.outcomes.append(Outcome(where, "error", str(problem)))
        return
    if name in ctx.names:
        if ctx.names[name] == identity:
            ctx.outcomes.append(Outcome(where, "skipped", f"the same definition as {name}, imported above",
                                        name=name))
            return
        name = kube_name(f"{name[:MAX_NAME - 9]}-{identity[:8]}")
        documents[0]["metadata"]["name"] = name
    ctx.names[name] = identity
    ctx.outcomes.append(Outcome(where, "imported", chosen, name=name, documents=documents))


def _environment_value(value: Any, base: Path, where: str, default_name: str, ctx: _Context) -> None:
    if isinstance(value, dict):
        _add_environment(value, base, where, default_name, ctx)
    elif isinstance(value, str):
        text = value.strip()
        reference = parse_reference(text)
        if reference is not None:
            ctx.outcomes.append(_reference_outcome(text, reference, where, ctx))
        elif text.removeprefix("file:").endswith(_YAML_SUFFIXES):
            try:
                path = _confined(base, text.removeprefix("file:"), where, ctx)
                ctx.consumed.add(path.resolve())
                definition = _one_mapping(path)
            except ImportProblem as problem:
                ctx.outcomes.append(Outcome(where, "error", str(problem)))
                return
            _add_environment(definition, path.parent, f"{path}", path.stem, ctx)
        else:
            ctx.outcomes.append(Outcome(where, "error", f"{text!r} is neither an inline environment, an azureml: "
                                        "reference nor a YAML file"))
    else:
        ctx.outcomes.append(Outcome(where, "error", f"environment is {type(value).__name__}; expected a mapping or a "
                                    "reference"))


# --- documents: what kind, and where the environments are ---------------------------------------------


def is_environment_document(document: dict[str, Any]) -> bool:
    schema = str(document.get("$schema", ""))
    if "environment.schema" in schema:
        return True
    if schema or "environment" in document or "jobs" in document or "command" in document:
        return False
    return "image" in document or "build" in document or "conda_file" in document


def _walk(node: Any, base: Path, path: Path, where: str, default_name: str, ctx: _Context) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "environment":
                _environment_value(value, base, f"{path}: {here}", default_name, ctx)
            elif key in ("component", "trial") and isinstance(value, str) and \
                    value.removeprefix("file:").endswith(_YAML_SUFFIXES):
                try:
                    followed = _confined(base, value.removeprefix("file:"), f"{path}: {here}", ctx)
                except ImportProblem as problem:
                    ctx.outcomes.append(Outcome(f"{path}: {here}", "error", str(problem)))
                    continue
                _import_file(followed, ctx, via=f"{path}: {here}")
            elif key == "jobs" and isinstance(value, dict):
                for step, job in value.items():
                    _walk(job, base, path, f"{here}.{step}", f"{default_name}-{step}", ctx)
            else:
                _walk(value, base, path, here, default_name, ctx)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _walk(item, base, path, f"{where}[{index}]", default_name, ctx)


def _document_name(document: dict[str, Any], path: Path) -> str:
    for key in ("name", "display_name"):
        if isinstance(document.get(key), str) and not _TEMPLATE.search(document[key]):
            return str(document[key])
    return path.stem


def _import_file(path: Path, ctx: _Context, via: str | None = None) -> None:
    path = Path(os.path.normpath(path))  # shown in messages: no `dir/../`
    resolved = path.resolve()
    if resolved in ctx.seen_files:
        return
    ctx.seen_files.add(resolved)
    if via:
        ctx.consumed.add(resolved)
    try:
        documents = _load_yaml(path)
    except ImportProblem as problem:
        ctx.outcomes.append(Outcome(via or str(path), "error", str(problem)))
        return
    before = len(ctx.outcomes)
    for index, document in enumerate(documents):
        label = str(path) if len(documents) == 1 else f"{path}#{index}"
        if not isinstance(document, dict):
            continue
        if is_environment_document(document):
            _add_environment(document, path.parent, label, path.stem, ctx)
        else:
            _walk(document, path.parent, path, "", kube_name(_document_name(document, path)), ctx)
    if len(ctx.outcomes) == before and not via:
        ctx.outcomes.append(Outcome(str(path), "skipped", "no Azure ML environment in this file (neither an "
                                    "environment definition nor an environment: field)"))


def _import_asset(directory: Path, ctx: _Context) -> None:
    """An asset folder: asset.yaml (name, version, spec, extra_config) and/or spec.yaml."""
    variables: dict[str, str] = {}
    ctx.templated, ctx.notes, ctx.asset_variables, ctx.asset_ignored = {}, [], variables, []
    spec_path = directory / "spec.yaml"
    asset_path = directory / "asset.yaml"
    where = str(directory)
    try:
        if asset_path.is_file():
            asset = _one_mapping(asset_path)
            ctx.consumed.add(asset_path.resolve())
            if str(asset.get("type", "environment")) != "environment":
                ctx.outcomes.append(Outcome(str(asset_path), "skipped", f"an asset of type {asset.get('type')}, "
                                            "not an environment"))
                return
            ctx.asset_ignored += [f"asset.yaml.{k}" for k in asset if k not in _ASSET_FIELDS]
            variables["asset.name"] = str(asset.get("name", directory.name))
            version = asset.get("version")
            # As written: the spec's version field coerces it (and keeps the original in an annotation).
            variables["asset.version"] = "1" if version is None or version == "auto" else tag_value(version)
            spec_path = _confined(directory, str(asset.get("spec", "spec.yaml")), _at(str(asset_path), "spec"), ctx)
            extra = asset.get("extra_config")
            if extra:
                extra_path = _confined(directory, str(extra), _at(str(asset_path), "extra_config"), ctx)
                extra_config = _one_mapping(extra_path)
                image = extra_config.get("image") or {}
                ctx.consumed.add(extra_path.resolve())
                context = image.get("context") or {}
                ctx.asset_ignored += [f"extra_config.{k}" for k in extra_config if k != "image"]
                ctx.asset_ignored += [f"extra_config.image.{k}" for k in image if k != "context"]
                ctx.asset_ignored += [f"extra_config.image.context.{k}" for k in context
                                      if k not in ("dir", "dockerfile", "template_files")]
                variables["image.context.path"] = variables["image.context.dir"] = str(context.get("dir", "context"))
                variables["image.dockerfile.path"] = str(context.get("dockerfile", "Dockerfile"))
        definition = _one_mapping(spec_path)
        ctx.consumed.add(spec_path.resolve())
        ctx.seen_files.add(spec_path.resolve())
        where = str(spec_path)
        definition = _fill(definition, where, ctx)
        if "image" not in definition and "build" not in definition:
            environment = directory / "environment"
            if (environment / "Dockerfile").is_file():
                definition["build"] = {"path": "environment"}
    except ImportProblem as problem:
        ctx.outcomes.append(Outcome(where, "error", str(problem)))
        return
    _add_environment(definition, spec_path.parent, where, variables.get("asset.name", directory.name), ctx, asset=True)
    ctx.asset_variables, ctx.asset_ignored = {}, []


def _paths(root: Path, ctx: _Context) -> Iterator[tuple[str, Path]]:
    """("file" | "asset" | "link", path) for what the folder `root` holds (or the file `root` itself). Links
    below the path given are never followed."""
    if root.is_file():
        yield "file", root
        return
    if (root / "asset.yaml").is_file() or (root / "spec.yaml").is_file():
        yield "asset", root
        return
    for child in sorted(root.iterdir()):
        if child.is_symlink():
            if child.name != ".git" and (child.suffix in _YAML_SUFFIXES or child.is_dir()):
                yield "link", child
        elif child.is_dir() and child.name != ".git":
            yield from _paths(child, ctx)
        elif child.is_file() and child.suffix in _YAML_SUFFIXES:
            yield "file", child


def import_azureml(paths: list[Path], options: ImportOptions | None = None
                   ) -> tuple[list[Outcome], dict[Path, bytes]]:
    """Every outcome, in the order found, and the tarballs to write (path -> bytes)."""
    ctx = _Context(options or ImportOptions())
    found: list[tuple[str, Path, Path]] = []  # (kind, path, the tree it was found in)
    for given in paths:
        if not given.exists():
            ctx.outcomes.append(Outcome(str(given), "error", "no such file or directory"))
            continue
        tree = _absolute(ctx.options.root if ctx.options.root is not None else
                         given if given.is_dir() else given.parent)
        if not _absolute(given).is_relative_to(tree):
            ctx.outcomes.append(Outcome(str(given), "error", f"not inside the imported tree {tree} (the root given)"))
            continue
        found += [(kind, path, tree) for kind, path in _paths(given, ctx)]
    # Asset folders first, then files named on their own; files that other files read (conda files,
    # components of a pipeline) are imported through those.
    for kind, path, _ in found:
        if kind == "link":
            ctx.outcomes.append(Outcome(str(path), "error", "a symbolic link; the importer reads only real files "
                                        "and folders inside the imported tree (copy what it points to there)"))
    for kind, path, tree in sorted(found, key=lambda item: item[0] != "asset"):
        if kind == "asset":
            ctx.root = tree
            _import_asset(path, ctx)
    deferred = []
    for kind, path, tree in found:
        if kind == "file" and path.resolve() not in ctx.consumed:
            deferred.append((path, tree))
    for path, tree in deferred:
        if path.resolve() not in ctx.consumed and not _looks_like_conda(path):
            ctx.root = tree
            _import_file(path, ctx)
    return ctx.outcomes, ctx.tarballs


def _looks_like_conda(path: Path) -> bool:
    """A conda environment file (read through the environment that names it)."""
    try:
        documents = _load_yaml(path)
    except ImportProblem:
        return False
    return len(documents) == 1 and isinstance(documents[0], dict) and "dependencies" in documents[0] \
        and not any(k in documents[0] for k in ("image", "build", "environment", "jobs", "command", "$schema"))


def manifests_yaml(outcomes: list[Outcome]) -> str:
    """Every imported document as one multi-document YAML file (ConfigMaps beside their Environment)."""
    documents = [document for outcome in outcomes for document in outcome.documents]
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=120)
