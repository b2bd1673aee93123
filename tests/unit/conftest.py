"""Fixtures shared by the unit tests (the stand-ins themselves are in fakes.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from fakes import Behave, RegistryPeer, ServeRegistry, start_registry


@pytest.fixture()
def fake_registry() -> Iterator[ServeRegistry]:
    """fake_registry(behave) starts a registry on 127.0.0.1 answering with `behave`; all are stopped after
    the test."""
    stops: list[Callable[[], None]] = []

    def serve(behave: Behave) -> RegistryPeer:
        peer, stop = start_registry(behave)
        stops.append(stop)
        return peer

    yield serve
    for stop in stops:
        stop()
