"""`envkiln lock` and `envkiln diff` without a cluster: which build a NAME[:VERSION] names, what a rendered
Dockerfile's steps are, and the diff of files and of cluster sides read through a stand-in for the
CLI's Cluster (the real cluster: tests/integration/node/test_drift.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from envkiln.cli.errors import Exit, NotFound, NotReady
from envkiln.cli.reproduce import diff, docker_steps, lock, version_build
from envkiln.core.definition import definition_hash
from envkiln.core.names import build_name
from envkiln.core.render import RenderSettings, render
from helpers import CONDA_ENV, PIP_ENV, manifest, spec_of

H1, H2 = "1" * 32, "2" * 32
BASE2 = "sha256:" + "b" * 64
LOCK_A = "# envkiln lock v1\n[pip]\nnumpy==2.1.3\npandas==2.2.3\n"
LOCK_B = "# envkiln lock v1\n[pip]\nnumpy==2.2.0\nscipy==1.14.1\n"


def env(version: str = "2", hash_: str | None = H2, versions: list[dict[str, Any]] | None = None,
        build: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"versions": versions or []}
    if hash_:
        status.update(hash=hash_, build=build or build_name(hash_))
    return {"metadata": {"name": "train"}, "spec": {"version": version}, "status": status}


HISTORY = [{"version": "1", "hash": H1}, {"version": "2", "hash": H2},
           {"version": "2", "hash": H2, "reason": "BaseImageUpdated", "baseImageDigest": BASE2}]


@pytest.mark.parametrize(("environment", "version", "expected"), [
    (env(), None, (build_name(H2), "train:2")),
    (env(), "2", (build_name(H2), "train:2")),
    (env(build=build_name(H2, BASE2)), None, (build_name(H2, BASE2), "train:2")),  # follows status.build
    (env(versions=HISTORY), "1", (build_name(H1), "train:1")),
    (env(version="3", hash_=None, versions=HISTORY), "2", (build_name(H2, BASE2), "train:2")),  # newest: the rebuild
], ids=["current", "current-by-number", "current-rebuilt", "earlier", "earlier-rebuilt"])
def test_which_build_a_version_names(environment: dict[str, Any], version: str | None,
                                     expected: tuple[str, str]) -> None:
    assert version_build(environment, version) == expected


@pytest.mark.parametrize(("environment", "version", "message"), [
    (env(hash_=None), None, "has no definition hash yet"),
    (env(versions=HISTORY), "7", "has no version '7'; known versions: 1, 2"),
])
def test_a_version_that_names_no_build_says_what_exists(environment: dict[str, Any], version: str | None,
                                                        message: str) -> None:
    with pytest.raises((NotFound, NotReady), match=message):
        version_build(environment, version)


def test_docker_steps_are_read_back_from_the_rendered_dockerfile() -> None:
    spec = spec_of(manifest(PIP_ENV, dockerSteps=["ENV A=1", "RUN echo hi"]))
    base, steps = docker_steps(render(spec, definition_hash(spec)).dockerfile)
    assert (base, steps) == ("python:3.11-slim", ["ENV A=1", "RUN echo hi"])
    assert docker_steps("") == (None, [])


@pytest.mark.parametrize(("steps", "base_user", "document"), [
    (["ENV A=1", "RUN echo hi"], "", PIP_ENV),
    (["ENV A=1", "USER app"], "", PIP_ENV),  # envkiln's USER 0:0 before the installs is not a step
    (["RUN true"], "1000", PIP_ENV),
    (["USER 0:0"], "1000", PIP_ENV),  # the user's own USER 0:0 (root at the end: envkiln adds none)
    (["ENV A=1"], "jovyan", CONDA_ENV),
    (["ENV A=1", "RUN true"], "1000", manifest(PIP_ENV, pip=None)),  # no packages: steps, then the labels
], ids=["root-base", "user-step", "user-base", "users-own-root", "conda", "no-packages"])
def test_docker_steps_of_the_one_stage_render(steps: list[str], base_user: str, document: dict[str, Any]) -> None:
    spec = spec_of(manifest(document, dockerSteps=steps))
    plan = render(spec, definition_hash(spec), RenderSettings(tool_mounts=True), base_digest="sha256:" + "a" * 64,
                  base_user=base_user)
    assert " AS envkiln-image" in plan.dockerfile.splitlines()[1]
    base, found = docker_steps(plan.dockerfile)
    assert found == steps and base is not None and base.endswith("@sha256:" + "a" * 64)


class Cluster:
    """What reproduce reads through the CLI's Cluster: Environments and EnvironmentBuilds by name."""

    def __init__(self, environments: list[dict[str, Any]], builds: list[dict[str, Any]]) -> None:
        self.environments = {e["metadata"]["name"]: e for e in environments}
        self.builds = {b["metadata"]["name"]: b for b in builds}

    def environment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.environments.get(name)

    def build(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.builds.get(name)


def built(hash_: str, text: str | None, steps: list[str], digest: str) -> dict[str, Any]:
    spec = spec_of(manifest(PIP_ENV, dockerSteps=steps))
    return {"metadata": {"name": build_name(hash_)},
            "spec": {"hash": hash_, "baseImageDigest": digest,
                     "plan": {"dockerfile": render(spec, hash_, base_digest=digest).dockerfile}},
            "status": {"phase": "Succeeded", **({"lock": {"text": text}} if text else {})}}


def run(function: Any, *args: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = function(*args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_diff_of_two_cluster_versions_names_base_steps_and_packages() -> None:
    digest1 = "sha256:" + "a" * 64
    cluster = Cluster([env(versions=HISTORY[:2])],
                      [built(H1, LOCK_A, ["ENV A=1"], digest1), built(H2, LOCK_B, ["ENV A=2"], BASE2)])
    code, out, err = run(diff, lambda: cluster, "ns", "train:1", "train:2")
    assert (code, err) == (Exit.FAILED, "")  # they differ
    assert out.splitlines()[:2] == [f"--- train:1 (hash {H1[:12]}, base {digest1[:19]})",
                                    f"+++ train:2 (hash {H2[:12]}, base {BASE2[:19]})"]
    assert f"{digest1} -> {BASE2}" in out
    assert "  - ENV A=1" in out and "  + ENV A=2" in out
    assert "+ scipy==1.14.1" in out and "- pandas==2.2.3" in out and "~ numpy 2.1.3 -> 2.2.0" in out
    assert run(diff, lambda: cluster, "ns", "train:2", "train:2")[1].endswith("no differences\n")


def test_diff_of_files_and_what_is_not_compared(tmp_path: Path) -> None:
    (tmp_path / "a.lock").write_text(LOCK_A)
    (tmp_path / "b.lock").write_text(LOCK_B)
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(manifest(PIP_ENV, dockerSteps=["ENV A=1"])))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump_all([PIP_ENV, {**PIP_ENV, "metadata": {"name": "x"}}]))
    (tmp_path / "bad.lock").write_text("# envkiln lock v1\n[pip]\nnot a pin\n")

    def nothing() -> Cluster:
        raise AssertionError("files never ask the cluster")

    code, out, _ = run(diff, nothing, "ns", str(tmp_path / "a.lock"), str(tmp_path / "b.lock"))
    assert code == Exit.FAILED and "~ numpy 2.1.3 -> 2.2.0" in out and "docker steps" not in out
    code, out, err = run(diff, nothing, "ns", str(tmp_path / "env.yaml"), str(tmp_path / "b.lock"))
    assert code == 0 and "has no lock; packages are not compared" in err
    code, _, err = run(diff, nothing, "ns", str(tmp_path / "two.yaml"), str(tmp_path / "a.lock"))
    assert code == Exit.USAGE and "holds 2 Environments; give a file with one" in err
    code, _, err = run(diff, nothing, "ns", str(tmp_path / "bad.lock"), str(tmp_path / "a.lock"))
    assert code == Exit.USAGE and err.startswith("error: ")


@pytest.mark.parametrize(("cluster", "reference", "code", "expected"), [
    (Cluster([env()], [built(H2, LOCK_B, [], BASE2)]), "train", 0, LOCK_B),
    (Cluster([env()], [built(H2, None, [], BASE2)]), "train", Exit.NOT_FOUND, "train:2 has no lock"),
    (Cluster([env()], []), "train:2", Exit.NOT_FOUND, f"EnvironmentBuild {build_name(H2)} of train:2 is gone"),
    (Cluster([], []), "nope", Exit.NOT_FOUND, "Environment 'nope' not found in namespace ns"),
], ids=["printed", "no-lock", "build-gone", "no-environment"])
def test_lock_prints_the_lock_or_says_why_not(cluster: Cluster, reference: str, code: int, expected: str) -> None:
    got, out, err = run(lock, cluster, "ns", reference)
    assert got == code
    assert (out if code == 0 else err).startswith(expected if code == 0 else "error: ")
    assert expected in (out if code == 0 else err)
