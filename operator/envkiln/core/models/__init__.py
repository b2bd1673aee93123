"""The resources envkiln serves, as pydantic models, one module per concept.

These models are the single source of truth: the CRDs in crds/ are generated from them
(envkiln.core.crdgen), the operator and the CLI validate with them. Python attributes are
snake_case; the Kubernetes field names are their camelCase aliases.

- `base`: KubeModel/StatusModel (aliases, unknown fields) and ObjectMeta;
- `lines`: validated text users write (requirements, channels, dependencies, docker steps);
- `buildkit`: BuildKit's own Dockerfile parser, typed (how docker steps and rendered Dockerfiles split);
- `packages`: the conda specification;
- `context`: a build context the user brings (ConfigMap, git, tarball);
- `environment`: the Environment spec, its kinds, the manifest;
- `status`: the Environment status (conditions, phase, versions);
- `build`: the EnvironmentBuild (plan, spec, status);
- `yamltext`: reading manifest text (YAML without duplicate keys or absurd nesting).

Everything is re-exported here: `from envkiln.core.models import X` is the way to import.
(`check_reserved_name` moved to envkiln.core.decisions.curated: it is a decision, not a model.)
"""

from envkiln.core.models.base import KubeModel, ObjectMeta, StatusModel
from envkiln.core.models.build import (
    BuildLock,
    BuildPhase,
    BuildPlan,
    BuildReason,
    ContextFile,
    EnvironmentBuildManifest,
    EnvironmentBuildSpec,
    EnvironmentBuildStatus,
    ParentImage,
)
from envkiln.core.models.context import BuildContext, ConfigMapContext, GitContext, TarballContext
from envkiln.core.models.environment import (
    BaseImageUpdates,
    Environment,
    EnvironmentKind,
    EnvironmentSpec,
    InferenceConfig,
)
from envkiln.core.models.lines import (
    MAX_LINE,
    MAX_PACKAGES,
    MAX_STEP_LENGTH,
    MAX_STEPS,
    ChannelLine,
    CondaDependency,
    DockerStep,
    Line,
    PipLine,
    check_docker_step,
    check_pip_requirement,
)
from envkiln.core.models.packages import CondaPipBlock, CondaSpec
from envkiln.core.models.status import (
    Condition,
    ConditionStatus,
    EnvironmentStatus,
    LockSummary,
    Phase,
    VersionRecord,
)
from envkiln.core.models.yamltext import StrictLoader
from envkiln.core.names import DEFAULT_CURATED_NAMESPACE, RESERVED_NAME_PREFIXES

__all__ = [
    "DEFAULT_CURATED_NAMESPACE",
    "MAX_LINE",
    "MAX_PACKAGES",
    "MAX_STEPS",
    "MAX_STEP_LENGTH",
    "RESERVED_NAME_PREFIXES",
    "BaseImageUpdates",
    "BuildContext",
    "BuildLock",
    "BuildPhase",
    "BuildPlan",
    "BuildReason",
    "ChannelLine",
    "CondaDependency",
    "CondaPipBlock",
    "CondaSpec",
    "Condition",
    "ConditionStatus",
    "ConfigMapContext",
    "ContextFile",
    "DockerStep",
    "Environment",
    "EnvironmentBuildManifest",
    "EnvironmentBuildSpec",
    "EnvironmentBuildStatus",
    "EnvironmentKind",
    "EnvironmentSpec",
    "EnvironmentStatus",
    "GitContext",
    "InferenceConfig",
    "KubeModel",
    "Line",
    "LockSummary",
    "ObjectMeta",
    "ParentImage",
    "Phase",
    "PipLine",
    "StatusModel",
    "StrictLoader",
    "TarballContext",
    "VersionRecord",
    "check_docker_step",
    "check_pip_requirement",
]
