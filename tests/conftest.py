"""Shared pytest setup: the integration marker by folder, and the count of integration tests that ran.
(The source root, the harness and the helper modules are on the path by pytest's `pythonpath`.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


# The tests marked one_node_cluster here run in two pytest processes, each with its own node cluster (only one
# of them with kube-proxy: it rewrites the host's KUBE-* iptables chains), and the others (the bare control
# plane, no cluster at all) in a third beside them: scripts/integration.sh.
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.one_node_cluster)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # ENVKILN_NODE_KUBE_PROXY=0: this process's node runs no kube-proxy (scripts/integration.sh's second half)
    if item.get_closest_marker("kube_proxy") and os.environ.get("ENVKILN_NODE_KUBE_PROXY") == "0":
        pytest.fail("this test's pods reach a ClusterIP Service and this node runs no kube-proxy "
                    "(ENVKILN_NODE_KUBE_PROXY=0): run it with the half that has one", pytrace=False)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    # CI wants to see that integration tests ran for real, not that they were skipped.
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for outcome in counts:
        for report in terminalreporter.stats.get(outcome, []):
            if "integration" in getattr(report, "keywords", {}):
                counts[outcome] += 1
    total = sum(counts.values())
    if total:
        terminalreporter.write_line(
            f"integration tests: {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['error']} errors, {counts['skipped']} skipped (of {total}) against a real "
            "kube-apiserver + etcd, registry and buildah"
        )
