"""The operator's runtime state: one typed object, kept in Kopf's memo as `memo.runtime`."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field

from envkiln.core.decisions.resync import due
from envkiln.core.names import ANNOTATION_SIGNATURE
from envkiln.core.settings import OperatorSettings
from envkiln.reconcile.context import OperatorContext
from envkiln.reconcile.webhook import NamespaceRates
from envkiln.runtime.indexes import Indexes


class Resync:
    """Retries the handlers asked for ((kind, namespace, name) -> when, monotonic seconds).
    Thread-safe: handlers run in Kopf's threads, the resync loop on its event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[tuple[str, str, str], float] = {}

    def retry(self, kind: str, namespace: str, name: str, delay: float) -> None:
        when = time.monotonic() + delay
        with self._lock:
            key = (kind, namespace, name)
            self._due[key] = min(when, self._due.get(key, when))

    def take_due(self, now: float) -> list[tuple[str, str, str]]:
        with self._lock:
            keys = due(self._due, now)
            for key in keys:
                del self._due[key]
        return keys

    def __len__(self) -> int:
        return len(self._due)


class PeeringState(logging.Filter):
    """Whether Kopf paused this replica in favour of another (peering). Kopf stops its watches
    then, but tells nothing else: the resync loop, which is not a Kopf task, learns it from Kopf's
    own peering log records (the messages the peering tests look for too)."""

    PAUSING = ("Pausing operations in favour of", "Pausing all operators")
    RESUMING = "Resuming operations"

    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(self.PAUSING):
            self.paused = True
        elif message.startswith(self.RESUMING):
            self.paused = False
        return True

    @classmethod
    def attach(cls) -> PeeringState:
        state = cls()
        peering = logging.getLogger("kopf._core.engines.peering")
        if peering.getEffectiveLevel() > logging.INFO:
            peering.setLevel(logging.INFO)  # the records must be made for the filter to see them
        peering.addFilter(state)
        return state


class NamespaceShare:
    """How many objects of each namespace are being synced right now, bounded per namespace."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {}

    def try_enter(self, namespace: str) -> bool:
        with self._lock:
            if self._busy.get(namespace, 0) >= self.limit:
                return False
            self._busy[namespace] = self._busy.get(namespace, 0) + 1
            return True

    def leave(self, namespace: str) -> None:
        with self._lock:
            left = self._busy.get(namespace, 0) - 1
            if left > 0:
                self._busy[namespace] = left
            else:
                self._busy.pop(namespace, None)


@dataclass
class Runtime:
    """Everything the handlers share: the reconcile context, the in-memory indexes, the retry
    schedule, the peering state and the thread pools. The webhook and the resync have pools of
    their own, apart from Kopf's handler threads, so that neither waits behind the other."""

    settings: OperatorSettings
    ctx: OperatorContext
    handlers: concurrent.futures.Executor  # Kopf's own (watch event handlers)
    indexes: Indexes = field(init=False)
    resync: Resync = field(default_factory=Resync)
    peering: PeeringState = field(default_factory=PeeringState)
    webhook: concurrent.futures.ThreadPoolExecutor = field(init=False)
    resync_pool: concurrent.futures.ThreadPoolExecutor = field(init=False)
    rates: NamespaceRates = field(init=False)
    share: NamespaceShare = field(init=False)

    def __post_init__(self) -> None:
        signer = self.ctx.signer
        # Builds are verified once, whole, when they arrive, and kept without their plan.
        self.indexes = Indexes(verify=lambda build: signer.build_problem(dict(build), ANNOTATION_SIGNATURE),
                               verify_record=(lambda build: signer.record_problem(dict(build)))
                               if self.ctx.settings.starts_from_earlier_images else None)
        self.webhook = concurrent.futures.ThreadPoolExecutor(self.settings.webhook_workers,
                                                             thread_name_prefix="envkiln-webhook")
        self.resync_pool = concurrent.futures.ThreadPoolExecutor(self.settings.resync_workers,
                                                                 thread_name_prefix="envkiln-resync")
        self.rates = NamespaceRates(self.settings.anonymous_per_minute, 60.0)
        self.share = NamespaceShare(self.settings.namespace_share)

    def close(self) -> None:
        self.webhook.shutdown(wait=False, cancel_futures=True)
        self.resync_pool.shutdown(wait=False, cancel_futures=True)
