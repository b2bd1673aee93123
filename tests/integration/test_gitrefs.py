"""Git refs to commits against a real git server (`git daemon` on 127.0.0.1, harness.gitserver), with
dulwich speaking the git protocol: branches, tags (annotated ones peeled), pinned commits, new
commits after the TTL, unreachable and silent servers. Needs git, not the test cluster."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from envkiln.adapters.gitrefs import GitRefError, GitResolver, list_remote_refs, resolve_git_commit
from envkiln.core.decisions.network import NetworkPolicy
from envkiln.core.definition import definition_hash
from envkiln.core.models import Environment, EnvironmentSpec
from harness.gitserver import GitServer
from harness.ports import free_port

DOCKERFILE = "FROM scratch\nCOPY app.txt /app.txt\n"
LOCAL = NetworkPolicy.from_entries(["127.0.0.0/8"])  # the test server's address, allow-listed


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def git_spec(url: str, ref: str) -> EnvironmentSpec:
    return Environment.model_validate({
        "apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "app"},
        "spec": {"build": {"git": {"url": url, "ref": ref}}},
    }).spec


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "git") as started:
        yield started


class Counting:
    """The real `list_refs`, counted."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, url: str, timeout: float, wanted: Sequence[str] | None = None) -> Mapping[str, str]:
        self.calls += 1
        return list_remote_refs(url, timeout, wanted, policy=LOCAL)


def test_branches_and_tags_resolve_to_their_commits(server: GitServer) -> None:
    url = server.create_repo("app")
    first = server.commit("app", {"Dockerfile": DOCKERFILE, "app.txt": "one\n"})
    second = server.commit("app", {"app.txt": "two\n"}, branch="dev")
    server.tag("app", "v1", first)
    tag_object = server.tag("app", "v2", second, annotated=True)
    assert tag_object != second

    resolver = GitResolver(timeout_seconds=5, policy=LOCAL)
    assert resolver.resolve(url, "main") == first
    assert resolver.resolve(url, "dev") == second
    assert resolver.resolve(url, "v1") == first, "a lightweight tag"
    assert resolver.resolve(url, "v2") == second, "an annotated tag: its commit, not the tag object"
    assert resolver.resolve(url, "refs/heads/dev") == second, "a full ref name"
    assert resolver.resolve(url, "HEAD") == first

    refs = list_remote_refs(url, 5, policy=LOCAL)
    assert refs["refs/tags/v2"] == tag_object and refs["refs/tags/v2^{}"] == second
    assert set(list_remote_refs(url, 5, ["refs/heads/dev"], policy=LOCAL)) == {"refs/heads/dev"}, "v2: only those"

    with pytest.raises(GitRefError, match=r"has no branch or tag named 'nope'; fix spec\.build\.git\.ref") as raised:
        resolver.resolve(url, "nope")
    assert "dev" not in str(raised.value), "no branch name the remote sent"

    with pytest.raises(GitRefError, match=r"\(127\.0\.0\.1 is a loopback address; .*ENVKILN_ALLOWED_PRIVATE_HOSTS"):
        GitResolver(timeout_seconds=5).resolve(url, "main")  # not allow-listed: refused


def test_a_full_commit_needs_no_query(server: GitServer) -> None:
    url = server.create_repo("app")
    first = server.commit("app", {"Dockerfile": DOCKERFILE})
    counting = Counting()
    resolver = GitResolver(list_refs=counting)
    assert resolver.resolve(url, first.upper()) == first
    assert counting.calls == 0
    server.stop()  # and so works while the server is down
    assert resolver.resolve(url, first) == first
    assert counting.calls == 0


def test_a_new_commit_is_seen_after_the_ttl_or_forget(server: GitServer) -> None:
    url = server.create_repo("app")
    first = server.commit("app", {"Dockerfile": DOCKERFILE, "app.txt": "one\n"})
    clock, counting = FakeClock(), Counting()
    resolver = GitResolver(ttl_seconds=30, timeout_seconds=5, clock=clock, list_refs=counting)
    spec = git_spec(url, "main")
    assert resolve_git_commit(spec, resolver) == first
    one = definition_hash(spec, commit=first)

    second = server.commit("app", {"app.txt": "two\n"})
    clock.now += 29
    assert resolver.resolve(url, "main") == first, "within the TTL: the cached commit"
    assert counting.calls == 1
    clock.now += 1
    assert resolver.resolve(url, "main") == second, "after the TTL: the new commit"
    assert counting.calls == 2
    two = definition_hash(spec, commit=resolve_git_commit(spec, resolver))
    assert two != one, "a new commit on the branch is a new definition"
    assert definition_hash(git_spec(url, second)) == two, "the branch at C and the commit C: one definition"

    third = server.commit("app", {"app.txt": "three\n"})
    assert resolver.resolve(url, "main") == second
    resolver.forget(url, "main")
    assert resolver.resolve(url, "main") == third, "after forget(): asked again at once"
    assert counting.calls == 3


def test_an_unreachable_repository_fails_fast_and_clearly() -> None:
    url = f"git://127.0.0.1:{free_port()}/app.git"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(GitRefError) as raised:
        GitResolver(timeout_seconds=5, policy=LOCAL).resolve(url, "main")
    assert time.monotonic() - started < 2
    assert str(raised.value) == (
        f"spec.build.git: cannot reach {url} (connection refused); check the URL, or pin a commit (40 hex) in "
        "spec.build.git.ref")


def test_a_silent_server_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"git://127.0.0.1:{silent.getsockname()[1]}/app.git"
        started = time.monotonic()
        with pytest.raises(GitRefError, match=r"cannot reach .* \(no answer within 0\.5s\)"):
            GitResolver(timeout_seconds=0.5, policy=LOCAL).resolve(url, "main")
        assert time.monotonic() - started < 3


def test_a_missing_repository_is_told(server: GitServer) -> None:
    with pytest.raises(GitRefError, match=r"cannot reach git://.*/absent\.git \(.*no such repository"):
        GitResolver(timeout_seconds=5, policy=LOCAL).resolve(server.url("absent"), "main")


def test_an_outage_is_an_error_then_recovers(server: GitServer) -> None:
    url = server.create_repo("app")
    first = server.commit("app", {"Dockerfile": DOCKERFILE})
    resolver = GitResolver(ttl_seconds=0, timeout_seconds=5, policy=LOCAL)
    assert resolver.resolve(url, "main") == first
    server.stop()
    second = server.commit("app", {"app.txt": "while down\n"})  # pushed over the file system
    with pytest.raises(GitRefError, match=r"\(connection refused\)"):
        resolver.resolve(url, "main")
    server.start()
    assert resolver.resolve(url, "main") == second
