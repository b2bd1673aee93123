"""Curated-name protection: the reserved prefixes belong to the chart's curated namespace.

The curated environments themselves are defined once, in envkiln.core.catalog (the chart's template and
the docs are generated from it); each of their names carries a reserved prefix
(tests/unit/test_curated_catalog.py)."""

from __future__ import annotations

from envkiln.core.names import DEFAULT_CURATED_NAMESPACE, RESERVED_NAME_PREFIXES


def reserved_prefix(name: str, namespace: str | None, curated_namespace: str = DEFAULT_CURATED_NAMESPACE) -> str | None:
    """The reserved prefix `name` may not use in `namespace`, or None when the name is allowed."""
    if namespace == curated_namespace:
        return None
    lowered = name.lower()
    return next((prefix for prefix in RESERVED_NAME_PREFIXES if lowered.startswith(prefix)), None)


def check_reserved_name(name: str, namespace: str | None, curated_namespace: str = DEFAULT_CURATED_NAMESPACE) -> None:
    """Refuse the curated prefixes outside the curated namespace (the chart's admission policy does the same)."""
    prefix = reserved_prefix(name, namespace, curated_namespace)
    if prefix is not None:
        raise ValueError(
            f"metadata.name: {name!r} starts with the reserved prefix {prefix!r}, which only curated "
            f"environments in namespace {curated_namespace!r} may use; rename the environment"
        )
