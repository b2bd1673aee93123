"""Which network peers a tenant may make the operator talk to, and how (the SSRF policy). Pure.

A tenant names hosts: a git remote in `spec.build.git.url`, the registry of a base or
bring-your-own image. The operator connects to them from inside the cluster, where it can reach
what no tenant should: its own loopback, the cloud's metadata service (169.254.169.254), the API
server and every Service. So a tenant-named host is connected to only at addresses on the public
internet, unless the administrator allow-lists it (ENVKILN_ALLOWED_PRIVATE_HOSTS: addresses, CIDR
blocks, host names, `*.domain`). The operator's own registries are the administrator's choice and
are not checked. The adapter (envkiln.adapters.netguard) resolves a name once and connects to an
address this module allowed, so a name that re-resolves elsewhere (DNS rebinding) gains nothing.

Also here: when two URLs are one origin (redirects are followed only within one), and where a
registry's token realm may be (its own origin, or a token service the administrator named).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from envkiln.core.models.hosts import IPNetwork, normal_host, parse_host_entry

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SETTING = "ENVKILN_ALLOWED_PRIVATE_HOSTS"
DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}

# What an address is, when it is not on the public internet; the first block that holds it wins.
_CLASSES: tuple[tuple[IPNetwork, str], ...] = tuple((ipaddress.ip_network(block), name) for block, name in (
    ("0.0.0.0/8", "unspecified"), ("::/128", "unspecified"),
    ("127.0.0.0/8", "loopback"), ("::1/128", "loopback"),
    ("169.254.0.0/16", "link-local"), ("fe80::/10", "link-local"),
    ("10.0.0.0/8", "cluster-internal"), ("172.16.0.0/12", "cluster-internal"),
    ("192.168.0.0/16", "cluster-internal"), ("100.64.0.0/10", "cluster-internal"),
    ("fc00::/7", "cluster-internal"), ("fec0::/10", "cluster-internal"),
    ("224.0.0.0/4", "multicast"), ("ff00::/8", "multicast"),
))
# IPv6 blocks that carry an IPv4 address in their last 32 bits: NAT64 and the deprecated
# IPv4-compatible form (IPv4-mapped and 6to4 have accessors of their own).
_EMBEDDING = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
# Names the cluster's DNS answers with its own Services and nodes.
_CLUSTER_SUFFIXES = (".svc", ".cluster.local", ".localhost", ".internal", ".local")


@dataclass(frozen=True)
class NetworkPolicy:
    """Who may be connected to besides the public internet. `unrestricted`: everyone (the
    operator's own registries, the CLI on a user's machine)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_names: tuple[str, ...] = ()  # exact names, and `*.domain` for every name under it
    unrestricted: bool = False

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> NetworkPolicy:
        """From ENVKILN_ALLOWED_PRIVATE_HOSTS entries (validated by the settings; ValueError here too)."""
        networks: list[IPNetwork] = []
        names: list[str] = []
        for entry in entries:
            parsed = parse_host_entry(entry)
            if isinstance(parsed, str):
                names.append(parsed)
            else:
                networks.append(parsed)
        return cls(tuple(networks), tuple(names))

    def allows_name(self, host: str) -> bool:
        name = normal_host(host)
        return self.unrestricted or any(
            name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:]))
            for allowed in self.allowed_names)

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks
                   if network.version == address.version)


UNRESTRICTED = NetworkPolicy(unrestricted=True)
STRICT = NetworkPolicy()


@dataclass(frozen=True)
class AddressDecision:
    """`allowed`: the addresses that may be connected to, in the resolver's order; `refused`:
    (address, class) for the others; `reason`: why nothing may be, when `allowed` is empty."""

    allowed: tuple[str, ...]
    refused: tuple[tuple[str, str], ...] = ()
    reason: str | None = None


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64, IPv4-compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in block for block in _EMBEDDING) and int(address) > 1:  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_class(address: IPAddress) -> str | None:
    """None for an address on the public internet; else what it is (loopback, link-local, ...)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return address_class(embedded)
    for network, name in _CLASSES:
        if network.version == address.version and address in network:
            return name
    return None if address.is_global else "reserved"


def name_class(host: str) -> str | None:
    """What a host name is when the cluster's own DNS would answer it (a Service, `localhost`, a
    single label that the search path completes); None for other names and for IP literals."""
    name = normal_host(host)
    if _is_literal(name):
        return None
    if name == "localhost" or name.endswith(_CLUSTER_SUFFIXES):
        return "cluster-internal name"
    if "." not in name:
        return "single-label name (the cluster's DNS search path completes it)"
    return None


def decide_name(host: str, policy: NetworkPolicy) -> str | None:
    """Why `host` may not be asked before any DNS query, or None."""
    kind = name_class(host)
    if kind is None or policy.allows_name(host):
        return None
    return f"{normal_host(host)} is a {kind}; {_ADVICE}"


def decide_addresses(host: str, addresses: Sequence[str], policy: NetworkPolicy) -> AddressDecision:
    """Which of the addresses `host` resolved to may be connected to."""
    if policy.unrestricted or policy.allows_name(host):
        return AddressDecision(tuple(addresses))
    allowed: list[str] = []
    refused: list[tuple[str, str]] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            refused.append((text, "unparsable"))
            continue
        kind = address_class(address)
        if kind is None or policy.allows_address(address):
            allowed.append(text)
        else:
            refused.append((text, kind))
    if allowed:
        return AddressDecision(tuple(allowed), tuple(refused))
    if not refused:
        return AddressDecision((), (), f"{normal_host(host)} has no address")
    kinds = " and ".join(sorted({kind for _, kind in refused}))
    article = "an" if kinds[0] in "aeiou" else "a"
    said = f"is {article} {kinds} address" if _is_literal(host) else f"resolves only to {kinds} addresses"
    return AddressDecision((), tuple(refused), f"{normal_host(host)} {said}; {_ADVICE}")


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(normal_host(host))
    except ValueError:
        return False
    return True


_ADVICE = (f"envkiln does not connect there for a namespace; use a public host, or ask the administrator "
           f"to add it to {SETTING}")


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in; a malformed port is -1."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    return scheme, normal_host(parts.hostname or ""), port or DEFAULT_PORTS.get(scheme)


def origin_text(url: str) -> str:
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


def same_origin(first: str, second: str) -> bool:
    """Whether a redirect from `first` to `second` stays where the request was sent: same scheme
    (so never https to http), host and port."""
    return origin(first) == origin(second) and origin(first)[1] != ""


def decide_realm(registry: str, registry_url: str, realm: str, token_services: Mapping[str, str]) -> str | None:
    """Why a registry's Bearer challenge may not be followed to its `realm`, or None. A realm is
    accepted on the registry's own origin, or on the token service the administrator named for
    that registry (ENVKILN_REGISTRY_TOKEN_REALMS, as `https://host:port`); never elsewhere, so
    credentials are never sent to a host the registry picked. The text holds no part of the realm:
    it came from the registry."""
    scheme = urlsplit(realm).scheme.lower()
    if scheme not in ("http", "https"):
        return "its token realm is not an http(s) URL; not followed"
    if same_origin(registry_url, realm):
        return None
    if scheme == "https" and token_services.get(registry.lower()) == origin_text(realm):
        return None
    return (f"its token realm is on another origin than {origin_text(registry_url)}; envkiln asks for tokens "
            "only there or at the token service set for this registry in ENVKILN_REGISTRY_TOKEN_REALMS")
