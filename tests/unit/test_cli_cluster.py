"""The installed `envkiln` command against clusters that fail: no kubeconfig, a context that is not there,
an API server that refuses connections or never answers, and a stand-in API server on 127.0.0.1 that
answers what a test scripts (403, 404, 503, 429 with Retry-After, then the objects). Each failure
ends in one line on stderr and its exit code (envkiln.cli.errors); `wait --timeout 3s` ends within a
second of 3 s whatever the server does.

The stand-in only plays HTTP answers to the command's GETs, to see what the command does with them;
how the real API server answers is tested against it (tests/integration/bare/test_webhook.py,
tests/integration/node/test_cli_follow.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from envkiln.cli.errors import Exit
from envkiln.cli.main import main

BIN = Path(sys.executable).parent
REF = "reg:5000/envkiln/team/env_x@sha256:" + "a" * 64
ENVS = "/apis/envkiln.dev/v1alpha1"


def environment(name: str = "torch", namespace: str = "team", phase: str = "Ready", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {"version": "1", "image": "python:3.11-slim"},
            "status": {"phase": phase, "observedGeneration": 1, "shortHash": "0123456789ab",
                       **({"imageRef": REF} if phase == "Ready" else {}), **status}}


def status(code: int, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}, {}


Answer = tuple[int, Any, dict[str, str]]


class StandIn:
    """An HTTP server on 127.0.0.1: each path answers its scripted answers in turn (the last one
    again and again); 404 for paths without a script. `requests` records the paths asked."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.requests: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                stand_in.requests.append(self.path)
                queue = stand_in.answers.get(path) or [status(404, f"{path} not found")]
                code, body, headers = queue.pop(0) if len(queue) > 1 else queue[0]
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def script(self, path: str, *answers: Answer) -> None:
        self.answers[path] = list(answers)


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "team"}},
                     {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "elsewhere"}}],
    }))
    return path


@pytest.fixture()
def stand_in(tmp_path: Path) -> Iterator[StandIn]:
    server = StandIn()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """A HOME without ~/.kube: nothing is read but what a test names."""
    directory = tmp_path / "home"
    directory.mkdir()
    return directory


def envkiln(home: Path, *args: str, kubeconfig_path: Path | None = None, stdin: str | None = None,
            program: str = "envkiln") -> tuple[subprocess.CompletedProcess[str], float]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home)}
    if kubeconfig_path is not None:
        env["KUBECONFIG"] = str(kubeconfig_path)
    started = time.monotonic()
    result = subprocess.run([str(BIN / program), *args], capture_output=True, text=True, env=env, input=stdin,
                            timeout=120, cwd=home)
    return result, time.monotonic() - started


def start_up_seconds(home: Path) -> float:
    """How long `envkiln list` takes to be refused by a closed port: the interpreter, the imports (the
    Kubernetes client) and one refused connection, slower while other suites share the machine."""
    config = kubeconfig(home / "closed-config", f"https://127.0.0.1:{closed_port()}")
    result, elapsed = envkiln(home, "list", kubeconfig_path=config)
    assert result.returncode == Exit.CLUSTER, result
    return elapsed


def imported_in_process(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    """A refused `list` in this process, so that what a request needs is imported before one is timed
    (the first call imports the Kubernetes client: 4 s under load here)."""
    config = kubeconfig(home / "warm-config", f"https://127.0.0.1:{closed_port()}")
    assert main(["--kubeconfig", str(config), "list"]) == Exit.CLUSTER
    capsys.readouterr()


def in_process(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """main(ARGS) in this process (no interpreter to start), with --kubeconfig CONFIG."""
    code = main(["--kubeconfig", str(config), *args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1] if result.stderr else ""
    assert last.startswith("error: ") and words in last, result.stderr


# --- no cluster at all ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["list"], ["wait", "torch", "--timeout", "5s"], ["diff", "torch:1", "torch:2"]],
                         ids=lambda a: a[0])
def test_without_a_kubeconfig_every_cluster_command_says_so_in_one_line(home: Path, args: list[str]) -> None:
    result, _ = envkiln(home, *args)
    one_line_error(result, Exit.CLUSTER, "no kubeconfig: ~/.kube/config does not exist and KUBECONFIG is not set")
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


@pytest.mark.parametrize(("args", "words"), [
    (["--kubeconfig", "/nonexistent/config", "list"], "no kubeconfig at /nonexistent/config (--kubeconfig)"),
    (["list", "--context", "nope"], "has no context 'nope' (--context); its contexts: ctx, other"),
    (["list", "--kubeconfig", "exec"], "its credentials cannot be had: [Errno 2] No such file or directory"),
], ids=["missing-file", "missing-context", "exec-plugin-missing"])
def test_a_kubeconfig_or_context_that_is_not_there(home: Path, args: list[str], words: str) -> None:
    config_file(home / "exec", [("ctx", None)], user=EXEC)  # its exec credential plugin is not there
    result, _ = envkiln(home, *args, kubeconfig_path=kubeconfig(home / "config", "http://127.0.0.1:9"))
    one_line_error(result, Exit.CLUSTER, words)
    assert len(result.stderr.splitlines()) == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_api_server_and_wait_keeps_its_timeout(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Connections refused: `list` says so at once, in one line; `wait --timeout 3s` retries for 3 s
    (not more: no retries below its own, no request beyond the deadline), then exit 4."""
    port = closed_port()
    config = kubeconfig(home / "config", f"https://127.0.0.1:{port}")
    refused = f"cannot reach the API server https://127.0.0.1:{port}: connection refused"
    result, _ = envkiln(home, "list", kubeconfig_path=config)
    one_line_error(result, Exit.CLUSTER, refused)
    assert len(result.stderr.splitlines()) == 1
    # "At once": timed in this process, without the interpreter's start-up (14 s under load here).
    imported_in_process(capsys, home)
    started = time.monotonic()
    one_line_error(in_process(capsys, config, "list"), Exit.CLUSTER, refused)
    assert time.monotonic() - started < 3.0, "a refused connection is not retried"
    startup = start_up_seconds(home)
    result, elapsed = envkiln(home, "wait", "torch", "--timeout", "3s", kubeconfig_path=config)
    one_line_error(result, Exit.CLUSTER, f"timed out after 3s: cannot reach the API server https://127.0.0.1:{port}: "
                   "connection refused")
    # The deadline counts from the process's start (it took 7 s before): 3 s, the measured start-up, and 2 s of
    # slack for a loaded 2-core machine.
    assert 2.5 <= elapsed <= 3.0 + startup + 2.0, f"wait --timeout 3s took {elapsed:.2f}s (starting: {startup:.2f}s)"
    assert result.stderr.splitlines()[0] == (f"waiting: cannot reach the API server https://127.0.0.1:{port}: "
                                             "connection refused; retrying")


def test_an_api_server_that_never_answers(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A listener that accepts and stays silent: each request's time limit, never beyond wait's deadline."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        config = kubeconfig(home / "config", f"http://127.0.0.1:{silent.getsockname()[1]}")
        startup = start_up_seconds(home)
        result, elapsed = envkiln(home, "wait", "torch", "--timeout", "2s", kubeconfig_path=config)
        one_line_error(result, Exit.CLUSTER, "no answer within the time limit")
        assert elapsed <= 2.0 + startup + 1.0, f"wait --timeout 2s took {elapsed:.2f}s (starting: {startup:.2f}s)"
        imported_in_process(capsys, home)
        started = time.monotonic()
        one_line_error(in_process(capsys, config, "list", "--request-timeout", "0.5s"), Exit.CLUSTER,
                       "no answer within the time limit")
        assert time.monotonic() - started < 5, "three tries of 0.5 s, a little backoff"


# --- a stand-in that answers ---------------------------------------------------------------------

def test_wait_retries_through_5xx_and_429_without_sleeping_their_retry_after(home: Path,
                                                                            stand_in: StandIn) -> None:
    stand_in.script(f"{ENVS}/namespaces/team/environments/torch",
                    status(503, "etcdserver: leader changed"),
                    (429, status(429, "too many requests")[1], {"Retry-After": "120"}),
                    (200, environment(phase="Building", message="building"), {}),
                    (200, environment(), {}))
    result, elapsed = envkiln(home, "wait", "torch", "--timeout", "30s",
                              kubeconfig_path=kubeconfig(home / "config", stand_in.url))
    assert (result.returncode, result.stdout) == (0, REF + "\n"), result
    assert "answered 503: etcdserver: leader changed; retrying" in result.stderr
    assert "answered 429" in result.stderr and elapsed < 15, "a Retry-After of 120 s is not slept below wait"
    assert len(stand_in.requests) == 4


def test_wait_prints_the_environment_as_json(home: Path, stand_in: StandIn,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.script(f"{ENVS}/namespaces/elsewhere/environments/torch", (200, environment("torch", "elsewhere"), {}))
    result = in_process(capsys, kubeconfig(home / "config", stand_in.url), "--context", "other", "wait", "torch",
                        "-o", "json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["status"]["imageRef"] == REF


@pytest.mark.parametrize(("args", "answers", "code", "words"), [
    (["list"], [status(403, 'environments.envkiln.dev is forbidden: User "u" cannot list resource')],
     Exit.CLUSTER, "answered 403: environments.envkiln.dev is forbidden"),
    (["wait", "torch", "--timeout", "20s"], [status(403, "forbidden")], Exit.CLUSTER, "answered 403: forbidden"),
    (["list"], [status(404, "the server could not find the requested resource")], Exit.NOT_FOUND,
     "has no envkiln.dev Environments: install the CRDs"),
    (["image", "torch"], [], Exit.NOT_FOUND, "Environment 'torch' not found in namespace team"),
    (["wait", "torch"], [], Exit.NOT_FOUND, "Environment torch not found in namespace team"),
    (["logs", "torch"], [], Exit.NOT_FOUND, "Environment torch not found in namespace team"),
    (["lock", "torch"], [], Exit.NOT_FOUND, "Environment 'torch' not found in namespace team"),
    (["image", "torch"], [(200, environment(phase="Building", message="building"), {})], Exit.NOT_READY,
     "Environment torch is not Ready (phase Building): building"),
    (["image", "torch:3"], [(200, environment(), {})], Exit.NOT_FOUND, "has no version '3'; known versions: 1"),
    (["list"], [status(500, "internal error")], Exit.CLUSTER, "answered 500: internal error"),
    (["wait", "torch"], [(200, environment(phase="Failed", message="attempt 3 failed"), {})], Exit.FAILED,
     "Environment torch failed: attempt 3 failed"),
], ids=["list-403", "wait-403-at-once", "list-no-crds", "image-404", "wait-404", "logs-404", "lock-404",
        "image-not-ready", "image-no-version", "list-500-after-retries", "wait-failed"])
def test_what_the_api_answers_becomes_one_line_and_an_exit_code(home: Path, stand_in: StandIn, args: list[str],
                                                                 answers: list[Answer], code: int, words: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{ENVS}/namespaces/team/environments" + ("" if args[0] == "list" else "/torch")
    if answers:
        stand_in.script(path, *answers)
    started = time.monotonic()
    result = in_process(capsys, kubeconfig(home / "config", stand_in.url), *args)
    elapsed = time.monotonic() - started
    one_line_error(result, code, words)
    assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 1
    assert elapsed < 15


def test_list_formats_namespaces_and_flags_before_or_after_the_command(home: Path, stand_in: StandIn,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    items = [environment("b"), environment("a"), environment("anonymous-x") | {
        "metadata": {"name": "anonymous-x", "namespace": "team", "labels": {"envkiln.dev/anonymous": "true"}}}]
    stand_in.script(f"{ENVS}/namespaces/team/environments", (200, {"kind": "EnvironmentList", "items": items}, {}))
    stand_in.script(f"{ENVS}/namespaces/x/environments", (200, {"kind": "EnvironmentList", "items": []}, {}))
    stand_in.script(f"{ENVS}/environments", (200, {"kind": "EnvironmentList", "items": [
        environment("c", "ns2"), environment("a", "ns1")]}, {}))
    config = kubeconfig(home / "config", stand_in.url)

    table = in_process(capsys, config, "list")
    assert table.returncode == 0, table
    assert [line.split()[0] for line in table.stdout.splitlines()] == ["NAME", "a", "b"]  # sorted, no anonymous
    as_json, _ = envkiln(home, "list", "-o", "json", "--anonymous", kubeconfig_path=config)  # the command itself
    printed = json.loads(as_json.stdout)
    assert printed["kind"] == "List" and [i["metadata"]["name"] for i in printed["items"]] == ["a", "anonymous-x", "b"]
    as_yaml = in_process(capsys, config, "list", "-o", "yaml")
    assert yaml.safe_load(as_yaml.stdout)["items"][0]["status"]["imageRef"] == REF
    names = in_process(capsys, config, "list", "-o", "name")
    assert names.stdout == "environment.envkiln.dev/a\nenvironment.envkiln.dev/b\n"
    everywhere = in_process(capsys, config, "list", "-A")
    assert [line.split()[:2] for line in everywhere.stdout.splitlines()] == [["NAMESPACE", "NAME"], ["ns1", "a"],
                                                                            ["ns2", "c"]]
    empty = in_process(capsys, config, "-n", "x", "list")  # the global flag before the command
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "No Environments in namespace x.\n")
    asked = [r.split("?")[0] for r in stand_in.requests]
    assert asked == [f"{ENVS}/namespaces/team/environments"] * 4 + [f"{ENVS}/environments",
                                                                   f"{ENVS}/namespaces/x/environments"]


def test_image_and_lock_print_json(home: Path, stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    lock = "# envkiln lock v1\n[pip]\nnumpy==2.1.0\n"
    ready = environment(hash="f" * 32, build="envb-" + "f" * 32)
    stand_in.script(f"{ENVS}/namespaces/team/environments/torch", (200, ready, {}))
    stand_in.script(f"{ENVS}/namespaces/team/environmentbuilds/envb-" + "f" * 32, (200, {
        "metadata": {"name": "envb-" + "f" * 32}, "spec": {"hash": "f" * 32, "plan": {"dockerfile": ""}},
        "status": {"lock": {"text": lock}}}, {}))
    config = kubeconfig(home / "config", stand_in.url)
    image = in_process(capsys, config, "image", "torch", "-o", "json")
    assert json.loads(image.stdout) == {"name": "torch", "namespace": "team", "version": "1", "imageRef": REF}
    printed = in_process(capsys, config, "lock", "torch", "-o", "json")
    assert printed.returncode == 0, printed
    assert json.loads(printed.stdout) | {"text": None} == {"environment": "torch", "version": "1", "hash": "f" * 32,
                                                           "conda": None, "pip": {"numpy": "2.1.0"}, "text": None}
    text = in_process(capsys, config, "lock", "torch")
    assert text.stdout == lock
    stand_in.script(f"{ENVS}/namespaces/team/environmentbuilds/envb-" + "f" * 32, (200, {
        "metadata": {"name": "envb-" + "f" * 32}, "spec": {"hash": "f" * 32, "plan": {"dockerfile": ""}},
        "status": {"phase": "Building"}}, {}))
    one_line_error(in_process(capsys, config, "lock", "torch"), Exit.NOT_READY,
                   "torch:1 has no lock yet: its build is Building")


def test_the_kubectl_plugin_is_installed_and_names_itself(home: Path) -> None:
    """kubectl runs `kubectl-envkiln` from PATH for `kubectl envkiln ...` (and `kubectl_complete-envkiln`
    for its TAB); `pip install -e .` puts both in the venv's bin."""
    for script in ("envkiln", "kubectl-envkiln", "kubectl_complete-envkiln"):
        assert os.access(BIN / script, os.X_OK), f"{BIN / script}: run .venv/bin/pip install -e '.[test]'"
    result, _ = envkiln(home, "--help", program="kubectl-envkiln")
    assert result.returncode == 0 and result.stdout.startswith("usage: kubectl envkiln")
    assert "exit codes:" in result.stdout
    result, _ = envkiln(home, "list", program="kubectl-envkiln")
    one_line_error(result, Exit.CLUSTER, "no kubeconfig")
    result, _ = envkiln(home, "wa", program="kubectl_complete-envkiln")
    assert result.stdout.splitlines()[0].startswith("wait\t") and result.stdout.splitlines()[-1] == ":4"
    module = subprocess.run([sys.executable, "-m", "envkiln.cli", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert module.stdout == "envkiln 0.1.0\n"


# --- the kubeconfig, read as kubectl reads it ---------------------------------------------------------

def config_file(path: Path, contexts: list[tuple[str, str | None]], current: str | None = "ctx",
                user: dict[str, Any] | None = None) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", **({"current-context": current} if current else {}),
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:1/{path.stem}"}}],
        "users": [{"name": "u", "user": user or {"token": "t"}}],
        "contexts": [{"name": name, "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})}}
                     for name, ns in contexts]}))
    return path


EXEC = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "envkiln-no-such-plugin"}}

# (id, files to write: name -> (contexts, current, user), --kubeconfig, $KUBECONFIG, --context,
#  the namespace and server chosen, or the words of the error)
KUBECONFIG_CASES: list[tuple[str, dict[str, Any], str | None, str | None, str | None, str]] = [
    ("current-context", {"a": ([("ctx", "team")], "ctx", None)}, "a", None, None, "team http://127.0.0.1:1/a"),
    ("no-namespace-is-default", {"a": ([("ctx", None)], "ctx", None)}, "a", None, None, "default"),
    ("chosen-context", {"a": ([("ctx", "team"), ("other", "x")], "ctx", None)}, "a", None, "other", "x"),
    ("from-the-environment", {"a": ([("ctx", "team")], "ctx", None)}, None, "a", None, "team"),
    ("merged-files", {"a": ([("ctx", "team")], "ctx", None), "b": ([("late", "b-ns")], None, None)}, None, "a:b",
     "late", "b-ns"),
    ("no-current-context-but-chosen", {"a": ([("ctx", "team")], None, None)}, "a", None, "ctx", "team"),
    ("no-current-context", {"a": ([("ctx", "team")], None, None)}, "a", None, None,
     "error: has no current context: pass --context NAME (its contexts: ctx)"),
    ("no-such-context", {"a": ([("ctx", "team")], "ctx", None)}, "a", None, "prod",
     "error: has no context 'prod' (--context); its contexts: ctx"),
    ("missing-file", {}, "nope", None, None, "error: no kubeconfig at {dir}/nope (--kubeconfig)"),
    ("missing-file-from-the-environment", {}, None, "nope", None, "error: no kubeconfig at {dir}/nope ($KUBECONFIG)"),
    ("nothing-at-all", {}, None, None, None,
     "error: no kubeconfig: ~/.kube/config does not exist and KUBECONFIG is not set"),
    ("not-yaml", {"a": "clusters: ["}, "a", None, None, "error: is not a kubeconfig (ParserError"),
    ("empty", {"a": ""}, "a", None, None, "error: is not a kubeconfig (ConfigException: Invalid kube-config."),
    ("exec-plugin-missing", {"a": ([("ctx", "team")], "ctx", EXEC)}, "a", None, None,
     "error: its credentials cannot be had: [Errno 2] No such file or directory: 'envkiln-no-such-plugin'"),
]


@pytest.mark.parametrize(("case", "files", "flag", "env", "context", "expected"), KUBECONFIG_CASES,
                         ids=[c[0] for c in KUBECONFIG_CASES])
def test_which_kubeconfig_and_context(case: str, files: dict[str, Any], flag: str | None, env: str | None,
                                      context: str | None, expected: str, home: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from envkiln.adapters.kubeclient import KubeconfigError, connect

    for name, content in files.items():
        if isinstance(content, str):
            (home / name).write_text(content)
        else:
            config_file(home / name, *content)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    if env is None:
        monkeypatch.delenv("KUBECONFIG", raising=False)
    else:
        monkeypatch.setenv("KUBECONFIG", ":".join(str(home / part) for part in env.split(":")))
    flag_path = str(home / flag) if flag else None
    if expected.startswith("error: "):
        with pytest.raises(KubeconfigError) as raised:
            connect(flag_path, context)
        assert expected.removeprefix("error: ").replace("{dir}", str(home)) in str(raised.value)
        assert "\n" not in str(raised.value)
        return
    connection = connect(flag_path, context)
    namespace, _, server = expected.partition(" ")
    assert connection.namespace == namespace
    assert not server or connection.server == server
