"""Things the harness makes once per cache directory ($ENVKILN_CACHE), whoever asks first."""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path


def cached(target: Path, make: Callable[[Path], None]) -> Path:
    """`target`, made by `make(target)` unless it exists; parallel sessions make it once (a file lock)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            make(target)
    return target
