"""Node clusters that share the host: who runs now, the host as it was before the first of them,
and which one undoes the host-wide parts.

Two node clusters may run at once when at most one of them runs kube-proxy (it owns the host's
KUBE-* iptables chains; `node.node_lock` holds that). Each keeps its own parts to itself (its
bridges, routes and guard rule, named by its network; its work directory, processes and network
namespaces) and removes them when it stops. What they share (the kubelet's canary chains,
kube-proxy's chains, sysctls, directories outside the work directories) is compared with the host
as it was before the first cluster started, and undone by the last one out.

The ledger is a directory of lock files, one per running cluster (held with flock while it runs,
so a killed run leaves no stale entry that counts), the snapshot taken by the first, and a mutex
that makes joining, leaving and the last one's cleanup one step each.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from harness import leftovers
from harness.controlplane import cache_dir

Snapshot = dict[str, set[str]]


def ledger_dir() -> Path:
    path = cache_dir() / "clusters"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def mutex() -> Iterator[None]:
    with open(ledger_dir() / ".mutex", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def others_running(own: str) -> list[str]:
    """Idents of the other clusters that hold their entry (call under the mutex); stale entries go."""
    running = []
    for entry in sorted(ledger_dir().glob("*.lock")):
        if entry.stem == own:
            continue
        with open(entry, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                running.append(entry.stem)
                continue
            fcntl.flock(handle, fcntl.LOCK_UN)
        entry.unlink(missing_ok=True)
    return running


def _write(snapshot: Snapshot, path: Path) -> None:
    path.write_text(json.dumps({kind: sorted(items) for kind, items in snapshot.items()}))


def _read(path: Path) -> Snapshot:
    return {kind: set(items) for kind, items in json.loads(path.read_text()).items()}


def own_items(differences: list[str], needles: tuple[str, ...]) -> list[str]:
    """The differences that name one of this cluster's own parts (its network ident, its address
    ranges, its work directory): what it must answer for while another cluster still runs."""
    return [line for line in differences if any(needle in line for needle in needles)]


class Entry:
    """One running cluster's place in the ledger. `join()` (under `mutex()`) returns the host as it
    was before the first running cluster; `leave()` (under `mutex()`) says whether it was the last."""

    def __init__(self, ident: str):
        self.ident = ident
        self._handle: IO[str] | None = None

    @property
    def _path(self) -> Path:
        return ledger_dir() / f"{self.ident}.lock"

    @property
    def _pristine(self) -> Path:
        return ledger_dir() / "pristine.json"

    def join(self) -> Snapshot:
        if others_running(self.ident) and self._pristine.exists():
            before = _read(self._pristine)
        else:
            before = leftovers.snapshot(None)
            _write(before, self._pristine)
        self._handle = open(self._path, "w")  # noqa: SIM115 - held for the cluster's life
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        return before

    def leave(self) -> bool:
        """Drop this entry; True when no other cluster runs (this one undoes the host-wide parts)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._path.unlink(missing_ok=True)
        last = not others_running(self.ident)
        if last:
            self._pristine.unlink(missing_ok=True)
        return last
