"""The test cluster's own network: a host bridge holding the node address, a pod subnet and a
service range, all unique per run, and a guard so that pods reach nothing outside them.

- the harness bridge `ek<id>` holds NODE_IP/32 (10.99.N.1): the API server, the registry and the
  kubelet listen there; pods reach it through their CNI gateway;
- the CNI bridge `ekc<id>` (made by the CNI bridge plugin) holds the pod subnet 10.244.N.0/24;
- the service range 10.98.N.0/24 and the pod subnet get `unreachable` routes (low priority), so a
  ClusterIP that kube-proxy does not translate, or a pod address before its bridge exists, goes
  nowhere instead of to the default route;
- a FORWARD rule drops what pods send anywhere but their own bridge (pods must not reach the
  world; the CNI bridge plugin turns on ip_forward).

Everything is created before anything talks to these addresses, and removed by `down()`.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import subprocess
from dataclasses import dataclass, field

PREFIX = "ek"
UNREACHABLE_METRIC = "4242"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=60)


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in run("ip", "-4", "-o", "addr").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for line in run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("unreachable", "blackhole", "prohibit", "local", "broadcast"):
            word = line.split()[1]
        if word == "default":
            continue
        try:
            nets.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    return nets


@dataclass
class TestNetwork:
    ident: str = field(default_factory=lambda: secrets.token_hex(2))
    index: int = -1
    _guard: list[str] = field(default_factory=list)
    _up: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.ident}"

    @property
    def cni_bridge(self) -> str:
        return f"{PREFIX}c{self.ident}"

    @property
    def guard_comment(self) -> str:
        return f"envkiln {self.ident}: pods stay inside"

    def own_names(self) -> tuple[str, ...]:
        """Strings that name this network's parts on the host (its bridges, its guard rule, its three
        address ranges): what a leftover line must contain to be this network's."""
        return (self.bridge, self.cni_bridge, self.guard_comment,
                *(f"10.{b}.{self.index}." for b in (98, 99, 244)))

    @property
    def node_ip(self) -> str:
        return f"10.99.{self.index}.1"

    @property
    def node_net(self) -> str:
        return f"10.99.{self.index}.0/24"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.98.{self.index}.0/24"

    def _pick_index(self) -> int:
        used = _used_networks()
        candidates = list(range(1, 255))
        random.shuffle(candidates)
        for n in candidates:
            ours = [ipaddress.ip_network(f"10.{b}.{n}.0/24") for b in (98, 99, 244)]
            if not any(a.overlaps(b) for a in ours for b in used):
                return n
        raise RuntimeError("no free 10.98/99/244.N.0/24 subnet")

    def up(self) -> TestNetwork:
        self.index = self._pick_index()
        # The address exists before anything is told about it.
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self._up.append("bridge")
        run("ip", "addr", "add", f"{self.node_ip}/32", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for cidr in (self.service_cidr, self.pod_cidr):  # the pod bridge's own route (metric 0) wins
            run("ip", "route", "add", "unreachable", cidr, "metric", UNREACHABLE_METRIC)
        self._up.append("route")
        self._guard = ["FORWARD", "-i", self.cni_bridge, "!", "-o", self.cni_bridge, "-m", "comment",
                       "--comment", self.guard_comment, "-j", "DROP"]
        run("iptables", "-I", *self._guard)
        self._up.append("guard")
        return self

    def down(self) -> list[str]:
        """Remove what `up` made and the CNI bridge; returns errors (empty when all went)."""
        errors = []
        if "guard" in self._up:
            while run("iptables", "-C", *self._guard, check=False).returncode == 0:
                result = run("iptables", "-D", *self._guard, check=False)
                if result.returncode:
                    errors.append(result.stderr.strip())
                    break
        if "route" in self._up:
            for cidr in (self.service_cidr, self.pod_cidr):
                run("ip", "route", "del", "unreachable", cidr, "metric", UNREACHABLE_METRIC, check=False)
        for name in (self.cni_bridge, self.bridge):
            if run("ip", "link", "show", name, check=False).returncode == 0:
                result = run("ip", "link", "del", name, check=False)
                if result.returncode:
                    errors.append(f"ip link del {name}: {result.stderr.strip()}")
        self._up.clear()
        return errors
