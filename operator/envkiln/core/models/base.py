"""The base of every model that maps to Kubernetes JSON, and the metadata envkiln reads."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic.alias_generators import to_camel

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # namespaces; matched whole (re.fullmatch)


def _camel(name: str) -> str:
    return to_camel(name)


class KubeModel(BaseModel):
    """Base for every model that maps to Kubernetes JSON: camelCase aliases, no unknown fields."""

    model_config = ConfigDict(
        alias_generator=_camel,
        populate_by_name=True,
        extra="forbid",
        str_strip_whitespace=False,
        validate_default=True,
    )

    def to_kube(self) -> dict[str, Any]:
        """The Kubernetes JSON form: aliases, and unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(KubeModel):
    # Status written by older or newer operators may carry fields this one does not know.
    model_config = ConfigDict(extra="ignore")


class ObjectMeta(KubeModel):
    """The part of metadata envkiln reads; everything else passes through."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        if name is not None and (len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name)):
            raise ValueError(
                f"{name!r} is not a valid resource name: lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit, at most 253 characters"
            )
        return name

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, namespace: str | None) -> str | None:
        if namespace is not None and not DNS_LABEL.fullmatch(namespace):
            raise ValueError(
                f"{namespace!r} is not a valid namespace name: lowercase letters, digits and '-', starting and "
                "ending with a letter or digit, at most 63 characters"
            )
        return namespace

