"""The Argo CD health checks in docs/gitops/argocd/, run as Argo CD runs them.

Each `<group>/<Kind>/` directory follows Argo CD's own resource-customization layout
(resource_customizations/ in argoproj/argo-cd): `health.lua`, and `health_test.yaml` listing
`testdata/*.yaml` objects with the health status and message the script must return. Argo CD
runs the script with gopher-lua (Lua 5.1) and the object as the global `obj`; so do these tests,
with lupa's Lua 5.1 and only the libraries such a script may use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

from envkiln.core.models import EnvironmentBuildStatus, EnvironmentStatus, StatusModel

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "docs" / "gitops" / "argocd"
CHECKS = sorted(path.parent for path in ARGOCD.glob("*/*/health.lua"))
STATUS_MODELS: dict[str, type[StatusModel]] = {"Environment": EnvironmentStatus,
                                                "EnvironmentBuild": EnvironmentBuildStatus}
# What Argo CD's health checks may not reach (its Lua VM opens no io/os/package libraries).
UNSAFE = ("io", "os", "package", "require", "dofile", "loadfile", "load", "loadstring", "debug", "module")


def cases() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for check in CHECKS:
        for test in yaml.safe_load((check / "health_test.yaml").read_text())["tests"]:
            found.append((check, test))
    return found


def lua_value(runtime: Any, value: Any) -> Any:
    """A YAML value as Argo CD hands it to Lua: mappings and lists become tables (lists from 1)."""
    if isinstance(value, dict):
        return runtime.table_from({k: lua_value(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([lua_value(runtime, v) for v in value])
    return value


def run_health(script: str, obj: dict[str, Any]) -> dict[str, Any]:
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    for name in UNSAFE:
        runtime.execute(f"{name} = nil")
    runtime.globals().obj = lua_value(runtime, obj)
    result = runtime.execute(script)
    return dict(result.items()) if result is not None else {}


def test_every_kind_has_a_health_check() -> None:
    assert [f"{c.parent.name}/{c.name}" for c in CHECKS] == ["envkiln.dev/Environment", "envkiln.dev/EnvironmentBuild"]


@pytest.mark.parametrize(("check", "test"), cases(),
                         ids=[f"{c.name}-{Path(t['inputPath']).stem}" for c, t in cases()])
def test_health_check(check: Path, test: dict[str, Any]) -> None:
    obj = yaml.safe_load((check / test["inputPath"]).read_text())
    assert obj["kind"] == check.name and obj["apiVersion"].split("/")[0] == check.parent.name
    result = run_health((check / "health.lua").read_text(), obj)
    assert result == test["healthStatus"]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.name)
def test_test_data_is_what_the_operator_writes(check: Path) -> None:
    """Every status in the test data reads as the kind's status model, and every file is used."""
    listed = {t["inputPath"] for t in yaml.safe_load((check / "health_test.yaml").read_text())["tests"]}
    files = {f"testdata/{p.name}" for p in (check / "testdata").glob("*.yaml")}
    assert listed == files
    statuses = {test["healthStatus"]["status"] for test in yaml.safe_load((check / "health_test.yaml").read_text())[
        "tests"]}
    assert statuses == {"Healthy", "Progressing", "Degraded"}
    for path in sorted(files):
        obj = yaml.safe_load((check / path).read_text())
        if "status" in obj:
            STATUS_MODELS[check.name].model_validate(obj["status"])


def test_the_argocd_cm_patch_holds_the_same_scripts() -> None:
    """docs/gitops/argocd/argocd-cm-patch.yaml, for `kubectl patch`, says what health.lua says."""
    data = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())["data"]
    assert data == {f"resource.customizations.health.{c.parent.name}_{c.name}": (c / "health.lua").read_text()
                    for c in CHECKS}


def test_the_sandbox_is_argo_cds() -> None:
    with pytest.raises(lua51.LuaError):
        run_health("return os.getenv('HOME')", {})
    assert run_health("return {status = string.upper('healthy')}", {}) == {"status": "HEALTHY"}
