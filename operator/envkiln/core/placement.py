"""Where build pods run and what environment they get: the settings' defaults, merged with the
per-namespace override an administrator set (ENVKILN_BUILD_NAMESPACES). Pure.

Merge rules (the namespace's override over the defaults):

- nodeSelector, env: merged key by key, the namespace wins; a namespace value "" removes the key
  (e.g. a namespace that must not use the cluster's proxy);
- resources: merged per `requests` / `limits` key, the namespace wins;
- tolerations, pullSecrets, pullCredentials: the defaults' followed by the namespace's own
  (duplicates dropped);
- affinity, priorityClassName, runtimeClassName: the namespace's replaces the default when set.

Build env values may hold credentials (an index URL with user:password@); `mask_credentials`
masks the userinfo of every URL in a text, so that none reaches a status, an Event or a log.
They never enter the definition hash or the EnvironmentBuild: they are settings, applied to the
build pod only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names the operator sets itself in build containers: never overridden by a build env.
RESERVED_ENV_PREFIX = "ENVKILN_"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"]+)@")
MASK = "***"


class BuildPlacement(BaseModel):
    """The placement and environment of build pods: the defaults (settings), or one namespace's override."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = Field(default=None, alias="priorityClassName")
    runtime_class_name: str | None = Field(default=None, alias="runtimeClassName")
    env: dict[str, str] = Field(default_factory=dict)
    pull_secrets: list[str] = Field(default_factory=list, alias="pullSecrets")
    # dockerconfigjson Secrets in the operator namespace: base image pull credentials of the builds.
    pull_credentials: list[str] = Field(default_factory=list, alias="pullCredentials")
    resources: dict[str, dict[str, str]] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits, _)")
            if name.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"{name!r}: names starting with {RESERVED_ENV_PREFIX} are envkiln's own")
            if any(ord(char) < 32 or ord(char) == 127 for char in env[name]):
                raise ValueError(f"{name!r}: the value has a control character (a newline?)")
        return env

    @field_validator("resources")
    @classmethod
    def _resources(cls, resources: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for key in resources:
            if key not in ("requests", "limits"):
                raise ValueError(f"{key!r}: give only requests and limits")
        return resources


def _merged(base: Mapping[str, str], override: Mapping[str, str]) -> dict[str, str]:
    merged = {**base, **override}
    return {key: value for key, value in merged.items() if value != ""}


def _union(base: list[Any], extra: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in [*base, *extra]:
        if item not in out:
            out.append(item)
    return out


def effective_placement(defaults: BuildPlacement, overrides: Mapping[str, BuildPlacement],
                        namespace: str) -> BuildPlacement:
    """The placement of a build in `namespace`: `defaults` merged with its override, if any."""
    override = overrides.get(namespace)
    if override is None:
        return defaults.model_copy(update={"env": _merged(defaults.env, {})})
    resources = {key: _merged(defaults.resources.get(key, {}), override.resources.get(key, {}))
                 for key in ("requests", "limits") if key in defaults.resources or key in override.resources}
    return BuildPlacement(
        node_selector=_merged(defaults.node_selector, override.node_selector),
        tolerations=_union(defaults.tolerations, override.tolerations),
        affinity=override.affinity if override.affinity is not None else defaults.affinity,
        priority_class_name=override.priority_class_name or defaults.priority_class_name,
        runtime_class_name=override.runtime_class_name or defaults.runtime_class_name,
        env=_merged(defaults.env, override.env),
        pull_secrets=_union(defaults.pull_secrets, override.pull_secrets),
        pull_credentials=_union(defaults.pull_credentials, override.pull_credentials),
        resources={key: value for key, value in resources.items() if value},
    )


def mask_credentials(text: str, secrets: list[str] | None = None) -> str:
    """`text` with the user:password of every URL masked, and any of `secrets` (values known to hold
    credentials, e.g. build env values with userinfo) replaced by the masked form."""
    for value in secrets or []:
        masked = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", value)
        if masked != value:
            text = text.replace(value, masked)
    return _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
