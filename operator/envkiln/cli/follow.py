"""`envkiln wait` and `envkiln logs`: follow an Environment and its build with the user's kubeconfig.

The decisions are pure functions of the objects as the API server returns them (plain dicts):
what an Environment's status means for someone waiting on it (`wait_verdict`), which
EnvironmentBuild and attempt a log request means (`log_target`, `latest_attempt`,
`attempt_source`), what to do with each container of a build pod (`container_action`) and when
following ends (`after_attempt`). tests/unit/test_follow.py has their tables. The loops
(`wait`, `logs`) only read the cluster through `Cluster` and print.

Exit codes (envkiln.cli.errors): 0 Ready (or the log was shown; with -f, the build succeeded),
1 failed (with -f, the build failed), 3 not Ready when --timeout ran out (as `envkiln image` says
"not Ready"), 4 the API server could not be reached for the whole --timeout, 5 not found (the
Environment, the version, its build, the attempt or its log).

`wait` owns its retries: the API client under it retries nothing and no request outlives the
deadline (envkiln.adapters.kubeclient.Timeouts), so `--timeout 3s` ends after about 3 s, whatever
the API server does; a refused connection, a 5xx or a 429 is retried until then.
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from envkiln.adapters.kube import ApiError, Kube
from envkiln.adapters.kubeclient import API_FAILURES, describe_failure
from envkiln.cli.errors import Exit
from envkiln.cli.output import dump
from envkiln.core.decisions.build import TERMINAL
from envkiln.core.decisions.retry import is_retryable
from envkiln.core.names import BUILDS, ENVIRONMENTS, REASON_BASE_IMAGE_UPDATED, build_key, build_name, job_name
from envkiln.core.workloads import WorkloadError, image_for_version

EXIT_OK, EXIT_FAILED, EXIT_NOT_READY = Exit.OK, Exit.FAILED, Exit.NOT_READY
EXIT_CLUSTER, EXIT_NOT_FOUND = Exit.CLUSTER, Exit.NOT_FOUND
POD_DONE = ("Succeeded", "Failed")  # pod phases after which no container starts any more
POLL_SECONDS = 1.0

# --- pure decisions -----------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in `text`: 90, 90s, 15m, 2h, 1h30m (as kubectl's --timeout)."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 1h)")
    return sum(float(number) * {"h": 3600, "m": 60, "s": 1}[unit] for number, unit in parts)


@dataclass(frozen=True)
class Verdict:
    """What an Environment's status means to someone waiting for it."""

    done: bool
    exit_code: int = EXIT_OK
    image_ref: str = ""  # printed on stdout when Ready
    message: str = ""  # why (failure) or what it is waiting for


def wait_verdict(env: dict[str, Any] | None, version: str | None, name: str, namespace: str) -> Verdict:
    """Ready (the image reference), Failed (why), or still waiting (for what).

    A status counts only once the operator has observed the object's latest generation, so a
    status written before the last `kubectl apply` is never taken for its result. VERSION, when
    it is not the current spec.version, is looked up in status.versions.
    """
    if env is None:
        return Verdict(True, EXIT_NOT_FOUND, message=f"Environment {name} not found in namespace {namespace}")
    spec, status = env.get("spec") or {}, env.get("status") or {}
    if version is not None and version != spec.get("version", "1"):
        known = any(record.get("version") == version for record in status.get("versions") or [])
        try:
            reference = image_for_version(env, version)
        except WorkloadError as error:  # no such version (not found), or it was never built (failed)
            return Verdict(True, EXIT_FAILED if known else EXIT_NOT_FOUND, message=str(error))
        if reference is not None:  # an older version: built, or it never will be (WorkloadError)
            return Verdict(True, image_ref=reference, message=f"Environment {name}:{version} is Ready")
    generation = env["metadata"].get("generation")
    if status.get("observedGeneration") != generation:
        return Verdict(False, message=f"waiting for the operator to observe generation {generation}")
    phase, text = status.get("phase"), status.get("message", "")
    if phase == "Ready" and status.get("imageRef"):
        return Verdict(True, image_ref=str(status["imageRef"]), message=f"Environment {name} is Ready")
    if phase == "Failed":
        return Verdict(True, EXIT_FAILED, message=f"Environment {name} failed: {text}")
    return Verdict(False, message=f"{phase or 'Pending'}: {text}" if text else str(phase or "Pending"))


@dataclass(frozen=True)
class Target:
    """The EnvironmentBuild a log request is about, or why there is none (`retry`: there may be one soon)."""

    build: str | None
    problem: str = ""
    retry: bool = False
    code: int = EXIT_NOT_FOUND  # the exit code of the problem, when it ends the command


def log_target(env: dict[str, Any] | None, version: str | None, name: str, namespace: str,
               follow: bool = False) -> Target:
    if env is None:
        return Target(None, f"Environment {name} not found in namespace {namespace}")
    spec, status = env.get("spec") or {}, env.get("status") or {}
    if spec.get("userManaged") and not spec.get("build"):
        return Target(None, f"Environment {name} runs its image as is (userManaged): nothing is built")
    if version is not None and version != spec.get("version", "1"):
        for record in reversed(status.get("versions") or []):
            if record.get("version") == version and record.get("hash"):
                rebuild = record.get("reason") == REASON_BASE_IMAGE_UPDATED and record.get("baseImageDigest")
                return Target(build_name(record["hash"], record["baseImageDigest"] if rebuild else None))
        known = sorted({str(r.get("version")) for r in status.get("versions") or []} | {spec.get("version", "1")})
        return Target(None, f"Environment {name} has no version {version!r}; known versions: {', '.join(known)}")
    if follow and status.get("observedGeneration") != env["metadata"].get("generation"):
        return Target(None, "waiting for the operator to observe the latest spec", retry=True, code=EXIT_NOT_READY)
    if status.get("hash"):
        return Target(status.get("build") or build_name(status["hash"]))
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        return Target(None, f"Environment {name} failed before any build: {status.get('message', '')}",
                      code=EXIT_FAILED)
    return Target(None, f"Environment {name} has no build yet ({phase}: {status.get('message', '')})", retry=True,
                  code=EXIT_NOT_READY)


def latest_attempt(status: dict[str, Any]) -> int:
    """The newest attempt that has started (0: none yet). While a retry waits for its backoff,
    status.attempts already counts it, but it has not started."""
    attempts = int(status.get("attempts") or 0)
    waiting = status.get("phase") == "Building" and status.get("retryAfter") and not status.get("job")
    return attempts - 1 if attempts and waiting else attempts


def tail_attempt(status: dict[str, Any]) -> int | None:
    """The attempt status.logTail comes from: the last failed one (None: there is no tail)."""
    if not status.get("logTail"):
        return None
    attempts = int(status.get("attempts") or 0)
    return attempts if status.get("phase") == "Failed" else attempts - 1


Source = Literal["pod", "tail", "wait", "none"]


def attempt_source(build: dict[str, Any], attempt: int, has_pod: bool) -> tuple[Source, str]:
    """Where attempt `attempt`'s log is: its pod, status.logTail, not yet anywhere (wait), or gone."""
    status = build.get("status") or {}
    if has_pod:
        return "pod", ""
    kept = tail_attempt(status)
    if kept == attempt:
        return "tail", f"attempt {attempt}'s build pod is gone; this is the end of its log the operator kept"
    if (build.get("spec") or {}).get("builder") == "local":
        return "none", ("the local builder builds inside the operator, so there is no build pod; only a failed "
                        "attempt's log tail is kept (status.logTail)")
    if attempt == latest_attempt(status) and status.get("phase") not in TERMINAL:
        return "wait", f"attempt {attempt} has no build pod yet"
    what = f"status.logTail holds attempt {kept}'s" if kept else "no log was kept"
    return "none", (f"attempt {attempt}'s build pod is gone (finished Jobs are deleted after "
                    f"ENVKILN_BUILD_TTL_SECONDS) and {what}")


def container_names(pod: dict[str, Any]) -> list[str]:
    """The pod's containers in the order they run: init containers, then the others."""
    spec = pod.get("spec") or {}
    return [c["name"] for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]]


Action = Literal["follow", "read", "wait", "skip"]


def container_action(pod: dict[str, Any], container: str, follow: bool) -> Action:
    """follow (stream until it ends), read (what it wrote so far), wait (until it starts), skip (never ran)."""
    status = pod.get("status") or {}
    state: dict[str, Any] = {}
    for entry in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        if entry.get("name") == container:
            state = entry.get("state") or {}
    if state.get("terminated") is not None:
        return "read"
    if state.get("running") is not None:
        return "follow" if follow else "read"
    if status.get("phase") in POD_DONE or not follow:
        return "skip"
    return "wait"


def after_attempt(build: dict[str, Any], attempt: int) -> tuple[Literal["next", "wait", "done"], int]:
    """Once attempt `attempt`'s log has ended: show the next attempt, wait (the operator is still
    verifying or retrying), or end with the build's result."""
    status = build.get("status") or {}
    if latest_attempt(status) > attempt:
        return "next", EXIT_OK
    if status.get("phase") == "Succeeded":
        return "done", EXIT_OK
    if status.get("phase") == "Failed":
        return "done", EXIT_FAILED
    return "wait", EXIT_OK


# --- the cluster, as the CLI reads it -------------------------------------------------------------


class Cluster:
    """What `wait` and `logs` read, through Kube (its retries, its API objects)."""

    def __init__(self, kube: Kube, server: str = ""):
        self.kube = kube
        self.server = server  # the API server's URL, for messages

    def environment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get(ENVIRONMENTS, namespace, name)

    def build(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get(BUILDS, namespace, name)

    def job_pod(self, namespace: str, job: str) -> dict[str, Any] | None:
        """The newest pod of a build Job, as the API returns it (camelCase dict)."""
        pods = self.kube.job_pods(namespace, job)
        return dict(self.kube.to_dict(pods[-1])) if pods else None

    def log(self, namespace: str, pod: str, container: str, follow: bool) -> Iterator[bytes]:
        """The container's log: all of it so far, or (follow) streamed until the container ends."""
        if follow:
            yield from self.kube.stream_pod_log(namespace, pod, container)
        else:
            yield self.kube.read_pod_log(namespace, pod, container).encode()


# --- the loops ----------------------------------------------------------------------------------


def _say(stream: TextIO, text: str) -> None:
    print(text, file=stream, flush=True)


def wait(cluster: Cluster, namespace: str, name: str, version: str | None, timeout: float, out: TextIO,
         err: TextIO, poll: float = POLL_SECONDS, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep, deadline: float | None = None,
         output: str | None = None) -> int:
    """Poll the Environment until `wait_verdict` is done or `timeout` seconds have passed (until
    `deadline`, a `clock()` value, when given). A refused connection, a 5xx or a 429 is retried
    until then; when the last poll still failed, the exit code says the cluster (4), not "not Ready".
    Ready prints the image reference, or with `output` (json, yaml) the Environment."""
    deadline, said, unreachable = clock() + timeout if deadline is None else deadline, "", ""
    while True:
        try:
            environment = cluster.environment(namespace, name)
        except API_FAILURES as error:
            failure = describe_failure(error, cluster.server)
            if failure is None or not is_retryable(failure.status):
                raise
            unreachable, verdict = failure.message, Verdict(False, message=f"{failure.message}; retrying")
        else:
            unreachable, verdict = "", wait_verdict(environment, version, name, namespace)
            if verdict.done:
                if verdict.image_ref:
                    out.write(dump(environment, output) if output else verdict.image_ref + "\n")
                    out.flush()
                if verdict.exit_code != EXIT_OK:
                    _say(err, f"error: {verdict.message}")
                return verdict.exit_code
        if verdict.message != said:
            _say(err, f"waiting: {verdict.message}")
            said = verdict.message
        left = deadline - clock()
        if left <= 0:
            if unreachable:
                _say(err, f"error: timed out after {timeout:g}s: {unreachable}")
                return EXIT_CLUSTER
            _say(err, f"error: timed out after {timeout:g}s: Environment {name} is not Ready ({verdict.message})")
            return EXIT_NOT_READY
        sleep(min(poll, left))


def _write(out: TextIO, chunks: Iterator[bytes]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in chunks:
        out.write(decoder.decode(chunk))
        out.flush()
    out.write(decoder.decode(b"", final=True))
    out.flush()


def _show_pod(cluster: Cluster, namespace: str, job: str, attempt: int, follow: bool, out: TextIO, err: TextIO,
              poll: float, sleep: Callable[[float], None]) -> bool:
    """Every container's log of the attempt's pod, in order (following, with `follow`, until the
    pod is done). False: the pod vanished before its log could be read."""
    pod = cluster.job_pod(namespace, job)
    if pod is None:
        return False
    for container in container_names(pod):
        while (action := container_action(pod, container, follow)) == "wait":
            sleep(poll)
            fresh = cluster.job_pod(namespace, job)
            if fresh is None:
                return False
            pod = fresh
        if action == "skip":
            continue
        _say(err, f"==> attempt {attempt}: pod {pod['metadata']['name']}, container {container} <==")
        try:
            _write(out, cluster.log(namespace, pod["metadata"]["name"], container, action == "follow"))
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        if follow:  # the states of the containers after this one have changed meanwhile
            pod = cluster.job_pod(namespace, job) or pod
    return True


def _show_attempt(cluster: Cluster, namespace: str, build: dict[str, Any], number: int, follow: bool,
                  out: TextIO, err: TextIO, poll: float, sleep: Callable[[float], None]) -> tuple[Source, str]:
    """Show attempt `number`'s log from its pod or status.logTail: ("pod" or "tail", ...) once shown,
    else ("wait" or "none", why)."""
    job = job_name(build_key(build["spec"]), number)
    for _ in range(3):  # a pod may go away while it is read: then its log tail may be kept
        source, why = attempt_source(build, number, cluster.job_pod(namespace, job) is not None)
        if source == "pod":
            if _show_pod(cluster, namespace, job, number, follow, out, err, poll, sleep):
                return source, why
            build = cluster.build(namespace, build["metadata"]["name"]) or build
            continue
        if source == "tail":
            _say(err, f"==> attempt {number}: status.logTail <==\n({why})")
            _write(out, iter([str(build["status"]["logTail"]).encode()]))
        return source, why
    return "none", f"attempt {number}'s build pod went away while its log was read"


def logs(cluster: Cluster, namespace: str, name: str, version: str | None, attempt: int | None, follow: bool,
         out: TextIO, err: TextIO, poll: float = POLL_SECONDS, sleep: Callable[[float], None] = time.sleep) -> int:
    """The build pod's log of NAME[:VERSION]: the latest attempt, or `attempt`. With `follow`, stream
    it until the attempt ends, then (without `attempt`) the next ones until the build ends: exit 0
    when it succeeded, 1 when it failed."""
    said = ""

    def note(text: str) -> None:
        nonlocal said
        if text != said:
            _say(err, text)
            said = text

    while True:  # find the EnvironmentBuild (with follow, wait for it)
        target = log_target(cluster.environment(namespace, name), version, name, namespace, follow)
        build = cluster.build(namespace, target.build) if target.build else None
        if build is not None:
            break
        problem = target.problem or f"EnvironmentBuild {target.build} not found in namespace {namespace}"
        if not follow or not (target.retry or target.build):
            _say(err, f"error: {problem}")
            return target.code if target.problem else EXIT_NOT_FOUND
        note(f"waiting: {problem}")
        sleep(poll)
    build_ref = build["metadata"]["name"]

    def refresh(previous: dict[str, Any]) -> dict[str, Any]:
        return cluster.build(namespace, build_ref) or previous

    while True:  # one attempt after the other
        status = build.get("status") or {}
        number = attempt or latest_attempt(status)
        if attempt is not None and attempt > int(status.get("attempts") or 0):
            _say(err, f"error: attempt {attempt} has not started (attempts so far: {status.get('attempts') or 0})")
            return EXIT_NOT_FOUND
        if number == 0 and status.get("phase") == "Failed":
            _say(err, f"error: EnvironmentBuild {build_ref} failed before any attempt: {status.get('message', '')}")
            return EXIT_FAILED
        if number == 0:
            source: Source = "wait"
            why = f"no attempt has started yet ({status.get('phase') or 'Pending'}: {status.get('message', '')})"
        else:
            source, why = _show_attempt(cluster, namespace, build, number, follow, out, err, poll, sleep)
        if source == "none":
            _say(err, f"error: {why}")
            return EXIT_NOT_FOUND
        if source == "wait" and not follow:
            _say(err, why)
            return EXIT_OK
        if source == "wait":
            note(f"waiting: {why}")
            sleep(poll)
            build = refresh(build)
            continue
        if not follow or attempt is not None:
            return EXIT_OK
        build = refresh(build)  # the attempt's log has ended: a next attempt, or the build's end
        while (step := after_attempt(build, number))[0] == "wait":
            note(f"waiting: {(build.get('status') or {}).get('message', '')}")
            sleep(poll)
            build = refresh(build)
        if step[0] == "done":
            _say(err, f"EnvironmentBuild {build_ref} {build['status']['phase']}: {build['status'].get('message', '')}")
            return step[1]
