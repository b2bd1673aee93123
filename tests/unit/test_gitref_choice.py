"""Git refs to commits without a network: which ref wins, what is refused, how long answers are kept.
(Against a real `git daemon`: tests/integration/test_gitrefs.py.)"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import pytest

from envkiln.adapters.gitrefs import GitRefError, GitResolver, is_commit, list_remote_refs, resolve_git_commit
from helpers import PIP_ENV, manifest, spec_of

C1 = "1111111111111111111111111111111111111111"
C2 = "2222222222222222222222222222222222222222"
C3 = "3333333333333333333333333333333333333333"
TAG_OBJECT = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
URL = "git://git.example.org/team/app.git"

REFS = {
    "HEAD": C1,
    "refs/heads/main": C1,
    "refs/heads/dev": C2,
    "refs/heads/both": C1,  # a branch and a tag of the same name: the branch wins, as in git
    "refs/tags/both": C2,
    "refs/tags/v1": C2,  # lightweight
    "refs/tags/v2": TAG_OBJECT,  # annotated: the tag object, then its commit
    "refs/tags/v2^{}": C3,
    "refs/pull/7/head": C3,
}


class FakeRemote:
    """A `list_refs` that counts its calls and can be changed or broken between them."""

    def __init__(self, refs: Mapping[str, str] = REFS) -> None:
        self.refs = dict(refs)
        self.calls: list[tuple[str, float]] = []
        self.wanted: list[Sequence[str] | None] = []
        self.down: str | None = None

    def __call__(self, url: str, timeout: float, wanted: Sequence[str] | None = None) -> Mapping[str, str]:
        self.calls.append((url, timeout))
        self.wanted.append(wanted)
        if self.down:
            raise GitRefError(f"spec.build.git: cannot reach {url} ({self.down})")
        return dict(self.refs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(remote: FakeRemote, ttl: float = 60.0, clock: FakeClock | None = None, per_host: int = 4) -> GitResolver:
    return GitResolver(ttl_seconds=ttl, timeout_seconds=3.0, clock=clock or FakeClock(), list_refs=remote,
                       per_host=per_host)


@pytest.mark.parametrize(("ref", "expected"), [
    (C1, True), (C1.upper(), True), ("AbCdEf0123" * 4, True),
    ("main", False), (C1[:7], False), (C1[:-1], False), (C1 + "1", False), ("z" * 40, False), ("", False),
    (f" {C1}", False),
])
def test_is_commit(ref: str, expected: bool) -> None:
    assert is_commit(ref) is expected


@pytest.mark.parametrize(("ref", "expected"), [
    ("main", C1),
    ("dev", C2),
    ("both", C1),
    ("v1", C2),
    ("v2", C3),  # peeled: the commit, never the tag object
    ("refs/heads/dev", C2),
    ("refs/tags/v2", C3),
    ("refs/pull/7/head", C3),
    ("HEAD", C1),
])
def test_resolution_rules(ref: str, expected: str) -> None:
    remote = FakeRemote()
    assert resolver(remote).resolve(URL, ref) == expected
    assert len(remote.calls) == 1 and remote.calls[0][0] == URL, "one query"
    assert 2.9 < remote.calls[0][1] <= 3.0, "with what is left of the configured deadline"
    assert remote.wanted == [[f"refs/heads/{ref}", f"refs/tags/{ref}", ref]], "only the names the ref may stand for"


def test_answers_are_lowercased() -> None:
    remote = FakeRemote({"refs/heads/main": C1.replace("1", "A")})
    assert resolver(remote).resolve(URL, "main") == "a" * 40


def test_a_missing_ref_says_what_to_do_and_quotes_nothing_of_the_remote() -> None:
    secret_branches = {**REFS, "refs/heads/SECRET-from-the-remote": C1, "refs/tags/also-SECRET": C2}
    with pytest.raises(GitRefError) as raised:
        resolver(FakeRemote(secret_branches)).resolve(URL, "feature/x")
    message = str(raised.value)
    assert message == (f"spec.build.git: {URL} has no branch or tag named 'feature/x'; fix spec.build.git.ref "
                       f"(`git ls-remote {URL}` lists them)")
    assert "SECRET" not in message and "main" not in message, "no ref name the remote sent"


def test_a_short_commit_is_told_to_be_given_in_full() -> None:
    with pytest.raises(GitRefError, match=r"no branch or tag named '1111111' \(a commit must be given in full"):
        resolver(FakeRemote()).resolve(URL, C1[:7])


def test_a_sha256_repository_is_refused_clearly() -> None:
    with pytest.raises(GitRefError, match="does not give a SHA-1 commit") as raised:
        resolver(FakeRemote({"refs/heads/main": "b" * 64})).resolve(URL, "main")
    assert "b" * 40 not in str(raised.value), "the remote's answer is not quoted"


def test_a_full_commit_is_used_as_is_without_a_query() -> None:
    remote = FakeRemote()
    remote.down = "connection refused"
    pinned = resolver(remote)
    assert pinned.resolve(URL, C3) == C3
    assert pinned.resolve(URL, C3.upper()) == C3
    assert pinned.resolve("ssh://git@git.example.org/team/app.git", C3) == C3
    assert pinned.resolve("git@git.example.org:team/app.git", C3.upper()) == C3
    assert remote.calls == []


@pytest.mark.parametrize("url", [
    "ssh://git@git.example.org/team/app.git",
    "git@git.example.org:team/app.git",
    "git+ssh://git.example.org/team/app.git",
])
def test_ssh_repositories_are_never_queried(url: str) -> None:
    remote = FakeRemote()
    with pytest.raises(GitRefError) as raised:
        resolver(remote).resolve(url, "main")
    message = str(raised.value)
    assert message.startswith(f"spec.build.git: {url} is an ssh repository")
    assert "pin a commit (40 hex) in spec.build.git.ref" in message
    assert remote.calls == []


def test_other_schemes_are_refused_before_any_network() -> None:
    with pytest.raises(GitRefError, match=r"only git:// and https://.*pin a commit"):
        list_remote_refs("file:///srv/git/app.git", 1.0)
    with pytest.raises(GitRefError, match=r"only git:// and https://"):
        list_remote_refs("http://example.org/app.git", 1.0)


def test_answers_are_kept_for_the_ttl() -> None:
    remote, clock = FakeRemote(), FakeClock()
    cached = resolver(remote, ttl=60, clock=clock)
    assert cached.resolve(URL, "main") == C1
    remote.refs["refs/heads/main"] = C2  # a new commit on the branch
    clock.now += 59.9
    assert cached.resolve(URL, "main") == C1, "within the TTL: the cached answer"
    assert len(remote.calls) == 1
    clock.now += 0.1
    assert cached.resolve(URL, "main") == C2, "after the TTL: asked again"
    assert len(remote.calls) == 2


def test_the_cache_is_per_url_and_ref() -> None:
    remote = FakeRemote()
    cached = resolver(remote)
    cached.resolve(URL, "main")
    cached.resolve(URL, "dev")
    cached.resolve(URL + "x", "main")
    cached.resolve(URL, "main")
    cached.resolve(URL, "dev")
    assert [c[0] for c in remote.calls] == [URL, URL, URL + "x"]


def test_forget_asks_again() -> None:
    remote = FakeRemote()
    cached = resolver(remote)
    cached.resolve(URL, "main")
    remote.refs["refs/heads/main"] = C2
    cached.forget(URL, "dev")  # another ref: no effect
    assert cached.resolve(URL, "main") == C1
    cached.forget(URL, "main")
    assert cached.resolve(URL, "main") == C2
    cached.forget(URL, "never-asked")  # nothing to forget: fine


def test_a_zero_ttl_always_asks() -> None:
    remote = FakeRemote()
    uncached = resolver(remote, ttl=0)
    uncached.resolve(URL, "main")
    uncached.resolve(URL, "main")
    assert len(remote.calls) == 2


def test_failures_are_not_cached() -> None:
    remote, clock = FakeRemote(), FakeClock()
    cached = resolver(remote, clock=clock)
    remote.down = "connection refused"
    with pytest.raises(GitRefError, match="cannot reach"):
        cached.resolve(URL, "main")
    with pytest.raises(GitRefError, match="no branch or tag"):
        resolver(FakeRemote({}), clock=clock).resolve(URL, "main")
    remote.down = None
    assert cached.resolve(URL, "main") == C1, "the next call asks again, and succeeds"
    assert len(remote.calls) == 2


def test_a_failure_after_the_ttl_is_told_not_hidden_by_an_old_answer() -> None:
    # Keeping the last good commit is the reconciler's choice (it knows the spec did not change).
    remote, clock = FakeRemote(), FakeClock()
    cached = resolver(remote, ttl=10, clock=clock)
    cached.resolve(URL, "main")
    remote.down = "connection refused"
    clock.now += 10
    with pytest.raises(GitRefError, match="cannot reach"):
        cached.resolve(URL, "main")


def test_expired_answers_do_not_pile_up() -> None:
    remote, clock = FakeRemote(), FakeClock()
    cached = resolver(remote, ttl=10, clock=clock)
    for i in range(50):
        cached.resolve(f"{URL}{i}", "main")
        clock.now += 1
    assert len(cached._cache) <= 11


def test_concurrent_resolves_are_safe() -> None:
    remote = FakeRemote()
    cached = resolver(remote)
    results: list[str] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        for j in range(50):
            commit = cached.resolve(f"{URL}{(i + j) % 7}", ("main", "dev", "v2")[j % 3])
            with lock:
                results.append(commit)

    cached = resolver(remote, per_host=8)  # every thread asks the same host: its share fits them all
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 400 and set(results) == {C1, C2, C3}


def test_resolve_git_commit() -> None:
    remote = FakeRemote()
    git = manifest(PIP_ENV, image=None, pip=None, build={"git": {"url": URL, "ref": "v2"}})
    assert resolve_git_commit(spec_of(git), resolver(remote)) == C3
    assert resolve_git_commit(spec_of(PIP_ENV), resolver(remote)) is None
    configmap = manifest(PIP_ENV, image=None, pip=None, build={"configMap": {"name": "ctx"}})
    assert resolve_git_commit(spec_of(configmap), resolver(remote)) is None
    assert len(remote.calls) == 1


def test_credentials_never_appear_in_messages() -> None:
    url = "https://user:s3cret-token@git.example.org/team/app.git"
    with pytest.raises(GitRefError) as raised:
        resolver(FakeRemote({})).resolve(url, "main")
    assert "s3cret" not in str(raised.value) and "https://***@git.example.org/team/app.git" in str(raised.value)
    token = "https://ghp_s3cret@git.example.org/team/app.git"  # a token as the user name
    with pytest.raises(GitRefError) as raised:
        resolver(FakeRemote({})).resolve(token, "main")
    assert "s3cret" not in str(raised.value)
    with pytest.raises(GitRefError) as raised:  # an ssh user name is no secret, and helps
        resolver(FakeRemote()).resolve("ssh://git@git.example.org/team/app.git", "main")
    assert "ssh://git@git.example.org" in str(raised.value)
