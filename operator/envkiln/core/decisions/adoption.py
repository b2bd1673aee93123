"""Whether an object that holds a name reserved for a build is the operator's own.

A build's Jobs, ConfigMaps and push Secret have names anyone can predict (they follow from the
definition hash), and a namespace editor can create Jobs, ConfigMaps, Secrets and pods before the
operator does. So nothing is followed by its name alone:

- a Job or ConfigMap is the operator's when its controller ownerReference is the EnvironmentBuild,
  by UID (`controlled_by`); the operator always sets `blockOwnerDeletion`, which the API server's
  OwnerReferencesPermissionEnforcement admission plugin (where enabled) lets only those who may
  update the EnvironmentBuild's finalizers set: tenants cannot;
- a build pod is its Job's when it carries the Job's UID in a controller-uid label *and* its
  controller ownerReference is that Job, by UID (`is_job_pod`); the `job-name` label proves nothing;
- anything else under a reserved name is never adopted, changed or deleted: the build fails with
  `foreign_object_message`, which names the object and says to delete it.

Pure: ownerReferences and labels as the API server sends them (JSON field names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envkiln.core.names import JOB_CONTROLLER_UID_LABELS

OwnerReferences = Sequence[Mapping[str, Any]]


def controller_of(owner_references: OwnerReferences | None) -> Mapping[str, Any] | None:
    """The controller ownerReference (at most one is allowed), or None."""
    return next((ref for ref in owner_references or [] if ref.get("controller") is True), None)


def controlled_by(owner_references: OwnerReferences | None, kind: str, uid: str | None) -> bool:
    """Whether the object's controller is the `kind` object with `uid`, with blockOwnerDeletion (as the
    operator and the Job controller set it)."""
    ref = controller_of(owner_references)
    return (ref is not None and bool(uid) and ref.get("kind") == kind and ref.get("uid") == uid
            and ref.get("blockOwnerDeletion") is True)


def is_job_pod(labels: Mapping[str, str] | None, owner_references: OwnerReferences | None, job_uid: str | None) -> bool:
    """Whether a pod was made by the Job with `job_uid`: its controller-uid label (either name) is
    that UID and its controller is that Job."""
    labels = labels or {}
    return (bool(job_uid) and any(labels.get(label) == job_uid for label in JOB_CONTROLLER_UID_LABELS)
            and controlled_by(owner_references, "Job", job_uid))


def foreign_object_message(kind: str, namespace: str, name: str, owner_references: OwnerReferences | None,
                           owner_kind: str, owner_name: str) -> str:
    """Why the object `kind` `namespace`/`name` is not adopted, and what to do (for the build's
    condition, logTail and Event)."""
    ref = controller_of(owner_references)
    if ref is None:
        whose = "it has no controller"
    elif ref.get("kind") == owner_kind and ref.get("name") == owner_name:
        whose = (f"its controller is an earlier {owner_kind} {owner_name} (uid {ref.get('uid')}), not this one; "
                 "the garbage collector usually removes such leftovers within seconds")
    else:
        whose = f"its controller is {ref.get('kind')} {ref.get('name')}"
    plural = kind.lower() if kind != "ConfigMap" else "configmap"
    return (f"{kind} {namespace}/{name} already exists and envkiln did not make it ({whose}); envkiln never "
            f"adopts, changes or deletes it. Delete it (kubectl -n {namespace} delete {plural} {name}); a retry "
            f"of the build makes its own, and once the build has failed, delete {owner_kind} {owner_name} to try "
            "again")
