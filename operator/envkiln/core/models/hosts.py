"""Host names and network entries as users and administrators write them (syntax only, no DNS).

Shared by the git URL check of a build context (envkiln.core.models.context), the operator's
allow-list settings (envkiln.core.settings) and the network policy (envkiln.core.decisions.network).
"""

from __future__ import annotations

import ipaddress
import re

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A DNS name (or a dotted IPv4 address): labels of letters, digits, '-' and '_', never starting or
# ending with '-'. A leading '-' would be read as an option by ssh or git.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
MAX_HOSTNAME = 253


def is_hostname(host: str) -> bool:
    """A syntactically valid DNS name or dotted IPv4 address (IPv6 literals are not names)."""
    return len(host) <= MAX_HOSTNAME and HOSTNAME.fullmatch(host) is not None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normal_host(host: str) -> str:
    """A host name as compared: lowercase, without the root's trailing dot, IPv6 without brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def parse_host_entry(entry: str) -> IPNetwork | str:
    """One allow-list entry: an address or CIDR block (`127.0.0.1`, `10.0.0.0/8`, `::1`), a host name
    (`git.corp.example`) or every name under a domain (`*.corp.example`). ValueError says why not."""
    text = entry.strip()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    name = text[2:] if text.startswith("*.") else text
    if not name or not is_hostname(name) or "/" in text:
        raise ValueError(f"{entry!r} is neither an address, a CIDR block (10.0.0.0/8), a host name nor *.domain")
    return "*." + normal_host(name) if text.startswith("*.") else normal_host(name)


def parse_realm_entry(entry: str) -> tuple[str, str]:
    """`registry=https://token.host[:port]`: a registry whose token service lives on another origin.
    (registry, origin) with the origin as `https://host:port`. ValueError says why not."""
    registry, sep, origin = entry.strip().partition("=")
    match = re.fullmatch(r"https://([^/:@?#\s]+)(?::(\d{1,5}))?/?", origin.strip())
    if not sep or not registry.strip() or match is None or not is_hostname(match.group(1)):
        raise ValueError(f"{entry!r} is not registry=https://token-service-host[:port]")
    port = int(match.group(2) or 443)
    if not 0 < port < 65536:
        raise ValueError(f"{entry!r}: port {port} is out of range")
    return registry.strip().lower(), f"https://{normal_host(match.group(1))}:{port}"


# Registries whose token service lives on another origin than the registry itself, as the
# administrator may extend them (ENVKILN_REGISTRY_TOKEN_REALMS): Docker Hub's registry
# (registry-1.docker.io) hands out tokens at auth.docker.io, GitLab's at gitlab.com.
DEFAULT_TOKEN_REALMS = ("docker.io=https://auth.docker.io", "registry.gitlab.com=https://gitlab.com")
