"""What a test cluster may leave behind on the host, as a comparable snapshot.

`snapshot(testdir)` records processes with the test directory in their argv, mounts under it
(and under /run/netns, /run/containerd, /var/lib/kubelet), network interfaces with the harness
prefix or veths, KUBE-/CNI-/envkiln iptables chains and rules (IPv4 and IPv6; filter, nat, mangle),
routes into the harness ranges, the sysctls the kubelet/CNI/kube-proxy change, and the
directories they create outside the test directory. `compare(before, after)` lists what differs.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

SYSCTLS = (
    "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet", "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established", "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.ipv4.conf.all.forwarding", "net.ipv6.conf.all.forwarding",
)
OUTSIDE_DIRS = (
    "/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd", "/run/netns", "/var/lib/cni",
    "/opt/containerd", "/etc/cni", "/usr/libexec/kubernetes", "/var/run/kubernetes", "/opt/cni",
)
WATCHED_MOUNT_ROOTS = ("/run/netns/", "/run/containerd/", "/var/lib/kubelet/")
CHAIN_PATTERN = re.compile(r"^(KUBE-|CNI-|EK-)")
INTERFACE_PREFIXES = ("ek", "veth", "cni")
ROUTE_PATTERN = re.compile(r"\b10\.(98|99|244)\.\d+\.")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        try:
            values[name] = _sysctl_path(name).read_text().strip()
        except OSError:
            values[name] = "<absent>"
    return values


def restore_sysctls(values: dict[str, str]) -> list[str]:
    errors = []
    now = read_sysctls()
    for name, value in values.items():
        if value != "<absent>" and now.get(name) != value:
            try:
                _sysctl_path(name).write_text(value)
            except OSError as error:
                errors.append(f"sysctl {name}={value}: {error}")
    return errors


def processes(testdir: str) -> set[str]:
    found = set()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if testdir in argv:
            found.add(f"{entry.name}: {argv[:200]}")
    return found


def mounts(testdir: str | None = None) -> set[str]:
    found = set()
    roots = (*WATCHED_MOUNT_ROOTS, *((testdir.rstrip("/") + "/",) if testdir else ()))
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any((point + "/").startswith(root) for root in roots):
            found.add(point)
    return found


def interfaces() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    names = set()
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(INTERFACE_PREFIXES):
            names.add(name)
    return names


def iptables() -> set[str]:
    found = set()
    for tool in ("iptables-save", "ip6tables-save"):
        for table in ("filter", "nat", "mangle"):
            result = subprocess.run([tool, "-t", table], capture_output=True, text=True, check=False)
            for line in result.stdout.splitlines():
                if line.startswith(":") and CHAIN_PATTERN.match(line[1:]):
                    found.add(f"{tool} {table} chain {line[1:].split()[0]}")
                elif line.startswith("-A") and ("KUBE-" in line or "CNI-" in line or "envkiln" in line):
                    found.add(f"{tool} {table} rule {line}")
    return found


def routes() -> set[str]:
    out = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=False).stdout
    return {line.strip() for line in out.splitlines() if ROUTE_PATTERN.search(line)}


def directories() -> set[str]:
    return {d for d in OUTSIDE_DIRS if os.path.lexists(d)}


def snapshot(testdir: str | Path | None = None) -> dict[str, set[str]]:
    directory = str(testdir) if testdir else None
    return {
        "processes": processes(directory) if directory else set(),
        "mounts": mounts(directory),
        "interfaces": interfaces(),
        "iptables": iptables(),
        "routes": routes(),
        "sysctls": {f"{k}={v}" for k, v in read_sysctls().items()},
        "directories": directories(),
    }


def compare(before: dict[str, set[str]], after: dict[str, set[str]]) -> list[str]:
    """Human-readable differences: `+` is there now but was not before, `-` went missing."""
    differences = []
    for kind in sorted(set(before) | set(after)):
        for item in sorted(after.get(kind, set()) - before.get(kind, set())):
            differences.append(f"{kind}: + {item}")
        for item in sorted(before.get(kind, set()) - after.get(kind, set())):
            differences.append(f"{kind}: - {item}")
    return differences
