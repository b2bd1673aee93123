"""The release (scripts/release.py, `make release`): one version source that the chart follows, the
lock the operator image installs from, and the pure parts of the release (the image pinned in the
packaged chart's values, the version checks, helm's push output). The release itself runs against
a real registry and node in tests/integration/node/test_release.py."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import envkiln

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32


def _load_release() -> ModuleType:
    spec = importlib.util.spec_from_file_location("envkiln_release_script", ROOT / "scripts" / "release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


release = _load_release()


# --- one version source ------------------------------------------------------------------------

def test_the_chart_follows_the_one_version_source() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "envkiln" / "Chart.yaml").read_text())
    assert chart["version"] == envkiln.__version__, "Chart.yaml version: run scripts/release.py set-version"
    assert chart["appVersion"] == envkiln.__version__, "Chart.yaml appVersion: run scripts/release.py set-version"
    assert release.source_version() == envkiln.__version__


def test_pyproject_reads_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "the version is typed only in operator/envkiln/__init__.py"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "envkiln.__version__"}


def test_set_version_changes_exactly_the_version_lines() -> None:
    init = (ROOT / "operator" / "envkiln" / "__init__.py").read_text()
    chart = (ROOT / "charts" / "envkiln" / "Chart.yaml").read_text()
    new_init, new_chart = release.set_version_texts("2.3.4-rc.1", init, chart)
    assert release.source_version(new_init) == "2.3.4-rc.1"
    assert release.chart_versions(new_chart) == ("2.3.4-rc.1", "2.3.4-rc.1")
    changed = [(a, b) for a, b in zip(init.splitlines() + chart.splitlines(),
                                      new_init.splitlines() + new_chart.splitlines(), strict=True) if a != b]
    assert len(changed) == 3, changed
    assert yaml.safe_load(new_chart)["kubeVersion"] == yaml.safe_load(chart)["kubeVersion"]
    with pytest.raises(release.ReleaseError, match="semantic version"):
        release.set_version_texts("v1.2", init, chart)


@pytest.mark.parametrize(("version", "source", "chart_version", "app_version", "problem"), [
    ("1.2.3", "1.2.3", "1.2.3", "1.2.3", None),
    ("1.2.3", "1.2.2", "1.2.3", "1.2.3", "envkiln.__version__ 1.2.2"),
    ("1.2.3", "1.2.3", "1.2.2", "1.2.3", "Chart.yaml version 1.2.2"),
    ("1.2.3", "1.2.3", "1.2.3", "1.2.2", "appVersion 1.2.2"),
    ("1.2", "1.2", "1.2", "1.2", "not a semantic version"),
    ("01.2.3", "01.2.3", "01.2.3", "01.2.3", "not a semantic version"),
    ("1.2.3-rc.1", "1.2.3-rc.1", "1.2.3-rc.1", "1.2.3-rc.1", None),
])
def test_a_release_refuses_a_version_the_sources_do_not_say(
        version: str, source: str, chart_version: str, app_version: str, problem: str | None) -> None:
    init = f'"""doc"""\n\n__version__ = "{source}"\n'
    chart = f'apiVersion: v2\nname: envkiln\nversion: {chart_version}\nappVersion: "{app_version}"\n'
    if problem is None:
        release.check_version(version, init, chart)
    else:
        with pytest.raises(release.ReleaseError, match=re.escape(problem)):
            release.check_version(version, init, chart)


# --- the lock the image installs from ---------------------------------------------------------

def _lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes) of operator/requirements.lock."""
    text = (ROOT / "operator" / "requirements.lock").read_text()
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if match:
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
            pins[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return pins


def test_every_dependency_is_locked_with_hashes_and_allowed_by_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _lock()
    build = [Requirement(r) for r in project["build-system"]["requires"]]
    for requirement in [Requirement(r) for r in project["project"]["dependencies"]] + build:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in operator/requirements.lock: run scripts/lock.sh"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"the lock pins {requirement.name}=={version}, pyproject.toml wants {requirement.specifier}: "
            "run scripts/lock.sh")
    unhashed = [name for name, (_, hashes) in pins.items() if not hashes]
    assert not unhashed, f"locked without hashes: {unhashed}"
    assert len(pins) > len(project["project"]["dependencies"]), "transitive dependencies are locked too"


def test_the_operator_image_installs_only_from_the_lock() -> None:
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text()
    run = " ".join(dockerfile.split("\\\n"))
    assert re.search(r"pip install [^&]*--require-hashes[^&]*-r operator/requirements\.lock", run), run
    assert re.search(r"pip install [^&]*--no-deps[^&]*\s\.(\s|$)", run), "the package itself adds no dependency"
    assert not re.search(r"pip install (?![^&]*(--no-deps|--require-hashes))", run), "an unlocked pip install"


# --- the packaged chart pins the pushed digest ------------------------------------------------

def test_the_packaged_values_pin_the_image_by_digest_and_keep_everything_else() -> None:
    values = (ROOT / "charts" / "envkiln" / "values.yaml").read_text()
    pinned = release.pin_image_values(values, "reg.example:5000/team/envkiln", DIGEST, "1.2.3")
    before, after = yaml.safe_load(values), yaml.safe_load(pinned)
    image = after.pop("image")
    before.pop("image")
    assert after == before, "only the image block changes"
    repository = "reg.example:5000/team/envkiln"
    if "digest" in yaml.safe_load(values)["image"]:
        assert (image["repository"], image["tag"], image["digest"]) == (repository, "1.2.3", DIGEST)
    else:
        assert (image["repository"], image["tag"]) == (repository, f"1.2.3@{DIGEST}")
    assert [line for line in values.splitlines() if line.lstrip().startswith("#")] == [
        line for line in pinned.splitlines() if line.lstrip().startswith("#")], "comments are kept"


def test_a_chart_without_a_digest_value_pins_through_the_tag() -> None:
    values = ("# top\nimage:\n  repository: ghcr.io/envkiln/envkiln  # where\n  tag: \"\"\n"
              "  pullPolicy: IfNotPresent\nreplicas: 1\n")
    pinned = yaml.safe_load(release.pin_image_values(values, "r.example/envkiln", DIGEST, "0.2.0"))
    assert pinned == {"image": {"repository": "r.example/envkiln", "tag": f"0.2.0@{DIGEST}",
                                "pullPolicy": "IfNotPresent"}, "replicas": 1}
    with pytest.raises(release.ReleaseError, match="no top-level image"):
        release.pin_image_values("replicas: 1\n", "r/envkiln", DIGEST, "0.2.0")
    with pytest.raises(release.ReleaseError, match="not an image digest"):
        release.pin_image_values(values, "r/envkiln", "sha256:short", "0.2.0")


@pytest.mark.parametrize(("image", "expected"), [
    (f"r.example:5000/p/envkiln@{DIGEST}", True),
    (f"r.example:5000/p/envkiln:1.2.3@{DIGEST}", True),
    ("r.example:5000/p/envkiln:1.2.3", False),
    (f"r.example:5000/p/envkiln@sha256:{'cd' * 32}", False),
    (f"r.example:5000/p/other@{DIGEST}", False),
    (f"r.example:5000/p/envkiln-x@{DIGEST}", False),
    (f"r.example:5000/p/envkiln:a/b@{DIGEST}", False),
])
def test_pins(image: str, expected: bool) -> None:
    assert release.pins(image, "r.example:5000/p/envkiln", DIGEST) is expected


def test_operator_images_reads_the_deployment_from_rendered_manifests() -> None:
    rendered = yaml.safe_dump_all([
        {"kind": "ServiceAccount", "metadata": {"name": "x"}},
        {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "operator", "image": "a@b"}]}}}},
    ])
    assert release.operator_images(rendered) == ["a@b"]


def test_helm_push_output_is_read_or_refused() -> None:
    output = f"Pushed: 10.99.1.1:5000/rel/charts/envkiln:1.2.3\nDigest: {DIGEST}\n"
    assert release.parse_helm_push(output) == ("10.99.1.1:5000/rel/charts/envkiln:1.2.3", DIGEST)
    with pytest.raises(release.ReleaseError, match="no reference"):
        release.parse_helm_push("Error: unexpected status from HEAD request")


def test_image_labels_say_version_source_and_revision() -> None:
    labels = release.image_labels("1.2.3", "https://example.org/envkiln", "abc123", "2026-01-01T00:00:00+00:00")
    assert labels["org.opencontainers.image.version"] == "1.2.3"
    assert labels["org.opencontainers.image.source"] == "https://example.org/envkiln"
    assert labels["org.opencontainers.image.revision"] == "abc123"
