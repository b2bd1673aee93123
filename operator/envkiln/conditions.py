"""metav1.Condition lists: set one condition, keep lastTransitionTime unless the status flips."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def to_iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z and whole seconds, as Kubernetes writes times."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def from_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def now_iso() -> str:
    return to_iso(datetime.now(UTC))


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str = "",
    generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """A new list (merge patches replace lists whole) with `type_` set."""
    text = "Unknown" if status is None else ("True" if status else "False")
    result: list[dict[str, Any]] = []
    found = False
    for condition in conditions or []:
        if condition.get("type") != type_:
            result.append(dict(condition))
            continue
        found = True
        changed = condition.get("status") != text
        result.append({
            "type": type_, "status": text, "reason": reason, "message": message[:32768],
            "lastTransitionTime": (now or now_iso()) if changed else condition.get("lastTransitionTime") or now_iso(),
            **({"observedGeneration": generation} if generation is not None else {}),
        })
    if not found:
        result.append({
            "type": type_, "status": text, "reason": reason, "message": message[:32768],
            "lastTransitionTime": now or now_iso(),
            **({"observedGeneration": generation} if generation is not None else {}),
        })
    return result


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for condition in conditions or []:
        if condition.get("type") == type_:
            return condition
    return None
