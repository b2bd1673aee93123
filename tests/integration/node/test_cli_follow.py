"""`envkiln wait` and `envkiln logs` against real build pods on the node (issue #17, item 2), with a
kubeconfig as a user has one; and what kubectl reads from the same objects: `kubectl wait` on the
kstatus conditions, `kubectl get -o wide` columns, `kubectl explain` descriptions (items 4, 5).

The commands run as processes, started right after the Environment is created, so they follow
the build while its pod runs: the log arrives while the build still runs, not after it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from envkiln.core.conditions import kstatus
from harness.controlplane import kubectl as pinned_kubectl
from harness.pypi import PackageIndex
from node_helpers import probe_spec
from operator_helpers import Envs, environment, wait_for

pytestmark = pytest.mark.timeout(900)


class Command:
    """An `envkiln` (or kubectl) process whose output lines are kept with the time they arrived."""

    def __init__(self, argv: list[str], kubeconfig: Path):
        self.started = time.monotonic()
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "KUBECONFIG": str(kubeconfig)})
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[tuple[float, str]]) -> None:
        for line in stream:
            lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        self.ended = time.monotonic()
        return code

    @property
    def stdout(self) -> str:
        return "\n".join(line for _, line in self.out)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.err)

    def __str__(self) -> str:
        return (f"{self.process.args}: rc {self.process.returncode}\n--- stdout\n{self.stdout}\n"
                f"--- stderr\n{self.stderr}")


@pytest.fixture(scope="session")
def kubectl_binary() -> Path:
    """The kubectl built by tests/controlplane/build.sh (scripts/bootstrap.sh): its absence is a failure."""
    return pinned_kubectl()


@pytest.fixture()
def run(control_plane: Any, node_namespace: str, kubectl_binary: Path) -> Iterator[Any]:
    """run(*args) starts `envkiln ARGS -n NAMESPACE`; run.kubectl(*args) starts kubectl the same way."""
    started: list[Command] = []

    def envkiln(*args: str) -> Command:
        command = Command([sys.executable, "-m", "envkiln.cli", *args, "-n", node_namespace],
                          control_plane.kubeconfig)
        started.append(command)
        return command

    def kubectl(*args: str) -> Command:
        command = Command([str(kubectl_binary), *args, "-n", node_namespace], control_plane.kubeconfig)
        started.append(command)
        return command

    envkiln.kubectl = kubectl  # type: ignore[attr-defined]
    yield envkiln
    for command in started:
        if command.process.poll() is None:
            command.process.kill()
            command.process.wait()


def headers(command: Command) -> list[str]:
    return [line for _, line in command.err if line.startswith("==>")]


def test_wait_and_logs_follow_a_build_to_ready(node_api: client.ApiClient, node_namespace: str,
                                              node_base_image: str, probe_index: PackageIndex,
                                              buildah_operator: Any, run: Any) -> None:
    operator = buildah_operator(node_namespace)
    envs = Envs(node_api, node_namespace)
    marker = f"envkiln-follow-{uuid.uuid4().hex[:8]}"
    # The marker is printed, then the build goes on for a while: a follower sees it before the end.
    envs.create(environment("probe", **probe_spec(node_base_image, probe_index,
                                                  f"RUN echo {marker}-$((6*7)) && sleep 8")))
    follow, waiting, impatient = run("logs", "-f", "probe"), run("wait", "probe", "--timeout", "10m"), \
        run("wait", "probe", "--timeout", "5s")  # 2 s was too short to get an answer beside other suites (exit 4)
    ready_condition = run.kubectl("wait", "--for=condition=Ready", "environment/probe", "--timeout=600s")

    assert waiting.wait() == 0, f"{waiting}\n{operator.log()[-3000:]}"
    status = envs.status("probe")
    assert waiting.stdout == status["imageRef"], "wait prints the image reference, and only it"
    assert impatient.wait() == 3 and "timed out after 5s: Environment probe is not Ready" in impatient.stderr, impatient

    assert follow.wait() == 0, follow
    [arrived] = [at for at, line in follow.out if line == f"{marker}-42"]  # the RUN step's own output
    assert follow.ended - arrived > 5, f"the log was streamed while the build ran (the step sleeps 8 s)\n{follow}"
    job = f"envkiln-{status['hash']}-1"
    assert [h.split(", container ")[1] for h in headers(follow)] == ["context <==", "build <==", "push <=="], follow
    assert all(h.startswith(f"==> attempt 1: pod {job}-") for h in headers(follow)), follow
    assert follow.err[-1][1].startswith(f"EnvironmentBuild envb-{status['hash']} Succeeded: pushed "), follow

    again = run("logs", "probe")  # afterwards, without -f: the finished pod's log, read once
    assert again.wait(60) == 0 and f"{marker}-42" in again.stdout.splitlines(), again

    # kstatus: Ready and nothing abnormal, so Flux and `kubectl wait --for=condition=Ready` agree.
    obj = envs.get("probe")
    assert kstatus(obj) == ("Current", "Resource is Ready")
    assert {c["type"] for c in status["conditions"]} == {"Valid", "ImageAvailable", "Ready"}
    assert ready_condition.wait() == 0, ready_condition
    wide = run.kubectl("get", "environments", "-o", "wide")
    assert wide.wait(60) == 0, wide
    header, row = wide.stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "HASH", "PHASE", "READY", "IMAGE", "AGE", "MESSAGE", "KIND", "REASON",
                              "CACHE", "HIT", "IMAGE", "REF"], wide
    assert row.split()[:4] == ["probe", "1", status["shortHash"], "Ready"]
    assert "SystemManaged" in row and "ImageReady" in row and status["imageRef"] in row, wide
    explain = run.kubectl("explain", "environment.spec.pip")
    assert explain.wait(60) == 0, explain
    assert "installed with uv into /opt/envkiln/venv" in " ".join(explain.stdout.split()), explain  # wrapped


def test_wait_and_logs_of_a_build_that_fails(node_api: client.ApiClient, node_namespace: str,
                                            node_base_image: str, probe_index: PackageIndex,
                                            buildah_operator: Any, run: Any) -> None:
    operator = buildah_operator(node_namespace, build_retry_limit="1")  # two attempts
    envs = Envs(node_api, node_namespace)
    envs.create(environment("missing", **probe_spec(node_base_image, probe_index,
                                                    pip=["envkiln-no-such-package==9.9.9"])))
    follow, waiting = run("logs", "-f", "missing"), run("wait", "missing", "--timeout", "10m")
    stalled = run.kubectl("wait", "--for=condition=Stalled", "environment/missing", "--timeout=600s")

    assert waiting.wait() == 1, f"{waiting}\n{operator.log()[-3000:]}"
    assert waiting.stdout == ""
    assert "error: Environment missing failed: EnvironmentBuild envb-" in waiting.stderr, waiting
    assert "attempt 2 failed" in waiting.stderr, waiting

    assert follow.wait() == 1, follow  # the build failed: so does `logs -f`
    attempts = [h.split(":")[0] for h in headers(follow)]
    assert attempts[0] == "==> attempt 1" and attempts[-1] == "==> attempt 2", follow
    assert follow.stdout.count("envkiln-no-such-package") >= 2, "pip's error, once per attempt"
    assert "no retries left" in follow.err[-1][1], follow

    obj = envs.get("missing")
    assert kstatus(obj)[0] == "Failed", "Stalled=True: Flux stops waiting at once"
    assert stalled.wait() == 0, stalled

    build = envs.build(obj["status"]["build"])
    first = run("logs", "missing", "--attempt", "1")  # its pod is still there
    assert first.wait(60) == 0 and "envkiln-no-such-package" in first.stdout, first
    assert headers(first)[0].startswith("==> attempt 1: pod "), first

    # The pod of the last attempt goes away: its log tail, kept in the status, is what is left.
    job = f"envkiln-{build['spec']['hash']}-2"
    client.BatchV1Api(node_api).delete_namespaced_job(job, node_namespace, propagation_policy="Foreground")
    core = client.CoreV1Api(node_api)
    wait_for(lambda: not core.list_namespaced_pod(node_namespace, label_selector=f"job-name={job}").items,
             timeout=120, what=f"the pods of {job} gone")
    last = run("logs", "missing", "--attempt", "2")
    assert last.wait(60) == 0, last
    assert last.stdout.strip() == build["status"]["logTail"].strip(), last
    assert "==> attempt 2: status.logTail <==" in last.stderr and "build pod is gone" in last.stderr, last
