"""`envkiln import azureml`, the rest of the way (issue #26): Azure's templates, every reference form, versions
coerced like names, pip as Azure writes it (-r, -c, index options, credentials), and the whole fixture tree
imported, validated and hashed (tables)."""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from envkiln.cli.main import main
from envkiln.core.azureml import ImportOptions, coerce_version, import_azureml, manifests_yaml
from envkiln.core.definition import definition_hash
from envkiln.core.manifests import parse_environment
from envkiln.core.names import (
    ANNOTATION_AZUREML_IGNORED,
    ANNOTATION_AZUREML_TEMPLATES,
    ANNOTATION_AZUREML_VERSION,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azureml"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_SET = {"asset.repo.url": "https://github.com/example/azureml-assets", "asset.repo.commit_hash": COMMIT}


def import_one(tmp_path: Path, definition: dict[str, Any], files: dict[str, str] | None = None,
               **options: Any) -> Any:
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "env.yml").write_text(yaml.safe_dump(definition))
    outcomes, tarballs = import_azureml([tmp_path / "env.yml"], ImportOptions(tarball_dir=tmp_path / "out", **options))
    assert len(outcomes) == 1, [o.line() for o in outcomes]
    return outcomes[0], tarballs


def pip_of(spec: dict[str, Any]) -> list[str]:
    return next(d["pip"] for d in spec["conda"]["dependencies"] if isinstance(d, dict))


CONDA = {"dependencies": ["python=3.11", {"pip": ["mlflow-skinny=={{latest-pypi-version}}",
                                                  "six>={{latest-pypi-version}}", "numpy==2.1.3"]}]}

# (id, definition, --set values, (field path, expected value) or None, words in the stderr line)
TEMPLATES: list[tuple[str, dict[str, Any], dict[str, str], tuple[str, Any] | None, list[str]]] = [
    ("latest-image-tag", {"name": "e", "image": "mcr.microsoft.com/azureml/base:{{latest-image-tag}}"}, {},
     ("image", "mcr.microsoft.com/azureml/base:latest"), ["env.yml: image: {{latest-image-tag}} -> latest"]),
    ("latest-image-tag-spaces", {"name": "e", "image": "base:{{ latest-image-tag }}"}, {}, ("image", "base:latest"),
     ["-> latest"]),
    ("latest-image-tag-set", {"name": "e", "image": "base:{{latest-image-tag}}"},
     {"latest-image-tag": "20240908.v1"}, ("image", "base:20240908.v1"), ["{{latest-image-tag}} from --set"]),
    ("latest-pypi-version", {"name": "e", "image": "python:3.11", "conda_file": CONDA}, {},
     ("pip", ["mlflow-skinny", "six", "numpy==2.1.3"]),
     ["conda_file.dependencies[1].pip[0]: {{latest-pypi-version}} pin dropped", "pip[1]: {{latest-pypi-version}}"]),
    ("latest-pypi-version-set", {"name": "e", "image": "python:3.11", "conda_file": CONDA},
     {"latest-pypi-version": "2.17.2"}, ("pip", ["mlflow-skinny==2.17.2", "six>=2.17.2", "numpy==2.1.3"]),
     ["{{latest-pypi-version}} from --set"]),
    ("any-template-set", {"name": "e", "image": "python:3.11",
                          "conda_file": {"dependencies": ["python={{python-version}}"]}},
     {"python-version": "3.12"}, ("conda", {"dependencies": ["python=3.12"]}), ["{{python-version}} from --set"]),
    ("repo-url-set", {"name": "e", "build": {"path": "{{asset.repo.url}}#{{asset.repo.commit_hash}}:env/ctx"}},
     REPO_SET, ("build", {"git": {"url": REPO_SET["asset.repo.url"], "ref": COMMIT, "path": "env/ctx"},
                          "dockerfilePath": "Dockerfile"}), ["{{asset.repo.url}} from --set"]),
    # Unfilled: an error naming the file, the field and the --set that fills it.
    ("unfilled", {"name": "e", "build": {"path": "{{asset.repo.url}}"}}, {}, None,
     ["env.yml: build.path: {{asset.repo.url}} is Azure ML templating", "--set asset.repo.url=VALUE"]),
    ("unfilled-conda", {"name": "e", "image": "python:3.11",
                        "conda_file": {"dependencies": ["python={{python-version}}"]}}, {}, None,
     ["env.yml: conda_file.dependencies[0]: {{python-version}}", "--set python-version=VALUE"]),
    ("pypi-without-pin", {"name": "e", "image": "base:{{latest-pypi-version}}"}, {}, None,
     ["env.yml: image: {{latest-pypi-version}}", "--set latest-pypi-version=VALUE"]),
    ("shell-template-not-quoted", {"name": "e", "image": "base:{{MODEL_VERSION}}"}, {}, None,
     ["env.yml: image: templating ({{...}})", "--set NAME=VALUE"]),
]


@pytest.mark.parametrize(("definition", "given", "expected", "words"), [c[1:] for c in TEMPLATES],
                         ids=[c[0] for c in TEMPLATES])
def test_templates_are_filled_recorded_and_said_or_an_error_naming_the_set(
        definition: dict[str, Any], given: dict[str, str], expected: tuple[str, Any] | None, words: list[str],
        tmp_path: Path) -> None:
    outcome, _ = import_one(tmp_path, definition, variables=given)
    for word in words:
        assert word in outcome.line(), outcome.line()
    if expected is None:
        assert outcome.status == "error", outcome.line()
        assert "MODEL_VERSION" not in outcome.line(), "a template that is not one of Azure's names is not quoted"
        return
    assert outcome.status == "imported", outcome.line()
    manifest = outcome.documents[0]
    key, value = expected
    assert (pip_of(manifest["spec"]) if key == "pip" else manifest["spec"][key]) == value
    recorded = json.loads(manifest["metadata"]["annotations"][ANNOTATION_AZUREML_TEMPLATES])
    assert all("{{" in text for text in recorded.values()) and recorded, "the originals, as written"
    parse_environment(manifest, "imported")  # and it is a valid envkiln definition


def test_asset_variables_alone_are_not_recorded_as_templates() -> None:
    outcomes, _ = import_azureml([FIXTURES / "assets" / "sklearn-asset"], ImportOptions(root=FIXTURES))
    [outcome] = outcomes
    assert outcome.status == "imported", outcome.line()
    assert ANNOTATION_AZUREML_TEMPLATES not in outcome.documents[0]["metadata"]["annotations"]
    assert "templates filled" not in outcome.line()
    ignored = "asset.yaml.categories, extra_config.image.name, extra_config.image.os"  # where it publishes
    assert outcome.documents[0]["metadata"]["annotations"][ANNOTATION_AZUREML_IGNORED] == ignored
    assert f"ignored: {ignored}" in outcome.line()


CONTEXT_FILES = {
    "ctx/Dockerfile": "FROM mcr.microsoft.com/azureml/base:{{latest-image-tag}}\nCOPY requirements.txt /r.txt\n",
    "ctx/requirements.txt": "numpy=={{latest-pypi-version}}\nsix==1.16.0\n",
    "ctx/conf/app.yaml": "greeting: '{{ .Values.greeting }}'\n",  # the app's own templating: left as it is
    "ctx/data.bin": "\x00{{latest-image-tag}}",
}


@pytest.mark.parametrize("tarball", [False, True], ids=["configmap", "tarball"])
def test_context_files_are_filled_in_what_the_build_gets(tarball: bool, tmp_path: Path) -> None:
    options: dict[str, Any] = {"tarball_url": "https://files.example.com/c", "max_configmap_bytes": 10} if tarball \
        else {}
    outcome, tarballs = import_one(tmp_path, {"name": "ctx-env", "build": {"path": "ctx"}}, CONTEXT_FILES, **options)
    assert outcome.status == "imported", outcome.line()
    if tarball:
        [content] = tarballs.values()
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            seen = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    else:
        config_map = outcome.documents[1]
        seen = {k: v.encode() for k, v in config_map.get("data", {}).items()}
        seen |= {k: base64.b64decode(v) for k, v in config_map.get("binaryData", {}).items()}
        with tarfile.open(fileobj=io.BytesIO(seen.pop(".envkiln-context.tar"))) as tar:
            seen |= {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert seen["Dockerfile"].startswith(b"FROM mcr.microsoft.com/azureml/base:latest\n")
    assert seen["requirements.txt"] == b"numpy\nsix==1.16.0\n"
    assert seen["conf/app.yaml"] == CONTEXT_FILES["ctx/conf/app.yaml"].encode(), "unknown templates kept"
    assert seen["data.bin"] == CONTEXT_FILES["ctx/data.bin"].encode(), "not text: untouched"
    recorded = json.loads(outcome.documents[0]["metadata"]["annotations"][ANNOTATION_AZUREML_TEMPLATES])
    assert sorted(Path(k.split(" line ")[0]).name for k in recorded) == ["Dockerfile", "requirements.txt"]
    assert "Dockerfile line 1: {{latest-image-tag}} -> latest" in outcome.line()


VERSIONS = [
    ("1", "1"), ("2024.06", "2024.06"), ("1-<VERSION>", "1-VERSION"), ("<VERSION>", "VERSION"), ("1 beta", "1-beta"),
    ("_x", "x"), ("v1/2", "v1-2"), ("<>", None), ("9" * 80, None),
]


@pytest.mark.parametrize(("azure", "expected"), VERSIONS)
def test_versions_are_coerced_like_names_and_the_original_kept(azure: str, expected: str | None,
                                                                tmp_path: Path) -> None:
    version = coerce_version(azure)
    if expected is not None:
        assert version == expected
    assert len(version) <= 63 and parse_environment(
        {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "x"},
         "spec": {"version": version, "image": "python:3.11", "userManaged": True}})
    outcome, _ = import_one(tmp_path, {"name": "e", "version": azure, "image": "python:3.11"})
    assert outcome.status == "imported", outcome.line()
    manifest = outcome.documents[0]
    assert manifest["spec"]["version"] == version
    annotations = manifest["metadata"]["annotations"]
    assert annotations.get(ANNOTATION_AZUREML_VERSION) == (None if version == azure else azure)
    assert ("is not an envkiln version" in outcome.line()) is (version != azure)


def test_pip_as_azure_writes_it() -> None:
    outcomes, _ = import_azureml([FIXTURES / "environments" / "pip-forms.yml"], ImportOptions(root=FIXTURES))
    [outcome] = outcomes
    assert outcome.status == "imported", outcome.line()
    spec = outcome.documents[0]["spec"]
    assert pip_of(spec) == [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        "--index-url https://pypi.org/simple",  # -i, as the model writes it
        "numpy",  # from -r requirements.txt
        "scikit-learn>=1.3",
        'torch; platform_machine == "x86_64"',
        "mlflow-skinny",  # =={{latest-pypi-version}}
    ]
    # -c constraints.txt: every constraint, for named packages and others (urllib3), as pip -c applies them.
    assert spec["dockerSteps"] == [
        "RUN mkdir -p /etc/envkiln && printf '%s\\n' 'numpy==2.1.3' 'scikit-learn==1.5.2' 'torch==2.5.1' 'urllib3<2' "
        "> /etc/envkiln/pip-constraints.txt",
        "ENV PIP_CONSTRAINT=/etc/envkiln/pip-constraints.txt UV_CONSTRAINT=/etc/envkiln/pip-constraints.txt",
    ]
    line = outcome.line()
    assert "4 constraints (-c) written to /etc/envkiln/pip-constraints.txt" in line
    assert "--extra-index-url with credentials dropped" in line and "PIP_EXTRA_INDEX_URL" in line
    everything = line + manifests_yaml(outcomes)
    assert "FEED_TOKEN" not in everything and "pkgs.example.com" not in everything


def test_the_render_installs_under_the_constraints() -> None:
    """The docker steps come before the install stage, which is FROM the base stage: its installs (micromamba's
    pip, uv and pip) run with PIP_CONSTRAINT and UV_CONSTRAINT set."""
    from envkiln.core.render import render

    outcomes, _ = import_azureml([FIXTURES / "environments" / "pip-forms.yml"], ImportOptions(root=FIXTURES))
    environment = parse_environment(outcomes[0].documents[0], "imported")
    dockerfile = render(environment.spec, definition_hash(environment.spec)).dockerfile
    steps = dockerfile.index("ENV PIP_CONSTRAINT=/etc/envkiln/pip-constraints.txt")
    assert dockerfile.index("pip-constraints.txt") < steps < dockerfile.index("FROM envkiln-base AS envkiln-install")
    assert steps < dockerfile.index("micromamba create")


@pytest.mark.parametrize(("count", "steps"), [(0, 0), (1, 2), (40, 2), (400, 11)])
def test_constraint_steps_fit_docker_steps(count: int, steps: int) -> None:
    from envkiln.core.azureml import constraint_steps
    from envkiln.core.models.lines import check_docker_step

    constraints = [f"package-{i:03d}=={i}.0" for i in range(count)]
    written = constraint_steps(constraints)
    assert len(written) == steps
    for step in written:
        assert len(step) <= 1024 and check_docker_step(step)
    quoted = [c for step in written[:-1] for c in re.findall(r"'([^']+)'", step) if c != "%s\\n"]
    assert quoted == constraints, "every constraint once, in order"
    assert all(">>" in step for step in written[1:-1]) and (not written or " > " in written[0])


def test_a_credential_in_an_index_url_never_reaches_the_hash(tmp_path: Path) -> None:
    hashes = set()
    for url in ("https://user:one@pkgs.example.com/simple", "https://user:two@pkgs.example.com/simple",
                "https://${PAT}@pkgs.example.com/simple"):
        outcome, _ = import_one(tmp_path, {"name": "e", "image": "python:3.11", "conda_file": {
            "dependencies": ["python=3.11", {"pip": [f"--extra-index-url {url}", "six==1.16.0"]}]}})
        assert outcome.status == "imported", outcome.line()
        assert "one" not in outcome.line() and "two" not in outcome.line() and "PAT" not in outcome.line()
        environment = parse_environment(outcome.documents[0], "imported")
        hashes.add(definition_hash(environment.spec))
    assert len(hashes) == 1
    outcome, _ = import_one(tmp_path, {"name": "e", "image": "python:3.11", "conda_file": {
        "dependencies": ["python=3.11", {"pip": ["--extra-index-url https://pkgs.example.com/simple",
                                                 "six==1.16.0"]}]}})
    assert pip_of(outcome.documents[0]["spec"])[0] == "--extra-index-url https://pkgs.example.com/simple", \
        "an index without credentials is kept"


# jobs/references.yml: (job, status, envkiln name, words in the line)
REFERENCE_FORMS = [
    ("lightgbm", "curated", "azureml-lightgbm-4.5", ["Azure's LightGBM 3.3, envkiln's 4.5 (a major version newer)",
                                                     "Azure's version 5 is not an envkiln version"]),
    ("automl", "skipped", None, ["has no envkiln counterpart: AutoML"]),
    ("acpt", "curated", "azureml-acpt-pytorch-2.5-cuda", ["Azure's PyTorch 2.8, envkiln's 2.5 (older)"]),
    ("sklearn_label", "curated", "azureml-sklearn-1.5", ["(the same versions)",
                                                         "curated/azureml-sklearn-1.5@latest"]),
    ("tensorflow", "curated", "azureml-tensorflow-2.16-cuda", ["(the same versions)"]),
    ("registry_version", "reference", "shared-env", ["the Azure ML registry team-registry (version 2)",
                                                     "envkiln.dev/environment=shared-env:2"]),
    ("registry_label", "reference", "shared-env", ["(label prod)", "Azure's label 'prod' has no envkiln counterpart"]),
    ("workspace_latest", "reference", "churn-eval-env", ["envkiln.dev/environment=churn-eval-env@latest"]),
    ("workspace_placeholder", "reference", "churn-eval-env", ["envkiln.dev/environment=churn-eval-env:1-VERSION",
                                                              "the importer writes it '1-VERSION'"]),
    ("workspace_full", "reference", "team-env", ["the workspace environment team-env (version 4)"]),
]


def test_every_reference_form() -> None:
    outcomes, _ = import_azureml([FIXTURES / "jobs" / "references.yml"], ImportOptions(root=FIXTURES))
    found = {o.source.rsplit("jobs.", 1)[1].removesuffix(".environment"): o for o in outcomes}
    assert set(found) == {r[0] for r in REFERENCE_FORMS}, [o.line() for o in outcomes]
    for job, status, name, words in REFERENCE_FORMS:
        outcome = found[job]
        assert (outcome.status, outcome.name) == (status, name), outcome.line()
        for word in words:
            assert word in outcome.line(), outcome.line()


def test_cli_set_fills_templates_and_refuses_a_malformed_one(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.yaml"
    asset = str(FIXTURES / "assets" / "repo-asset")
    assert main(["import", "azureml", asset, "-o", str(target)]) == 1
    assert "--set asset.repo.url=VALUE" in capsys.readouterr().err
    assert main(["import", "azureml", asset, "-o", str(target),
                 *[arg for k, v in REPO_SET.items() for arg in ("--set", f"{k}={v}")]]) == 0
    [environment] = yaml.safe_load_all(target.read_text())
    assert environment["spec"]["build"]["git"] == {"url": REPO_SET["asset.repo.url"], "ref": COMMIT,
                                                   "path": "assets/training/repo-built-trainer/context"}
    assert environment["spec"]["version"] == "1-VERSION"
    assert environment["metadata"]["annotations"][ANNOTATION_AZUREML_VERSION] == "1-<VERSION>"
    capsys.readouterr()
    assert main(["import", "azureml", asset, "--set", "no-equals-sign"]) == 2
    assert "--set 'no-equals-sign': write --set NAME=VALUE" in capsys.readouterr().err


# Fixtures that are meant to be refused (file, words of the error).
REFUSED = {"environments/windows.yml": "os_type: windows"}


def test_done_every_fixture_imports_validates_and_hashes(tmp_path: Path) -> None:
    """Issue #26's 'done': the repository's fixtures (with the --set the repository-built asset needs) import;
    each Environment validates and hashes (its ConfigMap context with it); only the deliberately refused ones
    are errors."""
    outcomes, tarballs = import_azureml([FIXTURES], ImportOptions(root=FIXTURES, variables=REPO_SET,
                                                                  tarball_dir=tmp_path))
    errors = {o.source.split("azureml/", 1)[1]: o.line() for o in outcomes if o.status == "error"}
    assert set(errors) == set(REFUSED), errors
    assert all(REFUSED[k] in line for k, line in errors.items())
    hashes: dict[str, str] = {}
    for outcome in (o for o in outcomes if o.status == "imported"):
        manifest, *extra = outcome.documents
        environment = parse_environment(manifest, outcome.source)
        context = None
        for config_map in extra:
            context = {**config_map.get("data", {}),
                       **{k: base64.b64decode(v) for k, v in config_map.get("binaryData", {}).items()}}
        commit = environment.spec.build.git.ref if environment.spec.build and environment.spec.build.git else None
        hashes[environment.metadata.name or ""] = definition_hash(environment.spec, context, commit)
    assert len(hashes) == 19 and all(len(h) == 32 for h in hashes.values())
    statuses = sorted(o.status for o in outcomes)
    assert statuses.count("curated") == 8 and statuses.count("reference") == 6 and statuses.count("skipped") == 1
    assert not tarballs, "every fixture context fits a ConfigMap"
