"""envkiln.cli.follow: what `envkiln wait` and `envkiln logs` decide from the objects they read.

The decisions are tables; the loops run against a fake cluster (objects and logs in memory, a
fake clock). tests/integration/node/test_cli_follow.py runs both commands against real build pods.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from envkiln.cli.follow import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_NOT_READY,
    EXIT_OK,
    Cluster,
    after_attempt,
    attempt_source,
    container_action,
    container_names,
    latest_attempt,
    log_target,
    logs,
    parse_duration,
    tail_attempt,
    wait,
    wait_verdict,
)
from envkiln.cli.main import main
from fakes import FakeKube

T = TypeVar("T")

HASH = "0123456789abcdef0123456789abcdef"
BUILD = f"envb-{HASH}"
REF = f"reg:5000/envkiln/ns/env_{HASH}@sha256:" + "a" * 64
OLD_REF = "reg:5000/envkiln/ns/env_old@sha256:" + "b" * 64


def env(phase: str | None = None, generation: int = 1, observed: int | None = 1, version: str = "2",
        **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"phase": phase, "observedGeneration": observed, **status} if phase else {}
    history = [{"version": "1", "hash": "f" * 32, "imageRef": OLD_REF, "when": "t"},
               {"version": "0", "hash": "e" * 32, "when": "t"}]  # version 0 never became Ready
    body.setdefault("versions", history) if body else None
    return {"metadata": {"name": "torch", "generation": generation}, "spec": {"version": version, "image": "py"},
            **({"status": body} if body else {})}


# --- parse_duration -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1.5m", 90), ("0", 0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "1h 30m", "-5s", "5s5", "ten"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# --- wait_verdict -----------------------------------------------------------------------------------

# (id, environment, version, done, exit code, image reference printed, words in the message)
WAIT_CASES: list[tuple[str, dict[str, Any] | None, str | None, bool, int, str, str]] = [
    ("not-found", None, None, True, EXIT_NOT_FOUND, "", "not found in namespace ns"),
    ("no-status-yet", env(), None, False, EXIT_OK, "", "observe generation 1"),
    ("ready", env("Ready", imageRef=REF), None, True, EXIT_OK, REF, "is Ready"),
    ("ready-current-version-named", env("Ready", imageRef=REF), "2", True, EXIT_OK, REF, "is Ready"),
    # Status from before the last apply is never taken for its result.
    ("ready-but-generation-not-observed", env("Ready", generation=2, observed=1, imageRef=REF), None, False,
     EXIT_OK, "", "observe generation 2"),
    ("failed", env("Failed", message="EnvironmentBuild envb-x failed: attempt 3 failed"), None, True, EXIT_FAILED,
     "", "failed: EnvironmentBuild envb-x failed: attempt 3 failed"),
    ("failed-but-generation-not-observed", env("Failed", generation=3, observed=2, message="old"), None, False,
     EXIT_OK, "", "observe generation 3"),
    ("building", env("Building", message="building reg/x:h (EnvironmentBuild envb-x)"), None, False, EXIT_OK, "",
     "Building: building reg/x:h"),
    ("pending", env("Pending", message="registry r unavailable"), None, False, EXIT_OK, "", "Pending: registry"),
    ("ready-without-image-ref-waits", env("Ready"), None, False, EXIT_OK, "", "Ready"),
    ("older-version-from-history", env("Building"), "1", True, EXIT_OK, OLD_REF, "torch:1 is Ready"),
    ("older-version-never-built", env("Building"), "0", True, EXIT_FAILED, "", "version 0 was never built"),
    ("unknown-version", env("Ready", imageRef=REF), "7", True, EXIT_NOT_FOUND, "", "has no version '7'"),
]


@pytest.mark.parametrize(("case", "environment", "version", "done", "code", "ref", "words"), WAIT_CASES,
                         ids=[c[0] for c in WAIT_CASES])
def test_wait_verdict(case: str, environment: dict[str, Any] | None, version: str | None, done: bool, code: int,
                      ref: str, words: str) -> None:
    verdict = wait_verdict(environment, version, "torch", "ns")
    assert (verdict.done, verdict.exit_code, verdict.image_ref) == (done, code, ref)
    assert words in verdict.message


# --- which build, which attempt, which source --------------------------------------------------------

# (id, environment, version, follow, build, retry, words in the problem)
TARGET_CASES: list[tuple[str, dict[str, Any] | None, str | None, bool, str | None, bool, str]] = [
    ("not-found", None, None, False, None, False, "not found"),
    ("current-build", env("Building", hash=HASH, build=BUILD), None, False, BUILD, False, ""),
    ("name-from-hash", env("Ready", hash=HASH), None, False, BUILD, False, ""),
    ("older-version", env("Ready", hash=HASH), "1", False, "envb-" + "f" * 32, False, ""),
    ("unknown-version", env("Ready", hash=HASH), "9", False, None, False, "known versions: 0, 1, 2"),
    ("no-build-yet", env("Pending", message="registry down"), None, True, None, True, "no build yet"),
    ("invalid-definition", env("Failed", message="spec.pip[0]: bad"), None, False, None, False, "spec.pip[0]: bad"),
    # Following right after an apply: the status is for the old spec; wait for the new build.
    ("follow-waits-for-the-latest-spec", env("Ready", generation=2, observed=1, hash=HASH), None, True, None, True,
     "observe the latest spec"),
    ("no-follow-shows-what-the-status-says", env("Ready", generation=2, observed=1, hash=HASH), None, False, BUILD,
     False, ""),
]


@pytest.mark.parametrize(("case", "environment", "version", "follow", "build", "retry", "words"), TARGET_CASES,
                         ids=[c[0] for c in TARGET_CASES])
def test_log_target(case: str, environment: dict[str, Any] | None, version: str | None, follow: bool,
                    build: str | None, retry: bool, words: str) -> None:
    target = log_target(environment, version, "torch", "ns", follow)
    assert (target.build, target.retry) == (build, retry)
    assert words in target.problem


def test_bring_your_own_images_have_no_build() -> None:
    byo = {"metadata": {"name": "t", "generation": 1}, "spec": {"image": "ghcr.io/o/t:1", "userManaged": True},
           "status": {"phase": "Ready", "observedGeneration": 1}}
    assert "nothing is built" in log_target(byo, None, "t", "ns").problem


# (id, build status, latest started attempt, the attempt status.logTail is from)
ATTEMPT_CASES: list[tuple[str, dict[str, Any], int, int | None]] = [
    ("queued", {"phase": "Pending"}, 0, None),
    ("first-running", {"phase": "Building", "attempts": 1, "job": "j1"}, 1, None),
    ("first-starting", {"phase": "Building", "attempts": 1}, 1, None),  # its Job is being created
    ("retry-in-backoff", {"phase": "Building", "attempts": 2, "retryAfter": "t", "logTail": "x"}, 1, 1),
    ("retry-running", {"phase": "Building", "attempts": 2, "job": "j2", "logTail": "x"}, 2, 1),
    ("succeeded-after-a-retry", {"phase": "Succeeded", "attempts": 2, "logTail": "x"}, 2, 1),
    ("succeeded", {"phase": "Succeeded", "attempts": 1}, 1, None),
    ("failed", {"phase": "Failed", "attempts": 3, "logTail": "x"}, 3, 3),
    ("refused", {"phase": "Failed", "message": "not built: unsigned"}, 0, None),
]


@pytest.mark.parametrize(("case", "status", "latest", "tail"), ATTEMPT_CASES, ids=[c[0] for c in ATTEMPT_CASES])
def test_attempts(case: str, status: dict[str, Any], latest: int, tail: int | None) -> None:
    assert latest_attempt(status) == latest
    assert tail_attempt(status) == tail


def build(phase: str, builder: str = "buildah", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": BUILD}, "spec": {"hash": HASH, "builder": builder},
            "status": {"phase": phase, **status}}


# (id, build, attempt, has pod, source, words)
SOURCE_CASES: list[tuple[str, dict[str, Any], int, bool, str, str]] = [
    ("pod", build("Building", attempts=1, job="j"), 1, True, "pod", ""),
    ("past-pod", build("Failed", attempts=2, logTail="x"), 1, True, "pod", ""),
    ("pod-not-created-yet", build("Building", attempts=1), 1, False, "wait", "no build pod yet"),
    ("pod-gone-tail-kept", build("Failed", attempts=2, logTail="x"), 2, False, "tail", "the operator kept"),
    ("earlier-tail-kept", build("Building", attempts=2, job="j", logTail="x"), 1, False, "tail", ""),
    ("pod-gone-nothing-kept", build("Succeeded", attempts=1), 1, False, "none", "no log was kept"),
    ("pod-gone-other-tail", build("Failed", attempts=3, logTail="x"), 1, False, "none", "holds attempt 3's"),
    ("local-builder", build("Succeeded", builder="local", attempts=1), 1, False, "none", "no build pod"),
    ("local-builder-tail", build("Failed", builder="local", attempts=1, logTail="x"), 1, False, "tail", ""),
]


@pytest.mark.parametrize(("case", "obj", "attempt", "has_pod", "source", "words"), SOURCE_CASES,
                         ids=[c[0] for c in SOURCE_CASES])
def test_attempt_source(case: str, obj: dict[str, Any], attempt: int, has_pod: bool, source: str,
                        words: str) -> None:
    found, why = attempt_source(obj, attempt, has_pod)
    assert found == source and words in why


def pod(phase: str, **states: str) -> dict[str, Any]:
    """A build pod: init containers context and build, container push; `states`: name -> state key."""
    def status(name: str) -> dict[str, Any]:
        key = states.get(name)
        return {"name": name, "state": {key: {}} if key else {"waiting": {"reason": "PodInitializing"}}}

    return {"metadata": {"name": "envkiln-x-1-abcde"},
            "spec": {"initContainers": [{"name": "context"}, {"name": "build"}], "containers": [{"name": "push"}]},
            "status": {"phase": phase, "initContainerStatuses": [status("context"), status("build")],
                       "containerStatuses": [status("push")]}}


def test_container_names_in_the_order_they_run() -> None:
    assert container_names(pod("Pending")) == ["context", "build", "push"]
    assert container_names({"spec": {"containers": [{"name": "push"}]}}) == ["push"]


# (id, pod, container, follow, action)
ACTION_CASES: list[tuple[str, dict[str, Any], str, bool, str]] = [
    ("done-container", pod("Pending", context="terminated", build="running"), "context", True, "read"),
    ("running-followed", pod("Pending", context="terminated", build="running"), "build", True, "follow"),
    ("running-read-so-far", pod("Pending", context="terminated", build="running"), "build", False, "read"),
    ("not-started-waits", pod("Pending", context="terminated", build="running"), "push", True, "wait"),
    ("not-started-skipped-without-follow", pod("Pending", context="running"), "push", False, "skip"),
    ("never-ran-in-a-failed-pod", pod("Failed", context="terminated", build="terminated"), "push", True, "skip"),
    ("no-status-at-all", {"status": {"phase": "Pending"}}, "context", True, "wait"),
]


@pytest.mark.parametrize(("case", "obj", "container", "follow", "action"), ACTION_CASES,
                         ids=[c[0] for c in ACTION_CASES])
def test_container_action(case: str, obj: dict[str, Any], container: str, follow: bool, action: str) -> None:
    assert container_action(obj, container, follow) == action


# (id, build, attempt shown, next, exit code)
AFTER_CASES: list[tuple[str, dict[str, Any], int, str, int]] = [
    ("verifying", build("Building", attempts=1, job="j"), 1, "wait", EXIT_OK),
    ("backoff", build("Building", attempts=2, retryAfter="t", logTail="x"), 1, "wait", EXIT_OK),
    ("retry-started", build("Building", attempts=2, job="j2", logTail="x"), 1, "next", EXIT_OK),
    ("succeeded", build("Succeeded", attempts=1), 1, "done", EXIT_OK),
    ("failed", build("Failed", attempts=3, logTail="x"), 3, "done", EXIT_FAILED),
]


@pytest.mark.parametrize(("case", "obj", "attempt", "step", "code"), AFTER_CASES, ids=[c[0] for c in AFTER_CASES])
def test_after_attempt(case: str, obj: dict[str, Any], attempt: int, step: str, code: int) -> None:
    assert after_attempt(obj, attempt) == (step, code)


# --- the loops, on a fake cluster ----------------------------------------------------------------------

class FakeCluster(Cluster):
    """A Cluster whose Environments, builds and pods are in memory; each read may advance a scripted
    timeline (nothing reaches its Kube)."""

    def __init__(self, envs: list[dict[str, Any] | None] | None = None, builds: list[dict[str, Any]] | None = None,
                 pods: dict[str, list[dict[str, Any] | None]] | None = None,
                 logs: dict[tuple[str, str], str] | None = None):
        super().__init__(FakeKube())
        self.envs, self.builds, self.pods, self.logs = envs or [None], builds or [], pods or {}, logs or {}
        self.streams: list[tuple[str, bool]] = []

    @staticmethod
    def _next(items: list[T]) -> T:
        return items.pop(0) if len(items) > 1 else items[0]

    def environment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._next(self.envs)

    def build(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._next(self.builds) if self.builds and name == BUILD else None

    def job_pod(self, namespace: str, job: str) -> dict[str, Any] | None:
        timeline = self.pods.get(job)
        return self._next(timeline) if timeline else None

    def log(self, namespace: str, pod: str, container: str, follow: bool) -> Iterator[bytes]:
        self.streams.append((container, follow))
        text = self.logs.get((pod, container), "").encode()
        yield from (text[i:i + 3] for i in range(0, len(text), 3))  # split inside characters too


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run_wait(cluster: FakeCluster, timeout: float = 60, version: str | None = None) -> tuple[int, str, str, float]:
    out, err, clock = io.StringIO(), io.StringIO(), Clock()
    code = wait(cluster, "ns", "torch", version, timeout, out, err, clock=clock, sleep=clock.sleep)
    return code, out.getvalue(), err.getvalue(), clock.now


def test_wait_until_ready_prints_only_the_reference() -> None:
    cluster = FakeCluster([env(), env("Building", message="b"), env("Building", message="b"),
                           env("Ready", imageRef=REF)])
    code, out, err, elapsed = run_wait(cluster)
    assert (code, out, elapsed) == (EXIT_OK, REF + "\n", 3.0)
    assert err.splitlines() == ["waiting: waiting for the operator to observe generation 1", "waiting: Building: b"]


def test_wait_fails_with_the_message() -> None:
    code, out, err, _ = run_wait(FakeCluster([env("Building"), env("Failed", message="attempt 3 failed")]))
    assert (code, out) == (EXIT_FAILED, "")
    assert err.splitlines()[-1] == "error: Environment torch failed: attempt 3 failed"


def test_wait_times_out() -> None:
    code, out, err, elapsed = run_wait(FakeCluster([env("Building", message="b")]), timeout=2.5)
    assert (code, out, elapsed) == (EXIT_NOT_READY, "", 2.5)
    assert "timed out after 2.5s: Environment torch is not Ready (Building: b)" in err


def run_logs(cluster: FakeCluster, attempt: int | None = None, follow: bool = False) -> tuple[int, str, str]:
    out, err, clock = io.StringIO(), io.StringIO(), Clock()
    code = logs(cluster, "ns", "torch", None, attempt, follow, out, err, sleep=clock.sleep)
    return code, out.getvalue(), err.getvalue()


JOB1, JOB2 = f"envkiln-{HASH}-1", f"envkiln-{HASH}-2"
POD = "envkiln-x-1-abcde"
BUILDING = env("Building", hash=HASH, build=BUILD)


def test_logs_follow_a_build_from_before_its_pod_to_its_end() -> None:
    cluster = FakeCluster(
        envs=[env(), BUILDING],
        builds=[build("Pending"), build("Building", attempts=1), build("Building", attempts=1, job=JOB1),
                build("Building", attempts=1, job=JOB1), build("Succeeded", attempts=1, message="pushed r")],
        pods={JOB1: [None, pod("Pending", context="running"), pod("Pending", context="running"),
                     pod("Pending", context="terminated", build="running"),
                     pod("Running", context="terminated", build="terminated", push="running"),
                     pod("Succeeded", context="terminated", build="terminated", push="terminated")]},
        logs={(POD, "context"): "context ok\n", (POD, "build"): "STEP 1/3: FROM base: ünïcode 中文\n",
              (POD, "push"): "pushed\n"})
    code, out, err = run_logs(cluster, follow=True)
    assert code == EXIT_OK
    assert out == "context ok\nSTEP 1/3: FROM base: ünïcode 中文\npushed\n"
    assert cluster.streams == [("context", True), ("build", True), ("push", True)]
    headers = [line for line in err.splitlines() if line.startswith("==>")]
    assert headers == [f"==> attempt 1: pod {POD}, container {c} <==" for c in ("context", "build", "push")]
    assert err.splitlines()[-1] == f"EnvironmentBuild {BUILD} Succeeded: pushed r"


def test_logs_follow_retries_and_exit_1_when_the_build_fails() -> None:
    failed_pod = pod("Failed", context="terminated", build="terminated")
    cluster = FakeCluster(
        envs=[BUILDING],
        builds=[build("Building", attempts=1, job=JOB1), build("Building", attempts=2, retryAfter="t", logTail="e1"),
                build("Building", attempts=2, job=JOB2, logTail="e1"),
                build("Failed", attempts=2, logTail="e2", message="attempt 2 failed (Error); no retries left")],
        pods={JOB1: [failed_pod], JOB2: [None]},  # attempt 2's pod is gone already: its tail is shown
        logs={(POD, "context"): "ok\n", (POD, "build"): "ERROR: no such package\n"})
    code, out, err = run_logs(cluster, follow=True)
    assert code == EXIT_FAILED
    assert out == "ok\nERROR: no such package\ne2"
    assert "==> attempt 2: status.logTail <==" in err and "no retries left" in err.splitlines()[-1]
    assert ("push", True) not in cluster.streams, "a container that never ran is skipped"


def test_logs_without_follow_read_what_is_there() -> None:
    cluster = FakeCluster(envs=[BUILDING], builds=[build("Building", attempts=1, job=JOB1)],
                          pods={JOB1: [pod("Pending", context="terminated", build="running")]},
                          logs={(POD, "context"): "ok\n", (POD, "build"): "half"})
    assert run_logs(cluster)[:2] == (EXIT_OK, "ok\nhalf")
    assert cluster.streams == [("context", False), ("build", False)]


def test_logs_of_a_past_attempt_from_the_log_tail() -> None:
    cluster = FakeCluster(envs=[BUILDING], builds=[build("Failed", attempts=2, logTail="pip: no match")])
    code, out, err = run_logs(cluster, attempt=2)
    assert (code, out) == (EXIT_OK, "pip: no match") and "build pod is gone" in err
    code, out, err = run_logs(cluster, attempt=1)
    assert (code, out) == (EXIT_NOT_FOUND, "") and "holds attempt 2's" in err
    code, _, err = run_logs(cluster, attempt=5)
    assert code == EXIT_NOT_FOUND and "attempt 5 has not started (attempts so far: 2)" in err


@pytest.mark.parametrize(("cluster", "code", "words"), [
    (FakeCluster(envs=[None]), EXIT_NOT_FOUND, "not found"),
    (FakeCluster(envs=[BUILDING]), EXIT_NOT_FOUND, f"EnvironmentBuild {BUILD} not found"),
    (FakeCluster(envs=[BUILDING], builds=[build("Pending", message="waiting for a free build slot")]), EXIT_OK,
     "no attempt has started yet (Pending: waiting for a free build slot)"),
    (FakeCluster(envs=[BUILDING], builds=[build("Failed", message="not built: unsigned")]), EXIT_FAILED,
     "failed before any attempt: not built: unsigned"),
    (FakeCluster(envs=[BUILDING], builds=[build("Building", attempts=1)]), EXIT_OK, "no build pod yet"),
], ids=["no-environment", "no-build", "queued", "refused", "pod-not-yet"])
def test_logs_without_anything_to_show(cluster: FakeCluster, code: int, words: str) -> None:
    result = run_logs(cluster)
    assert result[0] == code and result[1] == "" and words in result[2]


def test_cli_refuses_a_bad_timeout_before_reading_any_kubeconfig(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wait", "torch", "--timeout", "soon"]) == 2
    assert "--timeout: 'soon' is not a duration" in capsys.readouterr().err
