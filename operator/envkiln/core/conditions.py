"""metav1.Condition lists: set one condition, keep lastTransitionTime unless the status flips; kstatus's
Reconciling/Stalled pair, and what kstatus concludes from a status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, Literal


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


# --- kstatus ---------------------------------------------------------------------------------
# The standard conditions of kstatus (sigs.k8s.io/cli-utils/pkg/kstatus), which Flux's health
# checks and other GitOps tools read. They are "abnormal-true": present, and True, only while
# something is unusual, and absent otherwise. Their names are kstatus's, not envkiln's.
RECONCILING: Final = "Reconciling"  # the controller is still working towards the spec
STALLED: Final = "Stalled"  # the controller cannot make progress without a change (an error)
READY: Final = "Ready"  # the fallback kstatus reads when neither of the above is present

Progress = Literal["reconciling", "stalled", "done"]
KStatus = Literal["InProgress", "Failed", "Current", "Terminating"]


def remove_condition(conditions: list[dict[str, Any]] | None, type_: str) -> list[dict[str, Any]]:
    """A new list without `type_`."""
    return [dict(c) for c in conditions or [] if c.get("type") != type_]


def set_progress(
    conditions: list[dict[str, Any]] | None,
    progress: Progress,
    reason: str,
    message: str = "",
    generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """kstatus's pair for `progress`: Reconciling=True while reconciling, Stalled=True when stalled,
    neither when done (the one not set is removed, as kstatus's abnormal-true convention asks)."""
    result = list(conditions or [])
    for type_, wanted in ((RECONCILING, "reconciling"), (STALLED, "stalled")):
        if progress == wanted:
            result = set_condition(result, type_, True, reason, message, generation, now)
        else:
            result = remove_condition(result, type_)
    return result


def kstatus(obj: dict[str, Any]) -> tuple[KStatus, str]:
    """(status, message) as kstatus's `Compute` says it for a custom resource (one without
    type-specific rules), in its order: deletion, then metadata.generation against
    status.observedGeneration, then the first Reconciling or Stalled condition that is True, then
    the Ready condition; with none of these a resource counts as Current. Flux waits on this."""
    metadata, status = obj.get("metadata") or {}, obj.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    generation, observed = metadata.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress", (f"{obj.get('kind', 'Resource')} generation is {generation}, but latest observed "
                              f"generation is {observed}")
    conditions = status.get("conditions") or []
    for condition in conditions:
        if condition.get("status") == "True" and condition.get("type") == RECONCILING:
            return "InProgress", str(condition.get("message", ""))
        if condition.get("status") == "True" and condition.get("type") == STALLED:
            return "Failed", str(condition.get("message", ""))
    ready = get_condition(conditions, READY)
    if ready is not None and ready.get("status") == "True":
        return "Current", "Resource is Ready"
    if ready is not None and ready.get("status") in ("False", "Unknown"):
        return "InProgress", str(ready.get("message", ""))
    return "Current", "Resource is current"
