"""The Job builders (buildah and Kaniko): the build pod (a verified context, least privilege, the
push credential only in the push container), and the shared decisions on a finished Job (digest,
log tail, running), as tables."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from envkiln.adapters.builders.buildah import buildah_job
from envkiln.adapters.builders.jobs import (
    context_configmap,
    first_failure,
    job_finished,
    job_is_running,
    rendered_files,
    repository_of,
    termination,
)
from envkiln.adapters.builders.kaniko import kaniko_job
from envkiln.core.definition import context_digest
from envkiln.core.models import EnvironmentBuildSpec
from envkiln.core.render import RenderSettings, render
from envkiln.core.settings import OperatorSettings
from fakes import FakeKube
from helpers import PIP_ENV, build_for, spec_of

SETTINGS = OperatorSettings(registry="reg.local:5000", insecure_registry=True, builder="buildah",
                            buildah_image="reg.local:5000/builder:1", buildah_push_image="reg.local:5000/push:1")




def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


BUILDERS = {"buildah": buildah_job, "kaniko": kaniko_job}
ROOT_BUILD = {  # the build container of each builder: root, but least privilege where the builder allows
    "buildah": {"runAsUser": 0, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "envkiln/buildah.json"}},
    "kaniko": {"privileged": False, "allowPrivilegeEscalation": False, "seccompProfile": {"type": "RuntimeDefault"}},
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("credentials", [None, "envkiln-x-1-push"])
def test_user_steps_never_share_a_container_with_the_push_credential(builder: str, credentials: str | None) -> None:
    build = build_for(PIP_ENV["spec"])
    job = BUILDERS[builder](build, 1, SETTINGS, credentials)
    pod = pod_of(job)
    context, build_container = pod["initContainers"]
    [push] = pod["containers"]
    assert [context["name"], build_container["name"], push["name"]] == ["context", "build", "push"]
    assert build_container["securityContext"] == ROOT_BUILD[builder]
    for non_root in (context, push):
        assert non_root["securityContext"]["runAsNonRoot"] is True and non_root["securityContext"]["runAsUser"] != 0
        assert non_root["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert non_root["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert non_root["securityContext"]["readOnlyRootFilesystem"] is True
    # The user's RUN steps execute in the build container: it mounts no credential, ever.
    assert "docker-config" not in {m["name"] for m in build_container["volumeMounts"] + context["volumeMounts"]}
    assert {m["name"]: m.get("readOnly", False) for m in build_container["volumeMounts"]}["workspace"] is True
    push_mounts = {m["name"]: m for m in push["volumeMounts"]}
    assert push_mounts["out"]["readOnly"] is True
    assert ("docker-config" in push_mounts) is bool(credentials)
    if credentials:
        secret = next(v for v in pod["volumes"] if v["name"] == "docker-config")["secret"]
        assert secret["secretName"] == credentials
    assert pod["automountServiceAccountToken"] is False
    assert push["image"] == context["image"] == "reg.local:5000/push:1"
    assert build_container["resources"]["limits"]["ephemeral-storage"] == SETTINGS.build_ephemeral_storage_limit
    archive = "oci-archive:/out/image.tar" if builder == "buildah" else "docker-archive:/out/image.tar"
    assert env_of(push)["ENVKILN_ARCHIVE"] == archive
    assert job == BUILDERS[builder](build, 1, SETTINGS, credentials), "pure: same inputs, same Job"


def test_kaniko_builds_without_pushing_and_without_a_shared_cache() -> None:
    build = build_for(PIP_ENV["spec"])
    value = build["spec"]["hash"]
    args = pod_of(kaniko_job(build, 1, SETTINGS, None))["initContainers"][1]["args"]
    assert "--no-push" in args and "--tar-path=/out/image.tar" in args and "--cache=false" in args
    assert not [a for a in args if a.startswith(("--cache-repo", "--digest-file"))]
    assert f"--destination=reg.local:5000/envkiln/default/env_{value}:{value}" in args
    assert "--context=dir:///workspace" in args and "--dockerfile=/workspace/Dockerfile" in args
    assert "--insecure-registry=reg.local:5000" in args and "--insecure" not in args


def test_buildah_values_reach_the_scripts_only_as_environment() -> None:
    build = build_for(PIP_ENV["spec"])
    pod = pod_of(buildah_job(build, 1, SETTINGS, None))
    context, builder = pod["initContainers"]
    push = pod["containers"][0]
    value = build["spec"]["hash"]
    assert env_of(builder)["ENVKILN_IMAGE"] == f"reg.local:5000/envkiln/default/env_{value}:{value}"
    assert env_of(builder)["ENVKILN_DOCKERFILE"] == "/workspace/Dockerfile"
    assert env_of(builder)["ENVKILN_INSECURE_REGISTRY"] == "reg.local:5000"
    assert env_of(push)["ENVKILN_LATEST"] == f"reg.local:5000/envkiln/default/env_{value}:latest"
    assert env_of(context)["ENVKILN_CONTEXT_DIGEST"] == context_digest(rendered_files(
        EnvironmentBuildSpec.model_validate(build["spec"])))
    for container in (context, builder, push):
        assert value not in container["command"][2], "no spec value inside the script text"
    secure = pod_of(buildah_job(build, 1, SETTINGS.model_copy(update={"insecure_registry": False}), None))
    assert env_of(secure["initContainers"][1])["ENVKILN_INSECURE_REGISTRY"] == ""


TARBALL_SHA = "ab" * 32


@pytest.mark.parametrize(("spec", "context", "expected_context", "expected_dockerfile", "source", "digest"), [
    (PIP_ENV["spec"], None, "/workspace", "/workspace/Dockerfile", "rendered", "rendered"),
    ({"build": {"configMap": {"name": "user-ctx"}, "dockerfilePath": "gpu/Dockerfile"}}, {"Dockerfile": "FROM x"},
     "/workspace", "/workspace/gpu/Dockerfile", "snapshot", "plan"),
    ({"build": {"git": {"url": "https://example.org/o/r.git", "ref": "v1.2", "path": "img"}}}, None,
     "https://example.org/o/r.git#v1.2:img", "Dockerfile", None, None),
    ({"build": {"tarball": {"url": "https://example.org/ctx.tar.gz"}}}, None,
     "https://example.org/ctx.tar.gz", "Dockerfile", None, None),
    ({"build": {"tarball": {"url": "https://example.org/ctx.tar.gz", "sha256": TARBALL_SHA}}}, None,
     "/workspace", "/workspace/Dockerfile", "download", TARBALL_SHA),
])
def test_context_sources(spec: dict[str, Any], context: dict[str, str] | None, expected_context: str,
                         expected_dockerfile: str, source: str | None, digest: str | None) -> None:
    build = build_for(spec, context)
    value = build["spec"]["hash"]
    if digest == "plan":
        build["spec"]["plan"]["contextDigest"] = digest = context_digest(context or {})
    elif digest == "rendered":
        digest = context_digest(rendered_files(EnvironmentBuildSpec.model_validate(build["spec"])))
    pod = pod_of(buildah_job(build, 1, SETTINGS, None))
    names = [c["name"] for c in pod["initContainers"]]
    assert names == (["context", "build"] if digest else ["build"])
    env = env_of(pod["initContainers"][-1])
    assert (env["ENVKILN_CONTEXT"], env["ENVKILN_DOCKERFILE"]) == (expected_context, expected_dockerfile)
    configmaps = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    expected = {"rendered": [f"envkiln-{value}-context"], "snapshot": [f"envkiln-{value}-snapshot"]}
    assert configmaps == expected.get(source or "", [])
    if digest:
        assert env_of(pod["initContainers"][0])["ENVKILN_CONTEXT_DIGEST"] == digest
        assert ("ENVKILN_TARBALL_URL" in env_of(pod["initContainers"][0])) is (source == "download")
    kaniko = pod_of(kaniko_job(build, 1, SETTINGS, None))
    assert [c["name"] for c in kaniko["initContainers"]] == names


def test_context_configmap_is_immutable_and_holds_the_plan() -> None:
    build = build_for(PIP_ENV["spec"])
    configmap = context_configmap(build)
    assert configmap is not None and configmap["immutable"] is True
    assert set(configmap["data"]) == {"Dockerfile", "requirements.txt", "envkiln_lock.py", "envkiln_venv.py"}
    assert context_configmap(build_for({"build": {"git": {"url": "https://e.org/o/r.git", "ref": "v1"}}})) is None


@pytest.mark.parametrize("make", [buildah_job, kaniko_job])
def test_job_builders_share_the_job(make: Any) -> None:
    build = build_for(PIP_ENV["spec"])
    job = make(build, 3, SETTINGS, None)
    value = build["spec"]["hash"]
    assert job["metadata"]["name"] == f"envkiln-{value}-3"
    assert job["metadata"]["labels"]["envkiln.dev/attempt"] == "3"
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild", "name": f"envb-{value}", "uid": "uid-1",
        "controller": True, "blockOwnerDeletion": True}
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == SETTINGS.build_deadline_seconds
    assert job["spec"]["ttlSecondsAfterFinished"] == SETTINGS.build_ttl_seconds
    assert pod_of(job)["restartPolicy"] == "Never" and pod_of(job)["enableServiceLinks"] is False


def _job(*conditions: tuple[str, str], succeeded: int = 0, failed: int = 0) -> client.V1Job:
    return client.V1Job(status=client.V1JobStatus(
        succeeded=succeeded or None, failed=failed or None,
        conditions=[client.V1JobCondition(type=t, status="True", reason=r, message=f"{r} message")
                    for t, r in conditions] or None))


@pytest.mark.parametrize(("job", "finished", "running"), [
    (client.V1Job(), None, True),
    (_job(), None, True),
    (_job(("Complete", "Done"), succeeded=1), (True, "Complete", ""), False),
    (_job(("SuccessCriteriaMet", "Done")), (True, "Complete", ""), True),
    (_job(("Failed", "DeadlineExceeded"), failed=1), (False, "DeadlineExceeded", "DeadlineExceeded message"), False),
    (_job(("FailureTarget", "BackoffLimitExceeded")), (False, "BackoffLimitExceeded", "BackoffLimitExceeded message"),
     True),
])
def test_job_outcome(job: client.V1Job, finished: tuple[bool, str, str] | None, running: bool) -> None:
    assert job_finished(job) == finished
    assert job_is_running(job) is running


def _terminated(name: str, code: int, message: str | None, reason: str = "Error") -> client.V1ContainerStatus:
    return client.V1ContainerStatus(name=name, image="i", image_id="", ready=False, restart_count=0,
                                    state=client.V1ContainerState(terminated=client.V1ContainerStateTerminated(
                                        exit_code=code, message=message, reason=reason)))


def _pod(init: list[client.V1ContainerStatus], main: list[client.V1ContainerStatus]) -> client.V1Pod:
    return client.V1Pod(status=client.V1PodStatus(init_container_statuses=init or None,
                                                  container_statuses=main or None))


DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(("pods", "container", "digest_message", "failure"), [
    ([], "push", None, (None, None, None)),
    ([_pod([_terminated("build", 0, "built")], [_terminated("push", 0, DIGEST, "Completed")])], "push", DIGEST,
     (None, None, None)),
    ([_pod([_terminated("build", 1, "ERROR: no matching distribution")], [])], "push", None,
     ("build", "ERROR: no matching distribution", "Error")),
    ([_pod([_terminated("build", 0, "built")], [_terminated("push", 1, "unauthorized")])], "push", "unauthorized",
     ("push", "unauthorized", "Error")),
    ([_pod([], [_terminated("kaniko", 0, DIGEST, "Completed")])], "kaniko", DIGEST, (None, None, None)),
    # The newest pod wins: an earlier pod's failure is not this attempt's story.
    ([_pod([], [_terminated("kaniko", 1, "old")]), _pod([], [_terminated("kaniko", 137, "OOMKilled", "OOMKilled")])],
     "kaniko", "OOMKilled", ("kaniko", "OOMKilled", "OOMKilled")),
])
def test_digest_and_failure_from_pods(pods: list[client.V1Pod], container: str, digest_message: str | None,
                                      failure: tuple[str | None, str | None, str | None]) -> None:
    assert termination(pods, container)[0] == digest_message
    assert first_failure(pods) == failure


@pytest.mark.parametrize(("image", "repository"), [
    ("reg:5000/envkiln/env_x:abc", "reg:5000/envkiln/env_x"),
    ("reg:5000/envkiln/env_x", "reg:5000/envkiln/env_x"),
    ("ghcr.io/a/b:1", "ghcr.io/a/b"),
])
def test_repository_of(image: str, repository: str) -> None:
    assert repository_of(image) == repository


# --- the `context` container's script, run here with GNU tar (as in the builder images) -------------------

def _tree_tar(members: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.uname = len(content), (modes or {}).get(name, 0o644), 4242, "someone"
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def run_context_script(tmp_path: Path, files: dict[str, str | bytes], digest: str | None = None
                       ) -> tuple[int, str, Path]:
    """The pod's `context` container script over a ConfigMap volume laid out like the kubelet's (keys are
    symlinks into ..data), with its paths moved under tmp_path; (exit code, stderr, the workspace)."""
    build = build_for({"build": {"configMap": {"name": "user-ctx"}}}, {"Dockerfile": "FROM x"})
    build["spec"]["plan"]["contextDigest"] = digest or context_digest(files)
    pod = pod_of(buildah_job(build, 1, SETTINGS, None))
    container = pod["initContainers"][0]
    source, workspace = tmp_path / "context-source", tmp_path / "workspace"
    (source / "..2026_11_25").mkdir(parents=True)
    workspace.mkdir()
    (source / "..data").symlink_to("..2026_11_25")
    for key, value in files.items():
        target = source / "..2026_11_25" / key
        target.write_bytes(value.encode() if isinstance(value, str) else value)
        (source / key).symlink_to(f"..data/{key}")
    script = container["command"][2].replace("/context-source", str(source)).replace("/workspace", str(workspace))
    done = subprocess.run(["/bin/sh", "-c", "umask 022; " + script], env={**env_of(container), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr, workspace


def test_context_script_unpacks_a_nested_tree_under_the_digest(tmp_path: Path) -> None:
    tree = _tree_tar({"src/pkg/__init__.py": b"VALUE = 1\n", "src/tool.sh": b"echo hi\n",
                      "docker/Dockerfile": b"FROM y\n"}, modes={"src/tool.sh": 0o4777})
    code, stderr, workspace = run_context_script(tmp_path, {"Dockerfile": "FROM x\n", ".envkiln-context.tar": tree})
    assert code == 0, stderr
    found = sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*") if p.is_file())
    assert found == ["Dockerfile", "docker/Dockerfile", "src/pkg/__init__.py", "src/tool.sh"], "the archive is not kept"
    assert (workspace / "src/pkg/__init__.py").read_text() == "VALUE = 1\n"
    mode = (workspace / "src/tool.sh").stat().st_mode & 0o7777
    assert mode & 0o022 == 0, f"the archive's modes are not applied as written: {oct(mode)}"


def test_context_script_checks_the_digest_before_unpacking(tmp_path: Path) -> None:
    hashed: dict[str, str | bytes] = {"Dockerfile": "FROM x\n", ".envkiln-context.tar": _tree_tar({"a/b": b"1"})}
    planted = {**hashed, ".envkiln-context.tar": _tree_tar({"a/b": b"2"})}
    code, stderr, workspace = run_context_script(tmp_path, planted, digest=context_digest(hashed))
    assert code == 1 and "not what was hashed" in stderr
    assert list(workspace.iterdir()) == []


@pytest.mark.parametrize("member", ["/etc/evil", "../evil", "a/../../evil", "a/.."])
def test_context_script_refuses_absolute_and_dotdot_members(tmp_path: Path, member: str) -> None:
    files: dict[str, str | bytes] = {"Dockerfile": "FROM x\n",
                                     ".envkiln-context.tar": _tree_tar({"ok": b"1", member: b"x"})}
    code, stderr, workspace = run_context_script(tmp_path, files)
    assert code == 1 and "absolute path or '..'" in stderr, stderr
    assert not (workspace / "ok").exists() and not (tmp_path / "evil").exists()


def test_context_script_copies_flat_contexts_as_before(tmp_path: Path) -> None:
    code, stderr, workspace = run_context_script(tmp_path, {"Dockerfile": "FROM x\n", "requirements.txt": "six\n"})
    assert code == 0, stderr
    assert sorted(p.name for p in workspace.iterdir()) == ["Dockerfile", "requirements.txt"]


def test_local_builder_unpacks_a_nested_tree_like_the_pod(tmp_path: Path) -> None:
    import base64

    from envkiln.adapters.builders.local import ContextError, materialise_context

    def user_context(archive: bytes) -> dict[str, Any]:
        return {"metadata": {"name": "user-ctx"}, "data": {"requirements.txt": "six\n"},
                "binaryData": {".envkiln-context.tar": base64.b64encode(archive).decode()}}

    tree = _tree_tar({"src/pkg/__init__.py": b"VALUE = 1\n", "docker/Dockerfile": b"FROM y\n"})
    kube = FakeKube()
    kube.put("ConfigMap", "ns", user_context(tree))
    build = build_for({"build": {"configMap": {"name": "user-ctx"}, "dockerfilePath": "docker/Dockerfile"}},
                      {"requirements.txt": "six\n", ".envkiln-context.tar": tree})
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    assert materialise_context(spec, "ns", kube, tmp_path) == "docker/Dockerfile"
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert found == ["docker/Dockerfile", "requirements.txt", "src/pkg/__init__.py"]
    kube.put("ConfigMap", "ns", user_context(_tree_tar({"../evil": b"x"})))
    (tmp_path / "again").mkdir()
    with pytest.raises(ContextError, match=r"absolute path or '\.\.'"):
        materialise_context(spec, "ns", kube, tmp_path / "again")


def one_stage_build() -> dict[str, Any]:
    """An EnvironmentBuild whose plan is the one-stage render (buildah, the base's user known)."""
    build = build_for(PIP_ENV["spec"])
    plan = render(spec_of(PIP_ENV), build["spec"]["hash"], RenderSettings(tool_mounts=True), base_user="")
    build["spec"]["plan"] = EnvironmentBuildSpec.model_validate({**build["spec"], "plan": plan}).to_kube()["plan"]
    return build


@pytest.mark.parametrize(("builder", "one_stage", "lock_env"), [
    ("buildah", True, True),
    ("buildah", False, False),  # the multi-stage render: the lock is the image's last layer
    ("kaniko", False, False),
], ids=["buildah-one-stage", "buildah-multi-stage", "kaniko"])
def test_the_lock_image_is_made_and_pushed_only_for_a_one_stage_plan(builder: str, one_stage: bool,
                                                                      lock_env: bool) -> None:
    build = one_stage_build() if one_stage else build_for(PIP_ENV["spec"])
    pod = pod_of(BUILDERS[builder](build, 1, SETTINGS, None))
    build_container, push = pod["initContainers"][-1], pod["containers"][0]
    assert ("ENVKILN_LOCK_DIR" in env_of(build_container)) is lock_env
    if lock_env:
        assert env_of(build_container)["ENVKILN_LOCK_DIR"] == "/out/lock"
        assert env_of(build_container)["ENVKILN_LOCK_ARCHIVE"] == "/out/lock.tar"
        assert env_of(push)["ENVKILN_LOCK_ARCHIVE"] == "oci-archive:/out/lock.tar"
        assert env_of(push)["ENVKILN_REPOSITORY"] == repository_of(build["spec"]["image"])
    else:
        assert "ENVKILN_LOCK_ARCHIVE" not in env_of(push) and "ENVKILN_LOCK_ARCHIVE" not in env_of(build_container)


FAKE_SKOPEO = """#!/bin/sh
# records its arguments; writes a digest where --digestfile says
echo "skopeo $*" >> "$CALLS"
while [ $# -gt 0 ]; do
  if [ "$1" = --digestfile ]; then printf '%s' "$DIGEST" > "$2"; fi
  shift
done
"""


@pytest.mark.parametrize("with_lock", [True, False], ids=["lock-image", "no-lock-image"])
def test_push_script_pushes_the_lock_image_by_the_digest_before_reporting_it(tmp_path: Path, with_lock: bool) -> None:
    build = one_stage_build() if with_lock else build_for(PIP_ENV["spec"])
    push = pod_of(buildah_job(build, 1, SETTINGS, None))["containers"][0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "skopeo").write_text(FAKE_SKOPEO)
    (bin_dir / "skopeo").chmod(0o755)
    calls, termination_log, tmp = tmp_path / "calls", tmp_path / "termination-log", tmp_path / "var-tmp"
    tmp.mkdir()
    script = push["command"][2].replace("/dev/termination-log", str(termination_log)).replace("/var/tmp", str(tmp))
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60, env={
        **env_of(push), "PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "DIGEST": DIGEST})
    assert done.returncode == 0, done.stderr
    image, repository = build["spec"]["image"], repository_of(build["spec"]["image"])
    lines = calls.read_text().splitlines()
    expected = [f"copy --quiet --retry-times 3 --dest-tls-verify=false --digestfile {tmp}/envkiln-digest "
                f"oci-archive:/out/image.tar docker://{image}"]
    if with_lock:
        expected.append(f"copy --quiet --retry-times 3 --dest-tls-verify=false oci-archive:/out/lock.tar "
                        f"docker://{repository}:sha256-{'a' * 64}.lock")
    expected.append(f"copy --quiet --retry-times 3 --dest-tls-verify=false oci-archive:/out/image.tar "
                    f"docker://{repository}:latest")
    assert [line.removeprefix("skopeo ") for line in lines] == expected
    assert termination_log.read_text() == DIGEST


FAKE_BUILDAH = """#!/bin/sh
echo "buildah $*" >> "$CALLS"
"""


def run_build_script(tmp_path: Path, builder: dict[str, Any], fake_buildah: str, **env: str
                     ) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    """The build container's script with a stand-in buildah that records its calls, /var/tmp and
    /etc/containers moved under tmp_path: (the process, the buildah calls, where /var/tmp went)."""
    bin_dir, tmp = tmp_path / "bin", tmp_path / "var-tmp"
    for directory in (bin_dir, tmp):
        directory.mkdir()
    (bin_dir / "buildah").write_text(fake_buildah)
    (bin_dir / "buildah").chmod(0o755)
    calls = tmp_path / "calls"
    script = builder["command"][2].replace("/var/tmp", str(tmp)).replace("/etc/containers", str(tmp_path / "etc"))
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60, env={
        **env_of(builder), "PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), **env})
    return done, calls.read_text().splitlines() if calls.exists() else [], tmp


@pytest.mark.parametrize("lock_written", [True, False], ids=["lock-written", "no-lock-written"])
def test_build_script_mounts_the_lock_directory_and_makes_the_lock_image(tmp_path: Path, lock_written: bool) -> None:
    build = one_stage_build()
    builder = pod_of(buildah_job(build, 1, SETTINGS, None))["initContainers"][-1]
    lock_dir = tmp_path / "out-lock"
    if lock_written:  # what the render's lock step writes through the mount
        lock_dir.mkdir()
        (lock_dir / "envkiln-lock.txt").write_text("# envkiln lock v1\n[pip]\nsix==1.16.0\n")
    done, calls, tmp = run_build_script(tmp_path, builder, FAKE_BUILDAH, ENVKILN_LOCK_DIR=str(lock_dir))
    lines = [line.removeprefix("buildah --storage-driver vfs ") for line in calls]
    assert f"--volume {lock_dir}:/envkiln-lock" in lines[0], "RUN steps write the lock into the mounted directory"
    # committed straight into the archive, compressed: no copy into storage and out again
    assert lines[0].startswith("build --isolation chroot --layers=false --disable-compression=false ")
    assert " -t oci-archive:/out/image.tar " in lines[0]
    if not lock_written:
        assert done.returncode == 1
        assert "the build wrote no lock to /envkiln-lock/envkiln-lock.txt; nothing is pushed" in done.stderr
        assert len(lines) == 1
        return
    assert done.returncode == 0, done.stderr
    assert lines[1:] == [
        f"build --isolation chroot --layers=false --disable-compression=false --quiet "
        f"-f {tmp}/envkiln-lock.Dockerfile -t oci-archive:/out/lock.tar {lock_dir}"]
    assert (tmp / "envkiln-lock.Dockerfile").read_text() == (
        "FROM scratch\nCOPY envkiln-lock.txt /opt/envkiln/envkiln-lock.txt\n")
    assert "lock image made (3 lines)" in done.stdout


FAKE_BUILDAH_INFO = """#!/bin/sh
echo "buildah $*" >> "$CALLS"
case "$*" in
  *"overlay info"*) if [ -n "${NO_OVERLAY:-}" ]; then echo "kernel does not support overlay fs" >&2; exit 125; fi ;;
esac
"""


@pytest.mark.parametrize(("driver", "overlay_works", "used"), [
    ("vfs", True, "vfs"),  # not even probed
    ("overlay", True, "overlay"),
    ("overlay", False, "vfs"),  # said in the build's log
], ids=["vfs", "overlay", "overlay-unavailable-falls-back-to-vfs"])
def test_the_storage_driver_reaches_every_buildah_call_with_the_same_privileges(
        tmp_path: Path, driver: str, overlay_works: bool, used: str) -> None:
    settings = SETTINGS.model_copy(update={"buildah_storage_driver": driver})
    builder = pod_of(buildah_job(build_for(PIP_ENV["spec"]), 1, settings, None))["initContainers"][-1]
    assert env_of(builder)["STORAGE_DRIVER"] == driver
    # overlay needs nothing more: buildah without CAP_SYS_ADMIN mounts it in a user namespace
    assert builder["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]}
    done, lines, _ = run_build_script(tmp_path, builder, FAKE_BUILDAH_INFO,
                                      **({} if overlay_works else {"NO_OVERLAY": "1"}))
    assert done.returncode == 0, done.stderr
    probes = ["buildah --storage-driver overlay info"] if driver == "overlay" else []
    assert lines[:len(probes)] == probes
    work = lines[len(probes):]
    assert [line.split()[:4] for line in work] == [["buildah", "--storage-driver", used, "build"]]  # into the archive
    assert ("the overlay storage driver cannot be used here; building with vfs" in done.stderr) is (used != driver)
    if used != driver:
        assert "kernel does not support overlay fs" in done.stderr


FAKE_BUILDAH_PULL = """#!/bin/sh
echo "buildah $*" >> "$CALLS"
case "$*" in
  *" pull "*) if [ -n "${PULL_FAILS:-}" ]; then echo "manifest unknown" >&2; exit 125; fi ;;
esac
"""


@pytest.mark.parametrize("pulled", [True, False], ids=["parent-pulled", "parent-missing-falls-back"])
def test_build_script_builds_on_the_earlier_image_when_it_can_pull_it(tmp_path: Path, pulled: bool) -> None:
    build = one_stage_build()
    parent = "reg.local:5000/envkiln/ns/env_x@sha256:" + "e" * 64
    build["spec"]["plan"]["parent"] = {"build": "envb-x", "image": parent, "dockerfile": "FROM " + parent + "\n"}
    pod = pod_of(buildah_job(build, 1, SETTINGS, None))
    builder = pod["initContainers"][-1]
    assert env_of(builder)["ENVKILN_PARENT"] == parent
    assert env_of(builder)["ENVKILN_PARENT_DOCKERFILE"] == "/workspace/Dockerfile.on-earlier-image"
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    assert rendered_files(spec)["Dockerfile.on-earlier-image"] == "FROM " + parent + "\n"
    assert env_of(pod["initContainers"][0])["ENVKILN_CONTEXT_DIGEST"] == context_digest(rendered_files(spec))
    lock_dir = tmp_path / "out-lock"
    lock_dir.mkdir()
    (lock_dir / "envkiln-lock.txt").write_text("# envkiln lock v1\n[pip]\nsix==1.16.0\n")
    done, calls, _ = run_build_script(tmp_path, builder, FAKE_BUILDAH_PULL, ENVKILN_LOCK_DIR=str(lock_dir),
                                      **({} if pulled else {"PULL_FAILS": "1"}))
    assert done.returncode == 0, done.stderr
    lines = [line.removeprefix("buildah --storage-driver vfs ") for line in calls]
    assert lines[0] == f"pull --quiet {parent}"
    dockerfile = "/workspace/Dockerfile.on-earlier-image" if pulled else "/workspace/Dockerfile"
    assert f" -f {dockerfile} " in lines[1]
    assert ("starting from the earlier image" in done.stdout) is pulled
    assert ("cannot be pulled; building from the base" in done.stderr) is not pulled
    if not pulled:
        assert "manifest unknown" in done.stderr


def test_a_build_without_a_parent_pulls_nothing_first(tmp_path: Path) -> None:
    builder = pod_of(buildah_job(one_stage_build(), 1, SETTINGS, None))["initContainers"][-1]
    assert "ENVKILN_PARENT" not in env_of(builder)
    _, calls, _ = run_build_script(tmp_path, builder, FAKE_BUILDAH_PULL)
    assert " pull " not in calls[0] and " -f /workspace/Dockerfile " in calls[0]
