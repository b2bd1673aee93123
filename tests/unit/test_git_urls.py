"""Strict git URLs for build contexts (envkiln.core.models.context.check_git_url): no fragment, no
query, no host, user or scp-like path that ssh or git would read as an option; refused with a
message naming spec.build.git.url."""

from __future__ import annotations

from typing import Any

import pytest

from envkiln.core.errors import DefinitionError
from envkiln.core.manifests import parse_environment

CONTEXT: dict[str, Any] = {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "ctx"}}


def git(url: str) -> dict[str, Any]:
    return {**CONTEXT, "spec": {"build": {"git": {"url": url, "ref": "main"}}}}


ACCEPTED = [
    "https://github.com/org/repo.git",
    "https://github.com/org/repo",
    "https://git.example.org:8443/team/app.git",
    "https://user:ghp_token123@git.example.org/team/app.git",
    "https://oauth2:abc%2Fdef@gitlab.example.com/g/p.git",
    "https://[2001:db8::1]/org/repo.git",
    "https://[2001:db8::1]:8443/org/repo.git",
    "git://git.example.org/app.git",
    "git://127.0.0.1:9418/app.git",  # syntax only: whether it may be asked is the network policy's
    "git://h/r",
    "ssh://git@github.com/org/repo.git",
    "ssh://git@github.com:2222/org/repo.git",
    "ssh://git.example.org/~user/repo.git",
    "git@github.com:org/repo.git",
    "git@github.com:/srv/git/repo.git",
    "git@host_with_underscore.example:o/r.git",
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_accepted(url: str) -> None:
    build = parse_environment(git(url)).spec.build
    assert build is not None and build.git is not None and build.git.url == url


REFUSED = [
    # (case, url, what the message says)
    ("fragment", "https://github.com/org/repo.git#main", "has a fragment"),
    ("fragment-with-dir", "https://github.com/org/repo.git#refs/heads/main:subdir", "has a fragment"),
    ("fragment-ssh", "git@github.com:org/repo.git#x", "has a fragment"),
    ("query", "https://github.com/org/repo.git?ref=main", "has a query"),
    ("query-empty", "https://github.com/org/repo.git?", "has a query"),
    ("host-option", "ssh://-oProxyCommand=touch%20x/repo", "the host starts with '-'"),
    ("host-option-https", "https://-x.example/repo", "the host starts with '-'"),
    ("scp-host-option", "git@-oProxyCommand=x:repo", "the host starts with '-'"),
    ("scp-path-option", "git@github.com:-upload-pack=x", "the path starts with '-'"),
    ("ssh-user-option", "ssh://-oProxyCommand=x@github.com/repo", "the user starts with '-'"),
    ("option-alone", "--upload-pack=touch /tmp/x", "spec.build.git.url: "),
    ("space", "https://github.com/org/my repo.git", "not a git URL"),
    ("backslash", "https://github.com\\@evil.example/repo", "spec.build.git.url: "),
    ("quote", "https://github.com/org/'repo'.git", "not a git URL"),
    ("semicolon", "https://github.com/org/repo.git;id", "not a git URL"),
    ("dollar", "https://github.com/$(id)/repo.git", "spec.build.git.url: "),
    ("http", "http://github.com/org/repo.git", "scheme http://"),
    ("file", "file:///srv/git/repo.git", "scheme file://"),
    ("ext", "ext::sh -c touch% /tmp/x", "not a git URL"),
    ("git-plus-ssh", "git+ssh://github.com/org/repo.git", "scheme git+ssh://"),
    ("no-host", "https:///org/repo.git", "names no valid host"),
    ("no-path", "https://github.com", "names no repository path"),
    ("root-path", "https://github.com/", "names no repository path"),
    ("scp-no-path", "git@github.com:", "names no repository path"),
    ("bad-port", "https://github.com:http/org/repo.git", "invalid port"),
    ("port-zero", "https://github.com:0/org/repo.git", "invalid port"),
    ("port-big", "https://github.com:65536/org/repo.git", "invalid port"),
    ("empty-port", "https://github.com:/org/repo.git", "invalid port"),
    ("two-users", "https://a@b@github.com/org/repo.git", "malformed user part"),
    ("bad-ipv6", "https://[not-v6]/org/repo.git", "names no valid host"),
    ("label-dash-end", "https://github-.com/org/repo.git", "names no valid host"),
    ("non-ascii-host", "https://g\u0456thub.com/org/repo.git", "non-ASCII"),  # a Cyrillic look-alike
]


@pytest.mark.parametrize(("url", "expected"), [(u, e) for _, u, e in REFUSED], ids=[c for c, _, _ in REFUSED])
def test_refused_with_the_field_named(url: str, expected: str) -> None:
    with pytest.raises(DefinitionError) as error:
        parse_environment(git(url))
    problems = error.value.problems
    assert len(problems) == 1 and problems[0].startswith("spec.build.git.url: "), problems
    assert expected in problems[0], problems
