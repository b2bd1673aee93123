"""How the `envkiln` command prints: tables for people, `-o json|yaml|name` for scripts (as kubectl).

One item prints as itself; several print as a `kind: List` whose `items` hold them, as
`kubectl get -o json` does. JSON is indented and keeps the items' key order; YAML is block style.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

from envkiln.core.names import ENVIRONMENTS, GROUP

STRUCTURED = ("json", "yaml")


def as_list(items: Sequence[Any]) -> dict[str, Any]:
    """kubectl's List of `items`."""
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": list(items)}


def dump(value: Any, fmt: str) -> str:
    """`value` as JSON or YAML text, ending in a newline."""
    if fmt == "json":
        return json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return str(yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True))
    raise ValueError(f"unknown output format {fmt!r}; use json or yaml")


def dump_items(items: Sequence[Any], fmt: str, single: bool = True) -> str:
    """One item as itself (with `single`), else a List of them."""
    return dump(items[0] if single and len(items) == 1 else as_list(items), fmt)


def resource_name(obj: dict[str, Any], plural: str = ENVIRONMENTS) -> str:
    """`-o name`: environment.envkiln.dev/NAME, as kubectl prints it."""
    return f"{plural.removesuffix('s')}.{GROUP}/{obj['metadata']['name']}"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart (the last column unpadded)."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
             for row in rows]
    return "\n".join(lines) + "\n"
