"""Operator settings, read from ENVKILN_* environment variables and validated at start."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from envkiln.core.definition import DEFAULT_IMAGE_TEMPLATE, envkiln_image_namespace, image_name, image_repository
from envkiln.core.errors import describe
from envkiln.core.models import DEFAULT_CURATED_NAMESPACE
from envkiln.core.models.hosts import DEFAULT_TOKEN_REALMS, parse_host_entry, parse_realm_entry
from envkiln.core.placement import BuildPlacement, effective_placement
from envkiln.core.render import DEFAULT_MICROMAMBA_IMAGE, DEFAULT_UV_IMAGE, RenderSettings
from envkiln.core.trust import DEFAULT_KEY_ID, Signer, SigningKeyError, parse_previous_keys

# The maintained Kaniko fork (GoogleContainerTools/kaniko was archived in June 2025).
DEFAULT_KANIKO_IMAGE = "ghcr.io/osscontainertools/kaniko:v1.28.0"
DEFAULT_BUILDAH_IMAGE = "quay.io/buildah/stable:v1.41.5"
DEFAULT_SKOPEO_IMAGE = "quay.io/skopeo/stable:v1.20.0"
PREFIX = "ENVKILN_"
# Read by the development harness (tests/harness), not by the operator.
DEV_TOOL_VARIABLES = {"cache", "debian_mirror", "keep_testdirs", "node_kube_proxy"}
# Settings that are gone, and what to do instead: refused at start when they ask for what is gone
# (set to their old default, they change nothing and are accepted).
REMOVED_SETTINGS = {
    "shared_push_credential": "removed: the operator's own credential (ENVKILN_REGISTRY_SECRET) is never copied into "
    "a tenant's namespace, where its editors could read it and push anywhere, curated images included. Give "
    "each namespace its own push identity instead, a dockerconfigjson Secret named by ENVKILN_PUSH_SECRET_TEMPLATE "
    "(default envkiln-push-{namespace}) in the operator namespace that can push only under that namespace's "
    "path (docs/security.md), and unset this variable",
    "uv_version": "removed: builds no longer `pip install uv`; uv comes from a tool image, ENVKILN_UV_IMAGE (e.g. "
    "ghcr.io/astral-sh/uv:0.9.18, pinned by digest), or set ENVKILN_UV_IMAGE=\"\" to install with pip. Unset "
    "ENVKILN_UV_VERSION",
}


class SettingsError(ValueError):
    pass


# Settings given as JSON (the chart writes them with toJson); ENVKILN_BUILD_NODE_SELECTOR also as key=value,...
JSON_SETTINGS = {"build_resources", "build_node_selector", "build_tolerations", "build_affinity", "build_env",
                 "build_namespaces", "build_push_env"}
# Settings given as names separated by commas or spaces.
LIST_SETTINGS = {"namespaces", "kaniko_extra_args", "webhook_hosts", "base_image_registries", "allowed_private_hosts",
                 "registry_token_realms", "build_pull_secrets", "build_pull_credentials"}


def _json_setting(key: str, raw: str, key_values: bool) -> object:
    """The value of a JSON setting; "" is unset. Errors never quote the value (it may hold credentials)."""
    if not raw.strip():
        return None if key == PREFIX + "BUILD_AFFINITY" else ({} if not key.endswith("TOLERATIONS") else [])
    if key_values and not raw.lstrip().startswith("{"):
        pairs = [part.strip() for part in raw.split(",") if part.strip()]
        if not all("=" in pair for pair in pairs):
            raise SettingsError(f"{key}: give a JSON object or key=value pairs separated by commas")
        return dict(pair.split("=", 1) for pair in pairs)
    try:
        return json.loads(raw)
    except ValueError as error:
        raise SettingsError(f"{key}: not valid JSON (line {getattr(error, 'lineno', '?')}, column "
                            f"{getattr(error, 'colno', '?')}); the chart writes it from values with toJson") from None


class OperatorSettings(BaseModel):
    """Every setting has a default that works for a local development cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: str = Field(default="localhost:5000", description="Registry host[:port][/path] builds push to.")
    pull_registry: str | None = Field(
        default=None, description="The same registry as kubelets reach it (default: registry)."
    )
    registry_secret: str | None = Field(
        default=None, description="dockerconfigjson Secret (operator namespace) with registry credentials."
    )
    insecure_registry: bool = Field(default=False, description="Plain HTTP / unverified TLS to the registry.")
    push_secret_template: str = Field(
        default="envkiln-push-{namespace}",
        description="dockerconfigjson Secret (operator namespace) with the push identity of one namespace; "
        "{namespace} is the namespace that builds.",
    )
    signing_key: SecretStr | None = Field(
        default=None, description="Key that signs the operator's EnvironmentBuilds and records (default: the "
        "Secret envkiln-signing-key in the operator namespace, created when missing).",
    )
    signing_key_id: str | None = Field(
        default=None, description="Key id of ENVKILN_SIGNING_KEY, written into every signature (default: key).")
    previous_signing_keys: SecretStr | None = Field(
        default=None, description="Keys that signed before a rotation and still verify, with ENVKILN_SIGNING_KEY: "
        "ID=KEY entries separated by commas or spaces (with the Secret, its other entries are the previous keys).",
    )
    image_template: str = DEFAULT_IMAGE_TEMPLATE
    builder: Literal["kaniko", "buildah", "local"] = Field(
        default="kaniko", description="kaniko or buildah (a Job per build in the cluster), or local (buildah on the "
        "operator's host, for development)."
    )
    buildah_image: str = Field(default=DEFAULT_BUILDAH_IMAGE, description="Image of the buildah build container.")
    buildah_push_image: str = Field(
        default=DEFAULT_SKOPEO_IMAGE, description="Image of the push container (skopeo; runs as non-root)."
    )
    buildah_seccomp_profile: str = Field(
        default="envkiln/buildah.json",
        description="Localhost seccomp profile of the buildah build container, relative to the kubelet's seccomp dir.",
    )
    buildah_storage_driver: Literal["vfs", "overlay"] = Field(
        default="vfs", description="Storage driver of the buildah build container: vfs copies the root filesystem "
        "for every layer it unpacks and every stage; overlay does not. Neither needs more than the build "
        "container's privileges: without CAP_SYS_ADMIN buildah runs rootless, in a user namespace, where a "
        "kernel of 5.13 or later mounts overlay; where overlay cannot be used, the build says so in its log and "
        "uses vfs (docs/benchmarks.md has what each costs).",
    )
    build_on_earlier_images: bool = Field(
        default=False, description="true: in-cluster buildah builds of a pip-only definition start from the image of "
        "an earlier build of the same namespace that has all but some of its pip requirements (the same base, steps "
        "and tools), and install only the missing ones: one small layer instead of the whole environment. A "
        "requirement the earlier image already satisfies keeps its installed version, as a layer cache would "
        "(pin versions, or spec.lock, for exact ones). Off by default: the build pod pulls the whole earlier image, "
        "which on a slow disk costs more than building from the base (docs/benchmarks.md, run 7).",
    )
    local_storage_root: str | None = Field(
        default=None, description="buildah storage directory of the local builder (default: buildah's own)."
    )
    kaniko_image: str = DEFAULT_KANIKO_IMAGE
    kaniko_extra_args: list[str] = Field(default_factory=list)
    build_cpu_request: str = "500m"
    build_cpu_limit: str = "2"
    build_memory_request: str = "1Gi"
    build_memory_limit: str = "8Gi"
    build_ephemeral_storage_request: str = "1Gi"
    build_ephemeral_storage_limit: str = "20Gi"
    build_resources: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="JSON {requests: {...}, limits: {...}} of the build container, over the "
        "ENVKILN_BUILD_*_REQUEST/_LIMIT values (any resource, e.g. nvidia.com/gpu).")
    build_node_selector: dict[str, str] = Field(
        default_factory=dict, description="nodeSelector of build pods: JSON, or key=value pairs separated by commas.")
    build_tolerations: list[dict[str, object]] = Field(
        default_factory=list, description="tolerations of build pods (JSON list).")
    build_affinity: dict[str, object] | None = Field(default=None, description="affinity of build pods (JSON).")
    build_priority_class_name: str | None = Field(default=None, description="priorityClassName of build pods.")
    build_runtime_class_name: str | None = Field(default=None, description="runtimeClassName of build pods.")
    build_env: dict[str, str] = Field(
        default_factory=dict, description="JSON object of environment variables of the build (proxies, package "
        "indexes: HTTP_PROXY, NO_PROXY, PIP_INDEX_URL, CONDA_CHANNEL_ALIAS...): the build container gets them, its "
        "RUN steps the proxies, PIP_* and CONDA_*/MAMBA_* ones; never the image, the definition hash or the "
        "EnvironmentBuild (docs/registries.md).")
    build_pull_secrets: list[str] = Field(
        default_factory=list, description="imagePullSecrets of build pods (Secrets in the build's namespace), for "
        "the kubelet pulling the builder images.")
    build_pull_credentials: list[str] = Field(
        default_factory=list, description="dockerconfigjson Secrets in the operator namespace whose credentials "
        "builds use to pull base images (and micromamba, and any FROM) from private registries; the first Secret "
        "naming a registry wins. Copied for one build Job into a Secret it owns, mounted only into the `pull-auth` "
        "init container, which hands the build container one merged auth file (readable by RUN steps: give "
        "read-only credentials; docs/registries.md).")
    build_pull_service_account: str = Field(
        default="default", description="ServiceAccount of each build's namespace whose imagePullSecrets the build "
        "also pulls base images with (a tenant's own registry credentials); \"\" turns it off.")
    build_push_service_account: str | None = Field(
        default=None, description="ServiceAccount (in each build's namespace) that build pods run as, for a cloud's "
        "workload identity to give the `push` container a registry token (EKS IRSA, Azure workload identity); the "
        "other containers are excluded from the cloud's token injection (docs/registries.md).")
    build_push_token_audience: str | None = Field(
        default=None, description="When set, the `push` container alone gets a projected service-account token with "
        "this audience at /var/run/secrets/envkiln/push-token/token (WORKLOAD_IDENTITY_TOKEN_FILE), for a "
        "credential helper that exchanges it for a registry token.")
    build_push_env: dict[str, str] = Field(
        default_factory=dict, description="JSON object of environment variables of the `push` container only (a "
        "credential helper's settings: AWS_REGION, AWS_ROLE_ARN, AZURE_CLIENT_ID...).")
    registry_ca_file: str | None = Field(
        default=None, description="PEM file of CA certificates trusted, besides the system's, for registries (and "
        "git remotes) by the operator, and by the build, pull-auth and push containers (the chart mounts it from a "
        "ConfigMap; read at start).")
    build_namespaces: dict[str, BuildPlacement] = Field(
        default_factory=dict, description="Per-namespace overrides of the build pod settings above: JSON "
        "{namespace: {nodeSelector, tolerations, affinity, priorityClassName, runtimeClassName, env, pullSecrets, "
        "pullCredentials, resources}} (docs/registries.md says how they merge).")
    build_deadline_seconds: int = Field(default=3600, ge=60)
    build_ttl_seconds: int = Field(default=86400, ge=0)
    build_retry_limit: int = Field(default=2, ge=0, le=20, description="Retries after the first failed attempt.")
    build_retry_backoff_seconds: int = Field(default=30, ge=0)
    max_concurrent_builds: int = Field(default=4, ge=1)
    max_concurrent_builds_per_namespace: int = Field(
        default=2, ge=1, description="Builds one namespace may run at once (fairness across namespaces).")
    build_history_limit: int = Field(
        default=5, ge=1, description="Finished EnvironmentBuilds kept per Environment (the newest), besides those "
        "its version history points to and the one it follows; older ones are deleted.")
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch (empty: all).")
    curated_namespace: str = DEFAULT_CURATED_NAMESPACE
    operator_namespace: str = "envkiln-system"
    micromamba_image: str = Field(
        default=DEFAULT_MICROMAMBA_IMAGE, description="Image micromamba comes from (its /bin/micromamba) for conda "
        "environments; pin it by digest.")
    uv_image: str = Field(
        default=DEFAULT_UV_IMAGE, description="Tool image uv comes from (its /uv, e.g. ghcr.io/astral-sh/uv) for pip "
        "installs; pin it by digest. \"\": builds install with pip instead.")
    registry_timeout_seconds: float = Field(default=10.0, gt=0)
    registry_retry_seconds: int = Field(default=15, ge=1, description="Retry delay while the registry is down.")
    cache_ttl_seconds: float = Field(default=30.0, ge=0, description="How long a found image is remembered.")
    build_sync_seconds: float = Field(
        default=10.0, gt=0, description="How often the periodic resync checks unfinished builds.")
    env_sync_seconds: float = Field(
        default=30.0, gt=0, description="How often the periodic resync checks unsettled Environments.")
    base_check_seconds: float = Field(
        default=21600.0, gt=0, description="How often each distinct base image in use is checked for a new digest "
        "(one registry HEAD per reference, however many Environments use it; spec.baseImageUpdates).")
    base_image_registries: list[str] = Field(
        default_factory=list, description="Registries whose base images get their digest resolved, pinned and "
        "watched (empty: every registry). Base images elsewhere are built from the tag as written.")
    git_ref_ttl_seconds: float = Field(
        default=60.0, ge=0, description="How long a git context's branch or tag stays resolved to the same commit "
        "before it is asked again (and how often Environments following a branch are checked for new commits).")
    git_timeout_seconds: float = Field(default=10.0, gt=0, description="Deadline of one git ref query.")
    git_max_bytes: int = Field(
        default=1024 * 1024, ge=4096, description="What one git ref query may read in all (a larger answer is cut "
        "off and reported).")
    allowed_private_hosts: list[str] = Field(
        default_factory=list, description="Hosts a namespace may name (git remotes, registries of its images) "
        "although they are or resolve to loopback, link-local or cluster-internal addresses: addresses, CIDR "
        "blocks, host names or *.domain (docs/security.md). The operator's own registries need no entry.")
    registry_token_realms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TOKEN_REALMS), description="registry=https://token-host pairs: "
        "registries whose token service lives on another origin (any other realm must be on the registry's own "
        "origin).")
    per_host_concurrency: int = Field(
        default=4, ge=1, description="Registry lookups and git queries one namespace-named host may have in flight "
        "at once; more fail at once for that host (and are retried), so a slow host cannot take every slot.")
    workers: int = Field(default=20, ge=1, description="Kopf handler threads (and API connections, plus 4).")
    worker_limit: int = Field(
        default=40, ge=1, description="Objects whose events are processed at once (Kopf's per-object workers); "
        "the others wait their turn. Bounds memory when thousands of objects change at once or are listed at start.")
    worker_idle_seconds: float = Field(
        default=0.05, gt=0, description="How long a per-object worker waits for its object's next event before it "
        "exits and frees its place (Kopf's queueing idle timeout).")
    watch_timeout_seconds: int = Field(default=300, ge=1, description="Server-side watch timeout.")
    list_chunk_size: int = Field(
        default=500, ge=0, description="Objects per page when the operator lists a kind at start (Kopf's "
        "chunked listing): a start with thousands present never holds the whole list as one response. 0: one "
        "response.")
    liveness_endpoint: str | None = Field(default=None, description="e.g. http://0.0.0.0:8080/healthz")
    metrics_port: int = Field(default=8000, ge=0, le=65535, description="Port of the Prometheus metrics (/metrics, "
                              "docs/metrics.md) on all addresses; 0 turns them off.")
    peering_lifetime_seconds: int = Field(default=60, ge=1, description="How long a silent peer counts as alive.")
    webhook_enabled: bool = Field(default=False, description="Serve the pod admission webhook.")
    webhook_listen_address: str = "0.0.0.0"
    webhook_port: int = Field(default=9443, ge=1, le=65535)
    webhook_service: str = Field(default="envkiln-webhook", description="Service in front of the webhook.")
    webhook_hosts: list[str] = Field(default_factory=list, description="Certificate names (default: the Service's).")
    webhook_configuration: str | None = Field(
        default=None, description="MutatingWebhookConfiguration whose caBundle the operator keeps current."
    )
    webhook_cert_secret: str = "envkiln-webhook-tls"
    webhook_workers: int = Field(
        default=8, ge=1, description="Threads that answer admission reviews, apart from the handler threads, so "
        "that no reconcile work (a slow tenant's git or registry call) delays a pod's admission.")
    webhook_answer_seconds: float = Field(
        default=8.0, gt=0, description="Deadline of one admission answer; past it the pod is refused with a message "
        "to retry (below the API server's 10 s webhook timeout, so the answer is envkiln's, not a timeout).")
    anonymous_per_minute: int = Field(
        default=10, ge=1, description="Anonymous Environments (pod inline specs) the operator makes per namespace "
        "per minute; further gated pods wait their turn.")
    resync_item_seconds: float = Field(
        default=30.0, gt=0, description="Time budget of one object in the periodic resync: past it the resync moves "
        "on and does not queue that object again until its call ends.")
    resync_per_namespace: int = Field(
        default=2, ge=1, description="Objects of one namespace the periodic resync works on at once, so that one "
        "tenant's slow objects never hold up another's.")
    namespace_share: int = Field(
        default=10, ge=1, description="Objects of one namespace synced at once across all threads (events and "
        "resync); the rest wait a second and try again, so one tenant's slow calls cannot take every thread.")
    resync_workers: int = Field(
        default=8, ge=1, description="Threads of the periodic resync (apart from the handler threads).")
    webhook_client_ca_file: str | None = Field(
        default=None, description="PEM file of the CA that signs the API server's client certificate for webhooks "
        "(its --admission-control-config-file); when set, callers without such a certificate fail the TLS handshake."
    )
    peering_name: str | None = Field(
        default=None, description="Kopf peering object; when set, peering is mandatory (its CRD must exist)."
    )
    peering_priority: str = Field(default="0", description="An integer, or 'random' (distinct per replica).")

    @field_validator("peering_priority")
    @classmethod
    def _priority(cls, value: str) -> str:
        if value != "random" and not value.lstrip("-").isdigit():
            raise ValueError(f"{value!r} is neither an integer nor 'random'")
        return value

    def resolved_peering_priority(self) -> int:
        # Kopf peering is not leader election: replicas with equal priorities would all act.
        return secrets.randbelow(1_000_000) + 1 if self.peering_priority == "random" else int(self.peering_priority)

    @field_validator("allowed_private_hosts")
    @classmethod
    def _allowed_hosts(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_host_entry(entry)
        return entries

    @field_validator("registry_token_realms")
    @classmethod
    def _token_realms(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_realm_entry(entry)
        return entries

    @field_validator("build_push_env")
    @classmethod
    def _push_env(cls, env: dict[str, str]) -> dict[str, str]:
        return BuildPlacement(env=env).env  # the same name and value rules as the build env

    @field_validator("build_resources")
    @classmethod
    def _build_resources(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        if set(value) - {"requests", "limits"}:
            raise ValueError("give only requests and limits, e.g. {\"limits\": {\"nvidia.com/gpu\": \"1\"}}")
        return value

    @field_validator("registry", "pull_registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = value.strip().rstrip("/")
        if not value or "://" in value or " " in value:
            raise ValueError(f"{value!r} is not a registry host: give host[:port][/path] without a scheme")
        return value

    @model_validator(mode="after")
    def _template(self) -> OperatorSettings:
        try:
            image_repository("0" * 32, self.registry, self.image_template, "namespace")
        except ValueError as error:
            raise ValueError(f"ENVKILN_IMAGE_TEMPLATE: {error}") from None
        try:
            self.push_secret_template.format(namespace="namespace")
        except (KeyError, IndexError, ValueError):
            raise ValueError("ENVKILN_PUSH_SECRET_TEMPLATE: only the field {namespace} may be used") from None
        if self.curated_namespace == self.operator_namespace:
            raise ValueError(f"ENVKILN_CURATED_NAMESPACE: {self.curated_namespace!r} is the operator namespace, which "
                             "holds the signing key and the push identities; give curated environments a namespace "
                             f"of their own (default {DEFAULT_CURATED_NAMESPACE})")
        self.signer_from_settings()
        try:
            self.default_build_placement()
        except ValidationError as error:  # the messages name the field, never a value
            raise ValueError("ENVKILN_BUILD_ENV / ENVKILN_BUILD_RESOURCES: " + "; ".join(describe(error))) from None
        return self

    def signer_from_settings(self) -> Signer | None:
        """The keys of ENVKILN_SIGNING_KEY, _ID and ENVKILN_PREVIOUS_SIGNING_KEYS (None: not set, the
        operator reads the Secret envkiln-signing-key)."""
        if self.signing_key is None:
            if self.signing_key_id is not None or self.previous_signing_keys is not None:
                raise ValueError("ENVKILN_SIGNING_KEY_ID and ENVKILN_PREVIOUS_SIGNING_KEYS go with "
                                 "ENVKILN_SIGNING_KEY; with the Secret envkiln-signing-key, its entries are the keys "
                                 "(docs/security.md)")
            return None
        try:
            previous = parse_previous_keys(self.previous_signing_keys.get_secret_value()
                                           if self.previous_signing_keys is not None else "")
        except SigningKeyError as error:
            raise ValueError(f"ENVKILN_PREVIOUS_SIGNING_KEYS: {error}") from None
        try:
            return Signer(self.signing_key.get_secret_value().encode("utf-8"), self.signing_key_id or DEFAULT_KEY_ID,
                          previous)
        except SigningKeyError as error:
            raise ValueError(f"ENVKILN_SIGNING_KEY: {error}") from None

    def foreign_image_problem(self, image: str | None, namespace: str) -> str | None:
        """Why `image` (spec.image of an Environment in `namespace`) may not be used: it is another
        namespace's envkiln image (a lookup with the operator's credential would tell its digest).
        The curated namespace's images are for everyone. None: it may be used."""
        if image is None:
            owner = None
        else:
            owner = envkiln_image_namespace(image, {self.registry, self.effective_pull_registry}, self.image_template)
        if owner is None or owner in (namespace, self.curated_namespace):
            return None
        return (f"spec.image: {image} is an envkiln image of namespace {owner}; an Environment may use only its own "
                f"namespace's envkiln images (or the curated ones): name the image by its Environment in {owner}, "
                "or define the environment here")

    def push_image(self, definition_hash: str, namespace: str, key: str | None = None) -> str:
        """Where a build of `definition_hash` in `namespace` pushes (repository:tag); the tag is the
        hash, or `key` (names.image_key) for a rebuild on a new base image."""
        if key is None:
            return image_name(definition_hash, self.registry, self.image_template, namespace)
        return f"{image_repository(definition_hash, self.registry, self.image_template, namespace)}:{key}"

    def pull_image(self, definition_hash: str, namespace: str, key: str | None = None) -> str:
        if key is None:
            return image_name(definition_hash, self.effective_pull_registry, self.image_template, namespace)
        repository = image_repository(definition_hash, self.effective_pull_registry, self.image_template, namespace)
        return f"{repository}:{key}"

    def build_placement(self, namespace: str) -> BuildPlacement:
        """The placement and environment of build pods in `namespace` (core.placement merges)."""
        return effective_placement(self.default_build_placement(), self.build_namespaces, namespace)

    def default_build_placement(self) -> BuildPlacement:
        return BuildPlacement(
            node_selector=self.build_node_selector, tolerations=[dict(t) for t in self.build_tolerations],
            affinity=dict(self.build_affinity) if self.build_affinity is not None else None,
            priority_class_name=self.build_priority_class_name, runtime_class_name=self.build_runtime_class_name,
            env=self.build_env, pull_secrets=self.build_pull_secrets, pull_credentials=self.build_pull_credentials,
            resources={
                "requests": {"cpu": self.build_cpu_request, "memory": self.build_memory_request,
                             "ephemeral-storage": self.build_ephemeral_storage_request,
                             **self.build_resources.get("requests", {})},
                "limits": {"cpu": self.build_cpu_limit, "memory": self.build_memory_limit,
                           "ephemeral-storage": self.build_ephemeral_storage_limit,
                           **self.build_resources.get("limits", {})}})

    def resolves_base(self, registry: str) -> bool:
        """Whether base images of `registry` (a resolved host, e.g. docker.io) are resolved to digests."""
        return not self.base_image_registries or registry in self.base_image_registries

    def effective_webhook_hosts(self) -> list[str]:
        if self.webhook_hosts:
            return self.webhook_hosts
        service, namespace = self.webhook_service, self.operator_namespace
        return [f"{service}.{namespace}.svc", service, f"{service}.{namespace}",
                f"{service}.{namespace}.svc.cluster.local"]

    @property
    def effective_pull_registry(self) -> str:
        return self.pull_registry or self.registry

    @property
    def starts_from_earlier_images(self) -> bool:
        """Whether new builds may start from an earlier image of their namespace (only the in-cluster
        buildah builder does)."""
        return self.build_on_earlier_images and self.builder == "buildah"

    def render_settings(self) -> RenderSettings:
        # buildah (in the cluster or local) mounts tools from images for a RUN step; Kaniko cannot.
        return RenderSettings(micromamba_image=self.micromamba_image, uv_image=self.uv_image or None,
                              tool_mounts=self.builder in ("buildah", "local"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        known = set(cls.model_fields)
        for key, raw in environ.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX):].lower()
            if name in DEV_TOOL_VARIABLES:
                continue
            if name in REMOVED_SETTINGS:
                if raw.strip().lower() in ("", "false", "0", "no", "off"):  # what the removed default meant
                    continue
                raise SettingsError(f"{key}: {REMOVED_SETTINGS[name]}")
            if name not in known:
                names = ", ".join(PREFIX + k.upper() for k in sorted(known))
                raise SettingsError(f"{key}: unknown setting (a typo?); known settings: {names}")
            if name in LIST_SETTINGS:
                values[name] = [part for part in raw.replace(",", " ").split() if part]
            elif name in JSON_SETTINGS:
                values[name] = _json_setting(key, raw, name == "build_node_selector")
            else:
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = [p.removeprefix("(document): ") if p.startswith("(document): ")  # names its variable
                        else PREFIX + p.split(":", 1)[0].upper() + ":" + p.split(":", 1)[1] for p in describe(error)]
            raise SettingsError("; ".join(problems)) from None
