"""`envkiln import azureml`: every fixture form, names, tags, references, contexts, templating (tables)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from envkiln.cli.main import main
from envkiln.core.azureml import (
    ImportOptions,
    Reference,
    curated_counterpart,
    deterministic_tar,
    import_azureml,
    kube_name,
    manifests_yaml,
    parse_reference,
    tag_value,
)
from envkiln.core.manifests import load_environments
from envkiln.core.names import ANNOTATION_AZUREML_IGNORED, ANNOTATION_AZUREML_NAME, ANNOTATION_AZUREML_SOURCE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azureml"


def outcomes_of(*relative: str, **options: object):  # type: ignore[no-untyped-def]
    """Import fixtures with the whole fixture tree as the root (jobs/ names ../components/, ../environments/)."""
    options.setdefault("root", FIXTURES)
    outcomes, tarballs = import_azureml([FIXTURES / r for r in relative], ImportOptions(**options))  # type: ignore[arg-type]
    return outcomes, tarballs


def by_name(outcomes):  # type: ignore[no-untyped-def]
    return {o.name: o for o in outcomes if o.status == "imported"}


# (fixture, status, Environment name or None, text in the stderr line)
FORMS = [
    ("environments/team-sklearn.yml", "imported", "team.sklearn-env", "image + conda environment; ignored: properties"),
    ("environments/byoc.yml", "imported", "triton-serving", "image used as is"),
    ("environments/docker-context.yml", "imported", "tabular-trainer", "ConfigMap tabular-trainer-context"),
    ("environments/nested-context.yml", "imported", "nested-build", "ConfigMap nested-build-context"),
    ("environments/templated.yml", "imported", "openmpi-latest", "image: {{latest-image-tag}} -> latest"),
    ("environments/windows.yml", "error", None, "os_type: windows"),
    ("jobs/command-inline.yml", "imported", "train-churn", "environment -> train-churn"),
    ("jobs/command-curated.yml", "curated", "azureml-sklearn-1.5", "use envkiln's curated azureml-sklearn-1.5"),
    ("jobs/sweep.yml", "curated", "azureml-sklearn-1.5", "trial.environment"),
    ("components/prep.yml", "imported", "prep-env", "components/prep.yml: environment"),
    ("deployments/online.yml", "imported", "churn-serving", "image + conda"),
    ("deployments/batch.yml", "imported", "churn-batch-env", "image + conda"),
    ("assets/sklearn-asset", "imported", "sklearn-tabular", "ConfigMap sklearn-tabular-context"),
    ("assets/conda-asset", "imported", "lightgbm-conda", "image + conda"),
    ("assets/templated-asset", "imported", "openmpi-tabular", "context/Dockerfile line 1: {{latest-image-tag}} -> "
                                                              "latest"),
    ("assets/inference-asset", "imported", "minimal-serving", "{{latest-pypi-version}} pin dropped"),
    ("assets/repo-asset", "error", None, "build.path: {{asset.repo.url}} is Azure ML templating that nothing fills "
                                         "here (Azure's asset release pipeline fills it); fill it with --set "
                                         "asset.repo.url=VALUE"),
    ("environments/pip-forms.yml", "imported", "pip-forms", "version '1-<VERSION>' is not an envkiln version: "
                                                            "written '1-VERSION'"),
]


@pytest.mark.parametrize(("fixture", "status", "name", "text"), FORMS, ids=[f[0] for f in FORMS])
def test_each_form_gives_one_line_saying_what_became_of_it(fixture: str, status: str, name: str | None,
                                                           text: str) -> None:
    outcomes, _ = outcomes_of(fixture)
    assert len(outcomes) == 1, [o.line() for o in outcomes]
    [outcome] = outcomes
    assert outcome.status == status, outcome.line()
    assert outcome.name == name
    assert text in outcome.line(), outcome.line()
    assert outcome.line().startswith(f"{status}: "), "one line, status first"
    if status == "error":
        assert str(FIXTURES / fixture.split("/")[0]) in outcome.line(), "errors name the file"


PIPELINE = [  # (field, status, name)
    ("jobs.train.environment", "imported", "churn-pipeline-train"),
    ("jobs.score.environment", "curated", "azureml-tensorflow-2.16-cuda"),
    ("jobs.evaluate.environment", "reference", "churn-eval-env"),
    ("jobs.torch.environment", "curated", "azureml-pytorch-2.5-cpu"),
    ("components/prep.yml: environment", "imported", "prep-env"),  # followed from jobs.prep.component
]


def test_pipeline_jobs_are_walked_and_components_followed() -> None:
    outcomes, _ = outcomes_of("jobs/pipeline.yml")
    found = {(o.source.split("azureml/", 1)[1].split(": ", 1)[-1] if "prep" not in o.source
              else "components/prep.yml: environment", o.status, o.name) for o in outcomes}
    assert found == set(PIPELINE), [o.line() for o in outcomes]
    score = next(o for o in outcomes if o.source.endswith("jobs.score.environment"))
    assert "(the same versions)" in score.message, "tensorflow-2.16-cuda12 has an exact counterpart"


@pytest.mark.parametrize(("text", "pinned"), [
    ("azureml:AzureML-sklearn-1.5@latest", False),
    ("azureml:AzureML-sklearn-1.5:12", True),
    ("azureml://registries/azureml/environments/sklearn-1.5/versions/3", True),
])
def test_curated_lines_print_the_reference_pods_use(text: str, pinned: bool, tmp_path: Path) -> None:
    from envkiln.core.workloads import parse_request

    (tmp_path / "job.yml").write_text(yaml.safe_dump({"type": "command", "command": "python x.py",
                                                      "environment": text}))
    outcomes, _ = import_azureml([tmp_path / "job.yml"], ImportOptions(curated_namespace="ml-curated"))
    [outcome] = outcomes
    assert outcome.status == "curated"
    line = outcome.line()
    assert ("annotate pods envkiln.dev/environment=curated/azureml-sklearn-1.5@latest" in line
            and "label them envkiln.dev/environment=curated_azureml-sklearn-1.5" in line), line
    assert ("is not an envkiln version" in line and "kubectl get environment -n ml-curated azureml-sklearn-1.5"
            in line) is pinned, line
    # What the line says, the webhook reads as that curated environment.
    request = parse_request({"envkiln.dev/environment": "curated_azureml-sklearn-1.5"},
                            {"envkiln.dev/environment": "curated/azureml-sklearn-1.5@latest"})
    assert (request.name, request.curated, request.latest) == ("azureml-sklearn-1.5", True, True)
    assert parse_request({"envkiln.dev/environment": "curated_azureml-sklearn-1.5"}, {}).curated


# What fills the repository-built asset's templates (tests/fixtures/azureml/assets/repo-asset).
REPO_SET = {"asset.repo.url": "https://github.com/example/azureml-assets", "asset.repo.commit_hash": "0" * 40}


def test_the_whole_fixture_tree_imports_validates_and_hashes() -> None:
    outcomes, _ = outcomes_of(".", variables=REPO_SET)
    statuses = [o.status for o in outcomes]
    assert statuses.count("imported") == 19 and statuses.count("error") == 1, [o.line() for o in outcomes]
    assert statuses.count("curated") == 8 and statuses.count("reference") == 6 and statuses.count("skipped") == 1
    documents = list(yaml.safe_load_all(manifests_yaml(outcomes)))
    names = [d["metadata"]["name"] for d in documents if d["kind"] == "Environment"]
    assert len(names) == len(set(names)) == 19, "conda files and components read through others are not repeated"


def test_imported_manifests_pass_envkiln_validate(tmp_path: Path) -> None:
    outcomes, _ = outcomes_of(".", variables=REPO_SET)
    target = tmp_path / "imported.yaml"
    target.write_text(manifests_yaml(outcomes))
    loaded, problems = load_environments([target])
    assert not problems, problems
    assert len(loaded) == 19
    contexts = [item for item in loaded if item.environment.spec.build and item.environment.spec.build.config_map]
    assert contexts and all(item.context_data() for item in contexts), "the ConfigMap is in the same file"


def test_conda_file_details() -> None:
    outcomes, _ = outcomes_of("environments/team-sklearn.yml")
    [manifest] = outcomes[0].documents
    spec = manifest["spec"]
    assert spec["version"] == "3"
    assert spec["tags"] == {"owner": "data-team", "gpu": "false", "priority": "2", "ratio": "0.5"}
    assert spec["environmentVariables"] == {"OMP_NUM_THREADS": "1"}, "conda variables are set in the image's env"
    pip = spec["conda"]["dependencies"][-1]["pip"]
    assert pip[0] == "mlflow-skinny==2.17.2"
    assert pip[1:3] == ["pandas==2.2.3", "https://files.example.com/wheels/featurekit-0.4.1-py3-none-any.whl"], \
        "-r requirements.txt is inlined, relative to the conda file, comments dropped"
    assert pip[3].startswith("churnlib @ git+https://")
    assert "pip" not in spec["conda"]["dependencies"], "no '- pip' was written; the render adds it"
    annotations = manifest["metadata"]["annotations"]
    assert annotations[ANNOTATION_AZUREML_NAME] == "Team.Sklearn_Env"
    assert annotations[ANNOTATION_AZUREML_SOURCE].endswith("team-sklearn.yml")
    assert annotations[ANNOTATION_AZUREML_IGNORED] == "properties"


def test_inference_config_and_byoc() -> None:
    outcomes, _ = outcomes_of("environments/byoc.yml")
    spec = outcomes[0].documents[0]["spec"]
    assert spec["userManaged"] is True and spec["version"] == "2024.06"
    assert spec["inference"] == {"livenessRoute": "/v2/health/live", "readinessRoute": "/v2/health/ready",
                                 "scoringRoute": "/", "port": 8000}


NAMES = [
    ("Team.Sklearn_Env", "team.sklearn-env"),
    ("AzureML-Custom", "imported-azureml-custom"),  # reserved prefix outside the curated namespace
    ("my env (v2)", "my-env-v2"),
    ("a..b", "a.b"),
    ("-._x_.-", "x"),
    ("___", None),  # nothing left: a name from the hash
    ("x" * 80, None),  # too long: cut, with a hash suffix
]


@pytest.mark.parametrize(("azure", "expected"), NAMES)
def test_names_become_kubernetes_names(azure: str, expected: str | None, tmp_path: Path) -> None:
    env = tmp_path / "env.yml"
    env.write_text(yaml.safe_dump({"name": azure, "image": "python:3.11"}))
    outcomes, _ = import_azureml([env])
    [outcome] = outcomes
    assert outcome.status == "imported", outcome.line()
    name = outcome.name or ""
    if expected:
        assert name == expected
    assert len(name) <= 63
    assert name == kube_name(azure) or name == kube_name("imported-" + kube_name(azure))
    assert outcome.documents[0]["metadata"]["annotations"][ANNOTATION_AZUREML_NAME] == azure


@pytest.mark.parametrize(("value", "expected"), [
    (True, "true"), (False, "false"), (3, "3"), (0.5, "0.5"), (None, ""), ("x", "x"), ([1, "a"], '[1,"a"]'),
    ({"b": 1, "a": 2}, '{"a":2,"b":1}'),
])
def test_tags_become_strings(value: object, expected: str) -> None:
    assert tag_value(value) == expected


REFERENCES = [
    ("azureml:AzureML-sklearn-1.5:33", Reference("AzureML-sklearn-1.5", "33", None), "azureml-sklearn-1.5"),
    ("azureml:AzureML-sklearn-1.5@latest", Reference("AzureML-sklearn-1.5", None, None, "latest"),
     "azureml-sklearn-1.5"),
    ("azureml:AzureML-AutoML@prod", Reference("AzureML-AutoML", None, None, "prod"), None),  # no family
    ("azureml://registries/azureml/environments/sklearn-1.5/versions/12", Reference("sklearn-1.5", "12", "azureml"),
     "azureml-sklearn-1.5"),
    ("azureml://registries/azureml/environments/sklearn-1.5/labels/latest",
     Reference("sklearn-1.5", None, "azureml", "latest"), "azureml-sklearn-1.5"),
    ("azureml://registries/azureml/environments/sklearn-1.5", Reference("sklearn-1.5", None, "azureml"),
     "azureml-sklearn-1.5"),
    ("azureml://registries/AzureML/environments/lightgbm-3.3/versions/1", Reference("lightgbm-3.3", "1", "AzureML"),
     "azureml-lightgbm-4.5"),
    ("azureml:AzureML-pytorch-2.5-ubuntu22.04-py311-cpu:2", Reference("AzureML-pytorch-2.5-ubuntu22.04-py311-cpu", "2",
                                                                     None), "azureml-pytorch-2.5-cpu"),
    ("azureml://registries/azureml/environments/acpt-pytorch-2.5-cuda12.4/versions/1",
     Reference("acpt-pytorch-2.5-cuda12.4", "1", "azureml"), "azureml-acpt-pytorch-2.5-cuda"),
    ("azureml:AzureML-acpt-pytorch-2.8-cuda12.6:1", Reference("AzureML-acpt-pytorch-2.8-cuda12.6", "1", None),
     "azureml-acpt-pytorch-2.5-cuda"),
    ("azureml:AzureML-sklearn-1.0-ubuntu20.04-py38-cpu:1", Reference("AzureML-sklearn-1.0-ubuntu20.04-py38-cpu", "1",
                                                                    None), "azureml-sklearn-1.5"),
    ("azureml:AzureML-tensorflow-2.16-cuda12:3", Reference("AzureML-tensorflow-2.16-cuda12", "3", None),
     "azureml-tensorflow-2.16-cuda"),
    ("azureml:AzureML-lightgbm-3.3:5", Reference("AzureML-lightgbm-3.3", "5", None), "azureml-lightgbm-4.5"),
    ("azureml:my-env:2", Reference("my-env", "2", None), None),
    ("azureml:my-env", Reference("my-env", None, None), None),
    ("azureml:my-env@prod", Reference("my-env", None, None, "prod"), None),
    ("azureml:my-env:1-<VERSION>", Reference("my-env", "1-<VERSION>", None), None),
    ("azureml://registries/team/environments/shared/versions/2", Reference("shared", "2", "team"), None),
    ("azureml://registries/team/environments/shared/labels/prod", Reference("shared", None, "team", "prod"), None),
    ("azureml://subscriptions/s/resourceGroups/g/workspaces/w/environments/e/versions/4", Reference("e", "4", None),
     None),
    ("azureml://subscriptions/s/resourcegroups/g/providers/Microsoft.MachineLearningServices/workspaces/w/"
     "environments/e/labels/latest", Reference("e", None, None, "latest"), None),
]


@pytest.mark.parametrize(("text", "reference", "curated"), REFERENCES, ids=[r[0] for r in REFERENCES])
def test_references_and_curated_counterparts(text: str, reference: Reference, curated: str | None) -> None:
    assert parse_reference(text) == reference
    assert curated_counterpart(reference) == curated


@pytest.mark.parametrize("text", ["my-env:2", "azureml:", "https://x/y", "azureml://registries/r/models/m",
                                  "azureml:a:1:2", "azureml:a@b@c", "azureml://registries/r/environments/e/tags/x"])
def test_not_references(text: str) -> None:
    assert parse_reference(text) is None


CONTEXTS = [  # (files, options, kind, text)
    ({"Dockerfile": b"FROM python:3.11\n", "req.txt": b"six\n"}, {}, "configMap", "ConfigMap"),
    ({"Dockerfile": b"FROM python:3.11\n", "blob.bin": bytes(range(256))}, {}, "configMap", "ConfigMap"),
    # Small nested trees: a ConfigMap, the subdirectories packed in .envkiln-context.tar.
    ({"Dockerfile": b"FROM python:3.11\n", "src/a.py": b"x=1\n"}, {}, "configMap", "1 in subdirectories"),
    ({"Dockerfile": b"FROM python:3.11\n", "we ird.txt": b"x"}, {"tarball_url": "https://f.example/c"}, "configMap",
     "packed in .envkiln-context.tar"),
    ({"Dockerfile": b"FROM python:3.11\n", "docker/Dockerfile": b"FROM x\n", "a/b/c/d.py": b"x=1\n",
      ".envkiln-context.tar": b"mine"}, {},
     "configMap", "3 in subdirectories"),
    # Large ones: a tarball, or an error saying what to do.
    ({"Dockerfile": b"FROM python:3.11\n", "big.txt": b"a" * 2000}, {"tarball_url": "https://f.example/c",
                                                                     "max_configmap_bytes": 1000}, "tarball", "bytes"),
    ({"Dockerfile": b"FROM python:3.11\n", "src/a.py": b"a" * 20000},
     {"tarball_url": "https://f.example/c/", "max_configmap_bytes": 10000}, "tarball", "bytes"),
    ({"Dockerfile": b"FROM python:3.11\n", "src/a.py": b"a" * 20000}, {"max_configmap_bytes": 10000}, None,
     "--tarball-url"),
    ({"Dockerfile": b"FROM base:{{base-tag}}\n"}, {}, None, "Dockerfile line 1: {{base-tag}} is Azure ML templating"),
    ({"Dockerfile": b"FROM base:{{BASE_TAG}}\n"}, {}, None, "Dockerfile line 1: templating ({{...}}) is Azure ML"),
]


@pytest.mark.parametrize(("files", "options", "kind", "text"), CONTEXTS)
def test_directory_contexts_become_configmaps_or_tarballs(files: dict[str, bytes], options: dict[str, object],
                                                          kind: str | None, text: str, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    for relative, content in files.items():
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        (context / relative).write_bytes(content)
    env = tmp_path / "env.yml"
    env.write_text(yaml.safe_dump({"name": "ctx-env", "build": {"path": "ctx"}}))
    outcomes, tarballs = import_azureml([env], ImportOptions(tarball_dir=tmp_path / "out", **options))  # type: ignore[arg-type]
    [outcome] = outcomes
    assert text in outcome.line(), outcome.line()
    if kind is None:
        assert outcome.status == "error" and not tarballs
        return
    build = outcome.documents[0]["spec"]["build"]
    assert kind in build
    if kind == "configMap":
        # What the build sees (the local builder unpacks as the build pod does): exactly the directory.
        from types import SimpleNamespace

        from envkiln.adapters.builders.local import materialise_context
        from envkiln.core.models import BuildContext, BuildPlan, EnvironmentBuildSpec

        [config_map] = outcome.documents[1:]
        assert set(config_map.get("data", {})) | set(config_map.get("binaryData", {})) <= {
            *files, ".envkiln-context.tar"}
        kube: Any = SimpleNamespace(read_configmap=lambda namespace, name: SimpleNamespace(
            data=config_map.get("data"), binary_data=config_map.get("binaryData")))
        spec = EnvironmentBuildSpec(hash="0" * 32, image="r/x:" + "0" * 32, plan=BuildPlan(
            dockerfile="", files=[], context=BuildContext.model_validate(build)))
        (tmp_path / "seen").mkdir()
        materialise_context(spec, "ns", kube, tmp_path / "seen")
        seen = {p.relative_to(tmp_path / "seen").as_posix(): p.read_bytes()
                for p in (tmp_path / "seen").rglob("*") if p.is_file()}
        assert seen == files
    if kind == "tarball":
        [(path, content)] = tarballs.items()
        assert build["tarball"]["sha256"] == hashlib.sha256(content).hexdigest()
        assert build["tarball"]["url"].endswith("/ctx-env-context.tar") and path.name == "ctx-env-context.tar"
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            assert sorted(m.name for m in tar.getmembers() if m.isfile()) == sorted(files)


def test_tarballs_are_deterministic(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("x")
    files = [tmp_path / "d" / "sub" / "f"]
    first = deterministic_tar(tmp_path / "d", files)
    (tmp_path / "d" / "sub" / "f").touch()
    assert deterministic_tar(tmp_path / "d", files) == first


def test_identical_inline_environments_are_imported_once_and_clashing_names_disambiguated(tmp_path: Path) -> None:
    inline = {"image": "python:3.11", "conda_file": {"dependencies": ["python=3.11"]}}
    (tmp_path / "a.yml").write_text(yaml.safe_dump({"type": "command", "name": "job", "environment": inline}))
    (tmp_path / "b.yml").write_text(yaml.safe_dump({"type": "command", "name": "job", "environment": inline}))
    other = {**inline, "conda_file": {"dependencies": ["python=3.12"]}}
    (tmp_path / "c.yml").write_text(yaml.safe_dump({"type": "command", "name": "job", "environment": other}))
    outcomes, _ = import_azureml([tmp_path])
    assert [o.status for o in outcomes] == ["imported", "skipped", "imported"], [o.line() for o in outcomes]
    assert outcomes[0].name == "job" and outcomes[2].name != "job" and (outcomes[2].name or "").startswith("job-")


PIP_PROBLEMS = [
    (["-c missing.txt"], "-c: " ),
    (["six", "-c c.txt"], "not a constraint envkiln reads"),
    (["pkg @ https://user:secret@files.example.com/pkg.whl"], "a URL with credentials"),
    (["-r missing.txt"], "cannot read"),
    (["pkg @ http://x/p.whl"], "write the https:// URL"),
    (["-e ./src"], "editable install"),
]


@pytest.mark.parametrize(("pip", "text"), PIP_PROBLEMS)
def test_pip_entries_envkiln_cannot_take_are_errors_naming_the_field(pip: list[str], text: str,
                                                                       tmp_path: Path) -> None:
    (tmp_path / "env.yml").write_text(yaml.safe_dump(
        {"name": "e", "image": "python:3.11", "conda_file": {"dependencies": ["python=3.11", {"pip": pip}]}}))
    (tmp_path / "c.txt").write_text("six; python_version > '3'\n")
    [outcome] = import_azureml([tmp_path / "env.yml"])[0]
    assert outcome.status == "error" and text in outcome.line(), outcome.line()
    assert "secret" not in outcome.line()
    assert "env.yml" in outcome.line() and ("conda_file" in outcome.line() or "spec.conda" in outcome.line())


def test_cli_writes_the_file_and_one_stderr_line_per_definition(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.yaml"
    status = main(["import", "azureml", str(FIXTURES / "jobs"), str(FIXTURES / "components"), "-o", str(target),
                   "-n", "team-a", "--root", str(FIXTURES)])
    err = capsys.readouterr().err.splitlines()
    assert status == 0
    assert len(err) == 19 and err[-1].startswith("import azureml: 3 imported, 8 curated, 6 reference, 1 skipped"), err
    documents = list(yaml.safe_load_all(target.read_text()))
    assert {d["metadata"]["namespace"] for d in documents} == {"team-a"}
    assert main(["validate", str(target)]) == 0
    assert main(["import", "azureml", str(FIXTURES / "environments" / "windows.yml")]) == 1


# --- only the imported tree is read, and no file's text is printed ---------------------------------------

SECRET = "SECRET-TOKEN-1234"  # text of files the importer must not print (or pack)
OUTSIDE = "{outside}"  # the folder beside the imported tree, where a tenant's link or '..' would point
ENV = "env.yml"  # the definition each case imports (in the tree), unless the case names another

# (case, files in the tree, symbolic links in the tree (path -> target), what is imported, field and words in
# the error line). Every file outside the tree holds SECRET, and /etc/passwd's "root:" must not show either.
STRICT: list[tuple[str, dict[str, str], dict[str, str], str, list[str]]] = [
    ("conda-file-link-to-etc-passwd", {ENV: "image: python:3.11\nconda_file: conda.yml\n"},
     {"conda.yml": "/etc/passwd"}, ENV, ["env.yml: conda_file", "conda.yml is a symbolic link"]),
    ("conda-file-dotdot", {ENV: "image: python:3.11\nconda_file: ../outside/conda.yml\n"}, {}, ENV,
     ["env.yml: conda_file", "'../outside/conda.yml' leaves the imported tree"]),
    ("conda-file-absolute", {ENV: "image: python:3.11\nconda_file: /etc/passwd\n"}, {}, ENV,
     ["env.yml: conda_file", "'/etc/passwd' is not a relative path"]),
    ("conda-file-nul", {ENV: 'image: python:3.11\nconda_file: "conda.yml\\0"\n'}, {}, ENV,
     ["env.yml: conda_file", "the path holds a NUL character"]),
    ("conda-file-under-a-linked-folder", {ENV: "image: python:3.11\nconda_file: linked/conda.yml\n"},
     {"linked": OUTSIDE}, ENV, ["env.yml: conda_file", "linked is a symbolic link"]),
    ("requirements-dotdot", {ENV: "image: python:3.11\nconda_file:\n  dependencies: [python, {pip: ['-r ../outside/"
                                  "r.txt']}]\n"}, {}, ENV,
     ["env.yml: conda_file: dependencies[1].pip: -r", "leaves the imported tree"]),
    ("requirements-absolute", {ENV: "image: python:3.11\nconda_file:\n  dependencies: [python, {pip: ['-r /etc/"
                                    "passwd']}]\n"}, {}, ENV, ["dependencies[1].pip: -r", "is not a relative path"]),
    ("requirements-link", {ENV: "image: python:3.11\nconda_file:\n  dependencies: [python, {pip: ['-r r.txt']}]\n"},
     {"r.txt": OUTSIDE + "/r.txt"}, ENV, ["dependencies[1].pip: -r", "r.txt is a symbolic link"]),
    ("requirements-line-not-quoted", {ENV: "image: python:3.11\nconda_file:\n  dependencies: [python, {pip: ['-r "
                                           "r.txt']}]\n", "r.txt": f"six\nsix=={{{{{SECRET}}}}}\n"}, {}, ENV,
     ["dependencies[1].pip (", "r.txt line 2): templating ({{...}}) is Azure ML templating"]),
    ("constraints-line-not-quoted", {ENV: "image: python:3.11\nconda_file:\n  dependencies: [python, {pip: ['-c "
                                          "c.txt']}]\n", "c.txt": f"six==1.16.0\n-e {SECRET}\n"}, {}, ENV,
     ["dependencies[1].pip (", "c.txt line 2): not a constraint envkiln reads"]),
    ("constraints-dotdot", {ENV: "image: python:3.11\nconda_file:\n  dependencies: [python, {pip: ['-c ../outside/"
                                 "r.txt']}]\n"}, {}, ENV,
     ["env.yml: conda_file: dependencies[1].pip: -c", "leaves the imported tree"]),
    ("constraints-link", {ENV: "image: python:3.11\nconda_file:\n  dependencies: [python, {pip: ['-c c.txt']}]\n"},
     {"c.txt": OUTSIDE + "/r.txt"}, ENV, ["dependencies[1].pip: -c", "c.txt is a symbolic link"]),
    ("build-path-dotdot", {ENV: "build: {path: ../outside}\n"}, {}, ENV,
     ["env.yml: build.path", "'../outside' leaves the imported tree"]),
    ("build-path-absolute", {ENV: "build: {path: /etc}\n"}, {}, ENV, ["env.yml: build.path", "not a relative path"]),
    ("build-path-link", {ENV: "build: {path: ctx}\n"}, {"ctx": OUTSIDE}, ENV,
     ["env.yml: build.path", "ctx is a symbolic link"]),
    ("context-file-link-to-etc-passwd", {ENV: "build: {path: ctx}\n", "ctx/Dockerfile": "FROM python:3.11\n"},
     {"ctx/passwd": "/etc/passwd"}, ENV, ["env.yml: build.path", "ctx/passwd is a symbolic link"]),
    ("context-folder-link", {ENV: "build: {path: ctx}\n", "ctx/Dockerfile": "FROM python:3.11\n"},
     {"ctx/src/data": OUTSIDE}, ENV, ["env.yml: build.path", "ctx/src/data is a symbolic link"]),
    ("dockerfile-link", {ENV: "build: {path: ctx}\n", "ctx/x": "x"}, {"ctx/Dockerfile": OUTSIDE + "/Dockerfile"},
     ENV, ["env.yml: build.dockerfile_path", "ctx/Dockerfile is a symbolic link"]),
    ("dockerfile-dotdot", {ENV: "build: {path: ctx, dockerfile_path: ../../outside/Dockerfile}\n",
                           "ctx/Dockerfile": "FROM python:3.11\n"}, {}, ENV,
     ["env.yml: build.dockerfile_path", "is not inside the build context"]),
    ("dockerfile-absolute", {ENV: "build: {path: ctx, dockerfile_path: /etc/passwd}\n",
                             "ctx/Dockerfile": "FROM python:3.11\n"}, {}, ENV,
     ["env.yml: build.dockerfile_path", "is not inside the build context"]),
    ("dockerfile-line-not-quoted", {ENV: "build: {path: ctx}\n",
                                    "ctx/Dockerfile": f"FROM python:3.11\nRUN echo {SECRET} {{{{x}}}}\n"}, {}, ENV,
     ["ctx/Dockerfile line 2: {{x}} is Azure ML templating", "--set x=VALUE"]),
    ("job-environment-dotdot", {"job.yml": "type: command\nenvironment: ../outside/env.yml\n"}, {}, "job.yml",
     ["job.yml: environment", "leaves the imported tree"]),
    ("job-environment-link", {"job.yml": "type: command\nenvironment: file:env2.yml\n"},
     {"env2.yml": OUTSIDE + "/env.yml"}, "job.yml", ["job.yml: environment", "env2.yml is a symbolic link"]),
    ("pipeline-component-absolute", {"p.yml": "type: pipeline\njobs:\n  a: {component: /etc/c.yml}\n"}, {}, "p.yml",
     ["p.yml: jobs.a.component", "'/etc/c.yml' is not a relative path"]),
    ("asset-spec-dotdot", {"asset/asset.yaml": "name: a\nversion: 1\nspec: ../../outside/env.yml\n"}, {}, "asset",
     ["asset.yaml: spec", "leaves the imported tree"]),
    ("asset-extra-config-absolute", {"asset/asset.yaml": "name: a\nversion: 1\nextra_config: /etc/passwd\n",
                                     "asset/spec.yaml": "image: python:3.11\n"}, {}, "asset",
     ["asset.yaml: extra_config", "is not a relative path"]),
    ("yaml-link-in-the-tree", {}, {"stolen.yml": OUTSIDE + "/env.yml"}, ".", ["stolen.yml: a symbolic link"]),
    ("bad-yaml-not-quoted", {ENV: f"image: python:3.11\nconda_file: [{SECRET}\n"}, {}, ENV,
     ["env.yml: not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'"]),
    ("duplicate-key-not-quoted", {ENV: f"image: python:3.11\n{SECRET}: 1\n{SECRET}: 2\n"}, {}, ENV,
     ["env.yml: not valid YAML at line 3, column 1: found duplicate key …"]),
    ("bad-conda-file-not-quoted", {ENV: "image: python:3.11\nconda_file: c.yml\n", "c.yml": f"a: b: {SECRET}\n"},
     {}, ENV, ["c.yml: not valid YAML at line 1"]),
    ("not-utf8-not-quoted", {ENV: "image: python:3.11\nconda_file: c.yml\n", "c.yml": "\udcff" + SECRET}, {}, ENV,
     ["c.yml: not UTF-8 text"]),
]


def make_tree(tmp_path: Path, files: dict[str, str], links: dict[str, str]) -> Path:
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    for name in ("conda.yml", "r.txt", "Dockerfile", "env.yml", "c.yml"):  # what a link or '..' could reach
        (outside / name).parent.mkdir(parents=True, exist_ok=True)
        (outside / name).write_text(f"image: python:3.11\nconda_file: {SECRET}.yml\n# {SECRET}\n")
    tree.mkdir()
    for name, text in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    for name, target in links.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).symlink_to(target.replace(OUTSIDE, str(outside)))
    return tree


@pytest.mark.parametrize(("files", "links", "imported", "words"), [c[1:] for c in STRICT], ids=[c[0] for c in STRICT])
def test_only_the_imported_tree_is_read_and_no_file_text_is_printed(
        files: dict[str, str], links: dict[str, str], imported: str, words: list[str], tmp_path: Path) -> None:
    tree = make_tree(tmp_path, files, links)
    outcomes, tarballs = import_azureml([tree / imported], ImportOptions(tarball_dir=tmp_path / "out"))
    errors = [o.line() for o in outcomes if o.status == "error"]
    assert len(errors) == 1, [o.line() for o in outcomes]
    for word in words:
        assert word in errors[0], errors[0]
    everything = "\n".join(o.line() for o in outcomes) + manifests_yaml(outcomes)
    assert SECRET not in everything and "root:x" not in everything, everything
    assert not tarballs


def test_dotdot_inside_the_tree_is_followed_and_the_root_can_be_widened(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {"jobs/job.yml": "type: command\nenvironment:\n  image: python:3.11\n"
                                                "  conda_file: ../envs/conda.yml\n",
                                "envs/conda.yml": "dependencies: [python=3.11]\n"}, {})
    [outcome] = import_azureml([tree])[0]
    assert outcome.status == "imported", outcome.line()
    [alone] = import_azureml([tree / "jobs" / "job.yml"])[0]  # the tree is the file's folder: jobs/
    assert alone.status == "error" and "leaves the imported tree" in alone.line() and "jobs" in alone.line()
    [widened] = import_azureml([tree / "jobs" / "job.yml"], ImportOptions(root=tree))[0]
    assert widened.status == "imported", widened.line()
    [outside] = import_azureml([tmp_path / "outside" / "env.yml"], ImportOptions(root=tree))[0]
    assert outside.status == "error" and "not inside the imported tree" in outside.line()
