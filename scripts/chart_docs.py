"""Write charts/envkiln/README.md from the chart's values.yaml: every value with its default and the
comment above it (and the one after it on its line). `make chart-docs` runs it; `--check` exits 1
when the README is not what the values say (tests/unit/test_chart_docs.py checks the same).

    python scripts/chart_docs.py [--check] [--chart charts/envkiln]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "envkiln"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+|\"[^\"]+\"):(?P<rest>.*)$")
_UNSET = object()


@dataclass
class Value:
    path: str
    default: Any
    description: str
    section: bool  # a mapping with values of its own, documented below it


def _trailing_comment(rest: str) -> str:
    """The comment after a value on its line (` # ...`), outside quotes."""
    quote = ""
    for index, char in enumerate(rest):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (index == 0 or rest[index - 1] in " \t"):
            return rest[index + 1:].strip()
    return ""


def _lookup(tree: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return _UNSET
        tree = tree[part]
    return tree


def values_of(text: str) -> list[Value]:
    """Each key of values.yaml in order, with its default and its comments."""
    tree = yaml.safe_load(text) or {}
    found: list[Value] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings we are in
    comments: list[str] = []
    skip_deeper_than: int | None = None  # inside a list or a multi-line scalar: not keys of ours
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than or stripped.startswith("- "):
                continue
            skip_deeper_than = None
        if not stripped:
            comments = []
            continue
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip() if stripped != "#" else "")
            continue
        match = _KEY.match(line)
        if match is None:
            comments = []
            continue
        key = match["key"].strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        default = _lookup(tree, path)
        if default is _UNSET:
            comments = []
            continue
        description = " ".join(c for c in [*comments, _trailing_comment(match["rest"])] if c)
        section = isinstance(default, dict) and bool(default) and not match["rest"].strip().startswith("{")
        found.append(Value(".".join(path), default, description, section))
        if section:
            stack.append((indent, key))
        else:
            skip_deeper_than = indent
        comments = []
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: Any) -> str:
    shown = json.dumps(value, separators=(", ", ": "))
    return "`" + shown.replace("`", "'") + "`"


HEADER = """\
# envkiln Helm chart

Azure ML-style environments for Kubernetes: versioned definitions built into images exactly once.
The project's README and docs/ say what envkiln does; this page is the chart's reference, generated
from [values.yaml](values.yaml) by `make chart-docs` (do not edit it by hand).

## Install

```
helm install envkiln oci://<registry>/charts/envkiln --version <version> \\
  -n envkiln-system --create-namespace --set operator.registry=<registry host[:port][/path]>
helm test envkiln -n envkiln-system --logs
```

`operator.registry` (or `registry.enabled=true` for an in-cluster registry) is required; the
values schema (`values.schema.json`) refuses unknown and malformed values, and allows `global`, so
the chart works as a subchart.

## CRDs

With `crds.install=true` (the default) the release manages its CRDs (Environment,
EnvironmentBuild and Kopf's peering ones). `helm install` creates them from the chart's `crds/`
directory (Helm builds the whole release before it creates anything, and the chart's curated
Environments and Kopf peerings need their kinds to exist), and a Job of the release adopts them into
the release; every `helm upgrade` then updates them like any other template. `crds.keep=true` (the
default) keeps them when the release is uninstalled: deleting a CRD deletes every object of it.
Only the release that owns the CRDs (their `meta.helm.sh/release-name` and `-namespace`
annotations) upgrades them: a CRD kept from an uninstalled release stays that release's until you
remove those two annotations (`kubectl annotate crd <name> meta.helm.sh/release-name-
meta.helm.sh/release-namespace-`); the next install or upgrade then adopts it. With
`crds.install=false`, install and upgrade them yourself: `helm show crds <chart> | kubectl apply
--server-side -f -`, and `helm install --skip-crds`. GitOps tools that render the chart (Argo CD,
Flux with `crds: CreateReplace`) apply `crds/` themselves: set `crds.install=false` there.

## Availability

Two replicas by default. They peer through Kopf: one acts, the others stand by and take over when
it goes away. Every ready replica answers the pod webhook, which fails closed
(`webhook.failurePolicy: Fail`: a labelled pod never starts on the wrong image), so the chart keeps
one answering at all times: a rolling update starts a new pod and waits until its webhook listens
before stopping an old one (`maxUnavailable: 0`), a stopping pod keeps answering for
`shutdownDelaySeconds` while it leaves the Service's endpoints, and a PodDisruptionBudget
(`minAvailable: 1`) makes drains evict the replicas one at a time. Pods roll when a file the
operator reads only at start changes (checksum annotations).

## Values

"""


def render(values_text: str) -> str:
    lines = [HEADER.rstrip("\n"), "", "| Key | Default | Description |", "|---|---|---|"]
    for value in values_of(values_text):
        default = "" if value.section else _default(value.default)
        lines.append(f"| `{value.path}` | {default} | {_cell(value.description)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is not up to date")
    parser.add_argument("--chart", type=Path, default=CHART)
    args = parser.parse_args(argv)
    readme = args.chart / "README.md"
    text = render((args.chart / "values.yaml").read_text(encoding="utf-8"))
    if args.check:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            print(f"{readme} is not up to date: run `make chart-docs`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
