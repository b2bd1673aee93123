"""One lock per key, alive only while someone holds or waits for it (no growth with the number of
keys). Used for one build per (namespace, name) at a time and one git query per (url, ref)."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class KeyedLocks:
    """`with locks.hold(key) as acquired:` waits for the key's lock, for at most `wait` seconds when
    given (then `acquired` is False and the body runs without the lock: the caller decides)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: Hashable, wait: float | None = None) -> Iterator[bool]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        acquired = lock.acquire() if wait is None else lock.acquire(timeout=max(0.0, wait))
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
