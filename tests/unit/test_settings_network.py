"""The network settings (ENVKILN_ALLOWED_PRIVATE_HOSTS, ENVKILN_REGISTRY_TOKEN_REALMS,
ENVKILN_PER_HOST_CONCURRENCY, ENVKILN_GIT_MAX_BYTES): read from the environment, refused at start
with the variable named, and turned into the policy the adapters use."""

from __future__ import annotations

import ipaddress

import pytest

from envkiln.adapters.registryclient import token_services
from envkiln.core.decisions.network import NetworkPolicy, decide_addresses
from envkiln.core.settings import OperatorSettings, SettingsError


@pytest.mark.parametrize(("environ", "field", "expected"), [
    ({}, "allowed_private_hosts", []),
    ({"ENVKILN_ALLOWED_PRIVATE_HOSTS": "127.0.0.0/8,::1"}, "allowed_private_hosts", ["127.0.0.0/8", "::1"]),
    ({"ENVKILN_ALLOWED_PRIVATE_HOSTS": " git.corp.example  *.svc "}, "allowed_private_hosts",
     ["git.corp.example", "*.svc"]),
    ({}, "registry_token_realms", ["docker.io=https://auth.docker.io", "registry.gitlab.com=https://gitlab.com"]),
    ({"ENVKILN_REGISTRY_TOKEN_REALMS": ""}, "registry_token_realms", []),
    ({"ENVKILN_REGISTRY_TOKEN_REALMS": "nvcr.io=https://authn.nvidia.com"}, "registry_token_realms",
     ["nvcr.io=https://authn.nvidia.com"]),
    ({}, "per_host_concurrency", 4),
    ({"ENVKILN_PER_HOST_CONCURRENCY": "2"}, "per_host_concurrency", 2),
    ({}, "git_max_bytes", 1024 * 1024),
])
def test_read_from_the_environment(environ: dict[str, str], field: str, expected: object) -> None:
    assert getattr(OperatorSettings.from_env(environ), field) == expected


@pytest.mark.parametrize(("environ", "message"), [
    ({"ENVKILN_ALLOWED_PRIVATE_HOSTS": "127.0.0.0/8,-evil"}, "ENVKILN_ALLOWED_PRIVATE_HOSTS: '-evil' is neither"),
    ({"ENVKILN_ALLOWED_PRIVATE_HOSTS": "10.0.0.0/40"}, "ENVKILN_ALLOWED_PRIVATE_HOSTS: '10.0.0.0/40'"),
    ({"ENVKILN_REGISTRY_TOKEN_REALMS": "docker.io=http://auth.docker.io"}, "ENVKILN_REGISTRY_TOKEN_REALMS: "),
    ({"ENVKILN_PER_HOST_CONCURRENCY": "0"}, "ENVKILN_PER_HOST_CONCURRENCY"),
    ({"ENVKILN_GIT_MAX_BYTES": "10"}, "ENVKILN_GIT_MAX_BYTES"),
])
def test_refused_at_start_with_the_variable_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(".", r"\.")):
        OperatorSettings.from_env(environ)


def test_the_settings_make_the_policy() -> None:
    settings = OperatorSettings.from_env({"ENVKILN_ALLOWED_PRIVATE_HOSTS": "10.20.0.0/16,git.corp.example"})
    policy = NetworkPolicy.from_entries(settings.allowed_private_hosts)
    assert policy.allowed_networks == (ipaddress.ip_network("10.20.0.0/16"),)
    assert decide_addresses("any.example", ["10.20.1.1"], policy).allowed == ("10.20.1.1",)
    assert decide_addresses("any.example", ["10.21.1.1"], policy).allowed == ()
    assert decide_addresses("git.corp.example", ["10.21.1.1"], policy).allowed == ("10.21.1.1",)
    assert token_services(OperatorSettings().registry_token_realms) == {
        "docker.io": "https://auth.docker.io:443", "registry.gitlab.com": "https://gitlab.com:443"}
