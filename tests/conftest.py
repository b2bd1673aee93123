"""Shared pytest setup: the integration marker by folder, and the count of integration tests that ran.
(The source root, the harness and the helper modules are on the path by pytest's `pythonpath`.)"""

from __future__ import annotations

from pathlib import Path

import pytest


# The one-node cluster's kube-proxy rewrites the host's KUBE-* iptables chains, so two of them cannot run at
# once: scripts/integration.sh runs the tests marked here in one pytest process and the others (the bare
# control plane, no cluster at all) in a second one beside it.
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.one_node_cluster)


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
