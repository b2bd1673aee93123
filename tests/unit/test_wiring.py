"""How the product is put together: handler registration and no module state.

(Only `adapters/kube.py` and `adapters/kubeclient.py` import kubernetes: an import-linter contract.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

import kopf
import pytest

from envkiln.core.settings import OperatorSettings
from envkiln.runtime.handlers import register

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "envkiln"


class _Handler(Protocol):
    @property
    def id(self) -> kopf.HandlerId: ...


class _Handlers(Protocol):
    """What each of Kopf's per-kind registries (activities, changing, ...) has in common."""

    def get_all_handlers(self) -> Collection[_Handler]: ...


def _handler_ids(registry: kopf.OperatorRegistry) -> dict[str, set[str]]:
    kinds: dict[str, _Handlers] = {
        "activity": registry._activities, "changing": registry._changing, "watching": registry._watching,
        "spawning": registry._spawning, "indexing": registry._indexing, "webhooks": registry._webhooks}
    return {kind: {str(h.id) for h in handlers.get_all_handlers()} for kind, handlers in kinds.items()}


def test_importing_the_handlers_registers_nothing() -> None:
    """Importing the runtime registers no handler of any kind on Kopf's default registry (an
    import-time `@kopf.on.event` or `@kopf.on.startup` would run in every process that imports it)."""
    import envkiln.runtime.handlers  # noqa: F401  (imported for the side effects it must not have)

    default = kopf.get_default_registry()
    registries = (default._activities, default._changing, default._watching, default._spawning,
                  default._indexing, default._webhooks)
    ours = [h.id for r in registries for h in r.get_all_handlers() if h.fn.__module__.startswith("envkiln")]
    assert ours == []


@pytest.mark.parametrize("webhook", [False, True])
def test_register(webhook: bool) -> None:
    settings = OperatorSettings(webhook_enabled=webhook, build_sync_seconds=3, env_sync_seconds=7)
    registry = register(settings, kopf.OperatorRegistry())
    ids = _handler_ids(registry)
    assert ids["activity"] == {"login_via_client", "configure", "start_resync", "stop_resync", "shutdown"}
    assert ids["indexing"] == set()  # no Kopf indexes: they cannot be combined with a worker limit
    # Only on.event handlers: Kopf writes no annotations or finalizers onto the objects.
    assert ids["changing"] == set()
    # With the webhook, gated pods with inline specs are watched: the operator (never the webhook,
    # which has no side effects) makes their anonymous Environments.
    assert ids["watching"] == {"environment_changed", "build_event", "build_job_event"} | (
        {"pod_event"} if webhook else set())
    assert ids["webhooks"] == ({"envkiln-environment"} if webhook else set())
    # No per-object timers or daemons: one periodic resync (start_resync) over the indexes.
    assert ids["spawning"] == set()


def _product_sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_mutable_module_state_in_the_operator() -> None:
    """No module holds state: no empty mutable containers at module level (constants are never empty),
    and no `global` rebinding. The operator context lives in Kopf's memo."""
    offenders = []
    for path in _product_sources():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            empty = (isinstance(value, ast.Dict) and not value.keys) or (
                isinstance(value, ast.List | ast.Set) and not value.elts) or (
                isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and value.func.id in ("dict", "list", "set") and not value.args)
            if empty:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
        offenders += [f"{path.relative_to(PACKAGE)}:{n.lineno} global" for n in ast.walk(tree)
                      if isinstance(n, ast.Global)]
    assert offenders == []


@pytest.mark.parametrize(("module", "not_loaded"), [
    # The operator without its webhook (the default) never loads cryptography: 8 MiB resident.
    ("envkiln.runtime.handlers", "cryptography"),
    ("envkiln.runtime.runner", "kopf"),
])
def test_the_runtime_loads_what_it_uses_only(module: str, not_loaded: str) -> None:
    """A heavy library is imported where it is used, not at the top of the runtime's modules."""
    probe = f"import sys, {module}; print(any(m == {not_loaded!r} or m.startswith({not_loaded!r} + '.') "\
            "for m in sys.modules))"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                           cwd=PACKAGE.parent).stdout.strip()
    assert found == "False", f"importing {module} loads {not_loaded}"
