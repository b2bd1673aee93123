"""The SSRF policy as tables (envkiln.core.decisions.network): which addresses and names a tenant may
make the operator connect to, what the allow-list permits, which redirects stay in one origin, and
where a registry's token realm may be."""

from __future__ import annotations

import ipaddress

import pytest

from envkiln.core.decisions.network import (
    STRICT,
    UNRESTRICTED,
    NetworkPolicy,
    address_class,
    decide_addresses,
    decide_name,
    decide_realm,
    origin,
    same_origin,
)
from envkiln.core.models.hosts import parse_host_entry, parse_realm_entry

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


@pytest.mark.parametrize(("address", "expected"), [
    (PUBLIC_V4, None),
    (PUBLIC_V6, None),
    ("8.8.8.8", None),
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),  # "this network": Linux connects it to the host itself
    ("::", "unspecified"),
    ("169.254.169.254", "link-local"),  # cloud metadata services
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("febf::1", "link-local"),
    ("10.96.0.1", "cluster-internal"),  # a typical ClusterIP
    ("10.244.3.7", "cluster-internal"),  # a typical pod address
    ("172.16.0.1", "cluster-internal"),
    ("172.31.255.255", "cluster-internal"),
    ("172.32.0.1", None),
    ("192.168.1.1", "cluster-internal"),
    ("100.64.0.1", "cluster-internal"),  # carrier-grade NAT, used for pods by some clusters
    ("fd00::1", "cluster-internal"),
    ("fc00::1", "cluster-internal"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "reserved"),
    ("240.0.0.1", "reserved"),
    ("198.18.0.1", "reserved"),
    ("192.0.2.1", "reserved"),  # documentation
    ("2001:db8::1", "reserved"),
    # IPv6 forms that carry an IPv4 address: judged by that address.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    (f"::ffff:{PUBLIC_V4}", None),
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    (f"64:ff9b::{PUBLIC_V4}", None),
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
])
def test_address_class(address: str, expected: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(("host", "policy", "refused"), [
    ("github.com", STRICT, False),
    ("git.example.org.", STRICT, False),
    ("localhost", STRICT, True),
    ("LOCALHOST.", STRICT, True),
    ("app.localhost", STRICT, True),
    ("registry.kube-system.svc", STRICT, True),
    ("registry.kube-system.svc.cluster.local", STRICT, True),
    ("kubernetes.default.svc", STRICT, True),
    ("metadata.google.internal", STRICT, True),
    ("printer.local", STRICT, True),
    ("registry", STRICT, True),  # a single label: the cluster's search path completes it
    ("127.0.0.1", STRICT, False),  # literals are judged by address, not by name
    ("registry.kube-system.svc", NetworkPolicy.from_entries(["registry.kube-system.svc"]), False),
    ("registry.kube-system.svc", NetworkPolicy.from_entries(["*.svc"]), False),
    ("registry.kube-system.svc", NetworkPolicy.from_entries(["10.0.0.0/8"]), True),  # an address entry is no name
    ("localhost", UNRESTRICTED, False),
])
def test_decide_name(host: str, policy: NetworkPolicy, refused: bool) -> None:
    reason = decide_name(host, policy)
    assert (reason is not None) is refused
    if reason is not None:
        assert "ENVKILN_ALLOWED_PRIVATE_HOSTS" in reason


ALLOW_LOOPBACK = NetworkPolicy.from_entries(["127.0.0.0/8", "::1"])
ALLOW_NAME = NetworkPolicy.from_entries(["git.corp.example"])
ALLOW_DOMAIN = NetworkPolicy.from_entries(["*.corp.example"])


@pytest.mark.parametrize(("host", "addresses", "policy", "allowed", "reason"), [
    # IP literals (the "resolution" of a literal is itself)
    (PUBLIC_V4, [PUBLIC_V4], STRICT, [PUBLIC_V4], None),
    ("127.0.0.1", ["127.0.0.1"], STRICT, [], "loopback"),
    ("169.254.169.254", ["169.254.169.254"], STRICT, [], "link-local"),
    ("0.0.0.0", ["0.0.0.0"], STRICT, [], "unspecified"),
    ("::1", ["::1"], STRICT, [], "loopback"),
    ("fe80::1", ["fe80::1%eth0"], STRICT, [], "link-local"),
    # names resolving to such addresses
    ("evil.example", ["169.254.169.254"], STRICT, [], "link-local"),
    ("evil.example", ["127.0.0.1", "::1"], STRICT, [], "loopback"),
    ("evil.example", ["10.96.0.1"], STRICT, [], "cluster-internal"),
    ("evil.example", ["127.0.0.1", "10.0.0.1"], STRICT, [], "cluster-internal and loopback"),
    ("evil.example", ["::ffff:169.254.169.254"], STRICT, [], "link-local"),
    # only the allowed addresses of a mixed answer are connected to
    ("mixed.example", ["169.254.169.254", PUBLIC_V4], STRICT, [PUBLIC_V4], None),
    ("mixed.example", [PUBLIC_V6, "fd00::1"], STRICT, [PUBLIC_V6], None),
    ("git.example", [], STRICT, [], "has no address"),
    ("git.example", ["garbage"], STRICT, [], "unparsable"),
    # the allow-list
    ("127.0.0.1", ["127.0.0.1"], ALLOW_LOOPBACK, ["127.0.0.1"], None),
    ("::1", ["::1"], ALLOW_LOOPBACK, ["::1"], None),
    ("evil.example", ["169.254.169.254"], ALLOW_LOOPBACK, [], "link-local"),  # only what is listed
    ("git.corp.example", ["10.1.2.3"], ALLOW_NAME, ["10.1.2.3"], None),
    ("GIT.corp.example.", ["10.1.2.3"], ALLOW_NAME, ["10.1.2.3"], None),
    ("other.corp.example", ["10.1.2.3"], ALLOW_NAME, [], "cluster-internal"),
    ("other.corp.example", ["10.1.2.3"], ALLOW_DOMAIN, ["10.1.2.3"], None),
    ("corp.example.evil.io", ["10.1.2.3"], ALLOW_DOMAIN, [], "cluster-internal"),
    ("evilcorp.example", ["10.1.2.3"], ALLOW_DOMAIN, [], "cluster-internal"),
    ("anything", ["169.254.169.254"], UNRESTRICTED, ["169.254.169.254"], None),
])
def test_decide_addresses(host: str, addresses: list[str], policy: NetworkPolicy, allowed: list[str],
                          reason: str | None) -> None:
    decision = decide_addresses(host, addresses, policy)
    assert list(decision.allowed) == allowed
    if reason is None:
        assert decision.reason is None
    else:
        assert decision.reason is not None and reason in decision.reason
        assert "ENVKILN_ALLOWED_PRIVATE_HOSTS" in decision.reason or "no address" in decision.reason
        for address in addresses:
            if address.split("%")[0] != host:  # a name's addresses are not told (a literal is the user's own)
                assert address.split("%")[0] not in decision.reason


@pytest.mark.parametrize(("entry", "expected"), [
    ("127.0.0.1", ipaddress.ip_network("127.0.0.1/32")),
    ("10.0.0.0/8", ipaddress.ip_network("10.0.0.0/8")),
    ("10.1.2.3/8", ipaddress.ip_network("10.0.0.0/8")),
    ("::1", ipaddress.ip_network("::1/128")),
    ("fd00::/8", ipaddress.ip_network("fd00::/8")),
    ("Git.Corp.Example.", "git.corp.example"),
    ("*.corp.example", "*.corp.example"),
    (" registry ", "registry"),
])
def test_allow_list_entries(entry: str, expected: object) -> None:
    assert parse_host_entry(entry) == expected


@pytest.mark.parametrize("entry", ["", "*", "*.", "-host", "host name", "10.0.0.0/33", "http://x", "a/b", "*.-x"])
def test_bad_allow_list_entries(entry: str) -> None:
    with pytest.raises(ValueError, match="neither an address"):
        parse_host_entry(entry)


@pytest.mark.parametrize(("first", "second", "same"), [
    ("https://git.example/r.git", "https://git.example/other", True),
    ("https://git.example/r.git", "https://git.example:443/other", True),
    ("https://GIT.example/r.git", "https://git.example./other", True),
    ("http://r.example/v2/", "http://r.example:80/v2/x", True),
    ("https://git.example/r.git", "http://git.example/r.git", False),  # never https to http
    ("https://git.example/r.git", "https://git.example:8443/r.git", False),
    ("https://git.example/r.git", "https://evil.example/r.git", False),
    ("https://git.example/r.git", "http://169.254.169.254/latest/meta-data/", False),
    ("https://git.example/r.git", "https://git.example:bad/r.git", False),
    ("https://git.example/r.git", "/relative", False),
])
def test_same_origin(first: str, second: str, same: bool) -> None:
    assert same_origin(first, second) is same


def test_origin_fills_default_ports() -> None:
    assert origin("git://h/r") == ("git", "h", 9418)
    assert origin("https://h/r") == ("https", "h", 443)


SERVICES = dict(parse_realm_entry(e) for e in ["docker.io=https://auth.docker.io",
                                               "nvcr.io=https://authn.nvidia.com:443/"])


@pytest.mark.parametrize(("registry", "url", "realm", "accepted"), [
    ("ghcr.io", "https://ghcr.io/v2/o/r/manifests/1", "https://ghcr.io/token", True),
    ("r.example:5000", "http://r.example:5000/v2/x/manifests/1", "http://r.example:5000/token", True),
    ("docker.io", "https://registry-1.docker.io/v2/library/python/manifests/3", "https://auth.docker.io/token", True),
    ("nvcr.io", "https://nvcr.io/v2/x/manifests/1", "https://authn.nvidia.com/token", True),
    ("docker.io", "https://registry-1.docker.io/v2/x/manifests/1", "http://auth.docker.io/token", False),  # not https
    ("ghcr.io", "https://ghcr.io/v2/x/manifests/1", "https://auth.docker.io/token", False),  # another registry's
    ("ghcr.io", "https://ghcr.io/v2/x/manifests/1", "http://ghcr.io/token", False),  # https to http
    ("ghcr.io", "https://ghcr.io/v2/x/manifests/1", "https://ghcr.io:8443/token", False),
    ("evil.example", "https://evil.example/v2/x/manifests/1", "http://169.254.169.254/", False),
    ("evil.example", "https://evil.example/v2/x/manifests/1", "file:///etc/passwd", False),
    ("evil.example", "https://evil.example/v2/x/manifests/1", "gopher://evil.example/", False),
])
def test_decide_realm(registry: str, url: str, realm: str, accepted: bool) -> None:
    reason = decide_realm(registry, url, realm, SERVICES)
    assert (reason is None) is accepted
    if reason is not None:
        assert "169.254" not in reason and "auth.docker.io" not in reason, "the realm came from the registry"


@pytest.mark.parametrize("entry", ["docker.io", "docker.io=http://auth.docker.io", "=https://a.b",
                                   "x=https://a.b/path", "x=https://-a.b", "x=https://a.b:99999"])
def test_bad_token_realm_entries(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_realm_entry(entry)
