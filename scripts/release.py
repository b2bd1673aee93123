"""A versioned release: the operator image, the chart pinned to its digest, and the wheel.

    make release VERSION=x.y.z REGISTRY=host/path            # what the Makefile runs
    python scripts/release.py --version x.y.z --registry host/path [--plain-http] [--base-image REF]
    python scripts/release.py set-version x.y.z              # bump: envkiln.__version__ and Chart.yaml

What `release` does, in order (each step checks what it made before the next one starts):
1. refuses a VERSION that is not the one in the source (operator/envkiln/__init__.py, the one
   version source) or in charts/envkiln/Chart.yaml (version, appVersion), and a working tree with
   uncommitted changes (the image's revision label must name what it was built from; --allow-dirty
   labels it `<commit>-dirty`);
2. builds the wheel (pip wheel) and checks its version;
3. builds operator/Dockerfile with buildah (chroot isolation, vfs storage: no Docker), its
   dependencies from operator/requirements.lock with --require-hashes, with the OCI labels
   org.opencontainers.image.{version,source,revision,created}; pushes it as <registry>/envkiln:<version>
   and keeps the digest the registry has;
4. copies the chart to a temporary directory, pins the image in the copy's values.yaml
   (image.repository and image.digest, or the tag `<version>@<digest>` for a chart without a digest
   value), renders it with `helm template` and checks that the operator Deployment pulls exactly that
   digest, packages it (`helm package --version --app-version`) and pushes it as an OCI artifact
   (`helm push` to oci://<registry>/charts, chart envkiln:<version>);
5. writes dist/release-<version>.json with the references and prints them.

Log in first where the registry needs it: `buildah login HOST` and `helm registry login HOST`.
The chart in the repository is never changed: only the packaged copy carries the digest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
INIT = REPO_ROOT / "operator" / "envkiln" / "__init__.py"
CHART = REPO_ROOT / "charts" / "envkiln"
DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"
LOCK = REPO_ROOT / "operator" / "requirements.lock"
IMAGE_SOURCES = ("pyproject.toml", "README.md", "operator")  # what operator/Dockerfile copies
WHEEL_SOURCES = (*IMAGE_SOURCES, "LICENSE")  # the wheel carries the license text
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEFAULT_BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
IMAGE_NAME = "envkiln"
CHART_PATH = "charts"
# Semantic versions as Helm accepts them (a chart version must be SemVer 2).
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
VERSION_LINE = re.compile(r'^__version__ = "([^"]*)"$', re.MULTILINE)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
RENDER_KUBE_VERSION = "1.34.0"  # what `helm template` renders the packaged chart for (its check)


class ReleaseError(RuntimeError):
    """A release step that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Release:
    version: str
    revision: str
    source: str
    image: str  # repository:tag as pushed
    image_digest: str
    image_ref: str  # repository@sha256:...
    chart: str  # oci://host/path/charts/envkiln
    chart_version: str
    chart_digest: str
    chart_package: str
    wheel: str


# --- the version: one source, and the files that must follow it ---------------------------------

def source_version(init_text: str | None = None) -> str:
    """envkiln.__version__ as written in operator/envkiln/__init__.py (read, not imported)."""
    text = INIT.read_text() if init_text is None else init_text
    found = VERSION_LINE.findall(text)
    if len(found) != 1:
        raise ReleaseError(f"{INIT}: expected one line __version__ = \"x.y.z\", found {len(found)}")
    return found[0]


def chart_versions(chart_yaml: str | None = None) -> tuple[str, str]:
    """(version, appVersion) of charts/envkiln/Chart.yaml."""
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text() if chart_yaml is None else chart_yaml)
    return str(meta.get("version", "")), str(meta.get("appVersion", ""))


def check_version(version: str, init_text: str | None = None, chart_yaml: str | None = None) -> None:
    if not SEMVER.match(version):
        raise ReleaseError(f"VERSION {version!r} is not a semantic version (x.y.z, optionally -pre or +build)")
    in_source = source_version(init_text)
    chart_version, app_version = chart_versions(chart_yaml)
    if in_source != version or chart_version != version or app_version != version:
        raise ReleaseError(
            f"VERSION {version} is not the version in the source (envkiln.__version__ {in_source}, Chart.yaml "
            f"version {chart_version}, appVersion {app_version}): run `python scripts/release.py set-version "
            f"{version}`, commit, then release")


def set_version_texts(version: str, init_text: str, chart_yaml: str) -> tuple[str, str]:
    """The new texts of __init__.py and Chart.yaml with `version` (only those lines change)."""
    if not SEMVER.match(version):
        raise ReleaseError(f"{version!r} is not a semantic version (x.y.z)")
    init_new, count = VERSION_LINE.subn(f'__version__ = "{version}"', init_text)
    if count != 1:
        raise ReleaseError(f"{INIT}: expected one __version__ line, found {count}")
    chart_new = chart_yaml
    for key, value in (("version", version), ("appVersion", f'"{version}"')):
        chart_new, count = re.subn(rf"^{key}:.*$", f"{key}: {value}", chart_new, flags=re.MULTILINE)
        if count != 1:
            raise ReleaseError(f"Chart.yaml: expected one top-level {key}, found {count}")
    return init_new, chart_new


# --- the packaged chart's values: the image pinned by digest --------------------------------------

def pin_image_values(values_text: str, repository: str, digest: str, version: str) -> str:
    """values.yaml with the top-level `image` block pointing at repository@digest.

    Edits the lines in place (the comments stay: the chart's README is made from them). With an
    `image.digest` value: repository, tag (the version) and digest are set; without one (an older
    chart), the tag becomes `<version>@<digest>`, which the image reference `repository:tag` turns
    into a pinned pull. The result is parsed back and checked."""
    if not DIGEST.match(digest):
        raise ReleaseError(f"not an image digest: {digest!r}")
    lines = values_text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"^image:\s*(#.*)?$", line)), None)
    if start is None:
        raise ReleaseError("values.yaml has no top-level image: block")
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\S", lines[i])), len(lines))
    keys = {m.group(2): i for i in range(start + 1, end)
            if (m := re.match(r"^(  )([A-Za-z]+):", lines[i]))}
    for required in ("repository", "tag"):
        if required not in keys:
            raise ReleaseError(f"values.yaml: image.{required} not found")

    def setting(key: str, value: str) -> None:
        index = keys[key]
        comment = re.search(r"\s+#.*$", lines[index].rstrip("\n"))
        lines[index] = f"  {key}: {json.dumps(value)}{comment.group(0) if comment else ''}\n"

    setting("repository", repository)
    if "digest" in keys:
        setting("tag", version)
        setting("digest", digest)
    else:
        setting("tag", f"{version}@{digest}")
    text = "".join(lines)
    image = yaml.safe_load(text)["image"]
    expected = {"repository": repository, "tag": version, "digest": digest} if "digest" in keys else {
        "repository": repository, "tag": f"{version}@{digest}"}
    if {k: image.get(k) for k in expected} != expected:
        raise ReleaseError(f"values.yaml: the pinned image block reads back as {image}")
    return text


def operator_images(rendered: str) -> list[str]:
    """Images of the operator Deployment's containers in `helm template` output."""
    images = []
    for doc in yaml.safe_load_all(rendered):
        if isinstance(doc, dict) and doc.get("kind") == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            images += [c["image"] for c in pod.get("containers", [])]
    return images


def pins(image: str, repository: str, digest: str) -> bool:
    """Whether an image reference pulls exactly repository@digest (repository@digest or repository:tag@digest)."""
    return image == f"{repository}@{digest}" or re.fullmatch(
        rf"{re.escape(repository)}:[\w][\w.-]{{0,127}}@{re.escape(digest)}", image) is not None


def image_labels(version: str, source: str, revision: str, created: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.created": created,
    }


def parse_helm_push(output: str) -> tuple[str, str]:
    """(reference, digest) from `helm push` ("Pushed: host/path/envkiln:1.2.3", "Digest: sha256:...")."""
    pushed = re.search(r"^Pushed:\s*(\S+)\s*$", output, re.MULTILINE)
    digest = re.search(r"^Digest:\s*(sha256:[0-9a-f]{64})\s*$", output, re.MULTILINE)
    if not pushed or not digest:
        raise ReleaseError(f"helm push printed no reference and digest:\n{output}")
    return pushed.group(1), digest.group(1)


# --- the steps -----------------------------------------------------------------------------------

def run(args: Sequence[str], cwd: Path | None = None, timeout: float = 1800) -> str:
    print("+ " + " ".join(args), file=sys.stderr, flush=True)
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise ReleaseError(f"{args[0]} {args[1] if len(args) > 1 else ''} failed ({result.returncode}):\n"
                           f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
    return result.stdout + result.stderr


def git_revision(allow_dirty: bool) -> tuple[str, str]:
    """(revision, commit time as RFC 3339) of the working tree; refuses uncommitted changes unless allowed."""
    try:
        commit = run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"]).strip()
        when = run(["git", "-C", str(REPO_ROOT), "show", "-s", "--format=%cI", "HEAD"]).strip()
        dirty = bool(run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"]).strip())
    except (ReleaseError, FileNotFoundError) as error:
        raise ReleaseError(f"cannot read the git revision (release from a git checkout): {error}") from error
    if dirty and not allow_dirty:
        raise ReleaseError("the working tree has uncommitted changes: commit them (or pass --allow-dirty, "
                           "and the image's revision label says <commit>-dirty)")
    return (f"{commit}-dirty" if dirty else commit), when


def default_source() -> str:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    sources = meta.get("sources") or []
    return str(sources[0] if sources else meta.get("home", ""))


def copy_sources(names: Sequence[str], target: Path) -> None:
    """The package's sources without build leftovers (egg-info, bytecode): the working tree stays as it was."""
    for name in names:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
        else:
            shutil.copy2(source, target / name)


def build_wheel(version: str, out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="envkiln-wheel-") as tmp:
        sources, wheelhouse = Path(tmp) / "src", Path(tmp) / "wheels"
        sources.mkdir()
        copy_sources(WHEEL_SOURCES, sources)
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheelhouse),
             str(sources)])
        wheels = list(wheelhouse.glob("envkiln-*.whl"))
        if len(wheels) != 1:
            raise ReleaseError(f"pip wheel made {[w.name for w in wheels]}, expected one envkiln wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            built = re.search(r"^Version: (\S+)$", wheel.read(metadata).decode(), re.MULTILINE)
        if not built or built.group(1) != version:
            raise ReleaseError(f"the wheel says version {built.group(1) if built else '?'}, not {version}")
        target = out / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


def buildah_storage(root: str | None) -> list[str]:
    """vfs storage (no overlay needed), optionally in a directory of its own (the harness's)."""
    if not root:
        return ["--storage-driver", "vfs"]
    return ["--storage-driver", "vfs", "--root", str(Path(root) / "storage"), "--runroot", str(Path(root) / "run")]


def buildah(root: str | None, *args: str, timeout: float = 1800) -> str:
    return run(["buildah", *buildah_storage(root), *args], timeout=timeout)


def build_image(version: str, repository: str, labels: dict[str, str], base_image: str, plain_http: bool,
                buildah_root: str | None) -> str:
    """Build and push <repository>:<version>; the digest the registry has for it."""
    tls = f"--tls-verify={'false' if plain_http else 'true'}"
    tag = f"{repository}:{version}"
    with tempfile.TemporaryDirectory(prefix="envkiln-release-image-") as tmp:
        context = Path(tmp)
        copy_sources(IMAGE_SOURCES, context)
        args = ["bud", "--isolation", "chroot", "--layers=false", tls, "--build-arg", f"BASE_IMAGE={base_image}",
                "-f", str(context / "operator" / "Dockerfile"), "-t", tag]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        if Path(HOST_CA_BUNDLE).exists():
            args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]  # pip in the build verifies PyPI with it
        buildah(buildah_root, *args, str(context))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            digest_file = Path(tmp) / "digest"
            buildah(buildah_root, "push", tls, "--digestfile", str(digest_file), tag, f"docker://{tag}")
            digest = digest_file.read_text().strip()
    finally:
        subprocess.run(["buildah", *buildah_storage(buildah_root), "rmi", "--force", tag], capture_output=True,
                       check=False)
    if not DIGEST.match(digest):
        raise ReleaseError(f"buildah push wrote no digest for {tag}: {digest!r}")
    return digest


def package_chart(version: str, repository: str, digest: str, helm: str, out: Path) -> Path:
    """The chart, its image pinned, packaged as out/envkiln-<version>.tgz (the repository's chart untouched)."""
    with tempfile.TemporaryDirectory(prefix="envkiln-release-chart-") as tmp:
        copy = Path(tmp) / "envkiln"
        shutil.copytree(CHART, copy)
        values = copy / "values.yaml"
        values.write_text(pin_image_values(values.read_text(), repository, digest, version))
        # --kube-version: a helm built without its release flags assumes Kubernetes 1.20, older than the
        # chart's; operator.registry: the one value an install must give (any name renders)
        rendered = run([helm, "template", "envkiln", str(copy), "--namespace", "envkiln-system",
                        "--kube-version", RENDER_KUBE_VERSION, "--set", "operator.registry=registry.invalid"])
        images = operator_images(rendered)
        if not images or not pins(images[0], repository, digest):
            raise ReleaseError(f"the packaged chart's operator Deployment would run {images}, not "
                               f"{repository}@{digest}")
        run([helm, "package", str(copy), "--version", version, "--app-version", version, "--destination", str(out)])
    package = out / f"envkiln-{version}.tgz"
    if not package.exists():
        raise ReleaseError(f"helm package made no {package}")
    return package


def release(version: str, registry: str, *, base_image: str, plain_http: bool, allow_dirty: bool,
            source: str | None, out: Path, helm: str, buildah_root: str | None) -> Release:
    registry = registry.rstrip("/")
    if not registry or "://" in registry:
        raise ReleaseError(f"REGISTRY {registry!r}: give host[:port][/path], without a scheme")
    check_version(version)
    revision, committed = git_revision(allow_dirty)
    source = source or default_source()
    out.mkdir(parents=True, exist_ok=True)
    print(f"== envkiln {version} ({revision}) to {registry}", file=sys.stderr, flush=True)

    wheel = build_wheel(version, out)
    repository = f"{registry}/{IMAGE_NAME}"
    digest = build_image(version, repository, image_labels(version, source, revision, committed), base_image,
                         plain_http, buildah_root)
    package = package_chart(version, repository, digest, helm, out)
    chart_repository = f"oci://{registry}/{CHART_PATH}"
    pushed = run([helm, "push", str(package), chart_repository, *(["--plain-http"] if plain_http else [])])
    reference, chart_digest = parse_helm_push(pushed)
    if reference != f"{registry}/{CHART_PATH}/envkiln:{version}":
        raise ReleaseError(f"helm pushed {reference}, expected {registry}/{CHART_PATH}/envkiln:{version}")
    result = Release(
        version=version, revision=revision, source=source, image=f"{repository}:{version}", image_digest=digest,
        image_ref=f"{repository}@{digest}", chart=f"{chart_repository}/envkiln", chart_version=version,
        chart_digest=chart_digest, chart_package=str(package), wheel=str(wheel))
    (out / f"release-{version}.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def default_helm() -> str:
    cached = Path(os.environ.get("ENVKILN_CACHE", Path.home() / ".cache" / "envkiln")) / "bin" / "helm"
    return shutil.which("helm") or str(cached)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["set-version"]:
        if len(argv) != 2:
            print("usage: release.py set-version x.y.z", file=sys.stderr)
            return 2
        try:
            init_text, chart_text = set_version_texts(argv[1], INIT.read_text(), (CHART / "Chart.yaml").read_text())
        except ReleaseError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        INIT.write_text(init_text)
        (CHART / "Chart.yaml").write_text(chart_text)
        print(f"envkiln.__version__, Chart.yaml version and appVersion: {argv[1]}")
        return 0
    parser = argparse.ArgumentParser(prog="release.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", required=True, help="x.y.z: must be envkiln.__version__ (set-version)")
    parser.add_argument("--registry", required=True, help="host[:port][/path]: image <registry>/envkiln, "
                        "chart oci://<registry>/charts/envkiln")
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE, help="BASE_IMAGE of operator/Dockerfile")
    parser.add_argument("--plain-http", action="store_true", help="the registry speaks plain HTTP (tests)")
    parser.add_argument("--allow-dirty", action="store_true", help="release uncommitted changes (revision "
                        "label <commit>-dirty)")
    parser.add_argument("--source", help="org.opencontainers.image.source (default: Chart.yaml sources/home)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist", help="where the wheel, the chart "
                        "package and release-<version>.json go (default dist/)")
    parser.add_argument("--helm", default=default_helm(), help="helm 3.13+ (default: on PATH, else "
                        "$ENVKILN_CACHE/bin/helm)")
    parser.add_argument("--buildah-root", help="buildah storage directory (default: buildah's own)")
    args = parser.parse_args(argv)
    try:
        result = release(args.version, args.registry, base_image=args.base_image, plain_http=args.plain_http,
                         allow_dirty=args.allow_dirty, source=args.source, out=args.out.resolve(), helm=args.helm,
                         buildah_root=args.buildah_root)
    except ReleaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"image:  {result.image_ref}")
    print(f"        {result.image} (labels: version {result.version}, revision {result.revision})")
    print(f"chart:  {result.chart} --version {result.chart_version} ({result.chart_digest})")
    print(f"wheel:  {result.wheel}")
    print(f"record: {args.out.resolve() / f'release-{result.version}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
