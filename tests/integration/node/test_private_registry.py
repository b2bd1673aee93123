"""A private registry on the real node (issue #23): docker-registry with htpasswd authentication
behind TLS from a CA the harness makes, which no anonymous or unverified client can use.

The operator is set up as a platform team would on a cloud, with nothing static that can push:
- its lookups (the base's digest, whether the image exists) use a credential helper named in the
  registry Secret's `credHelpers`;
- the push container runs the same helper from the push image (the builder image plus the helper,
  as an admin would supply it) with a projected service-account token (ENVKILN_BUILD_PUSH_TOKEN_AUDIENCE):
  the helper exchanges the token at a token service (here the harness's, which asks the API server's
  TokenReview for that audience) for the registry credential — the workload-identity pattern;
- the build pulls the private base image with the tenant's own pull Secret, named by its namespace's
  `default` service account (ENVKILN_BUILD_PULL_SERVICE_ACCOUNT), through the pull-auth container;
- the registry CA (ENVKILN_REGISTRY_CA_FILE) is trusted by the operator, the build and push
  containers, and the node's containerd trusts it for workload pulls;
- a training pod pulls the built image with its namespace's pull secret; without it the kubelet
  is refused."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness.buildah import push_archive
from harness.certs import make_ca, sign
from harness.images import builder_image_archive, with_files
from harness.ports import free_port
from harness.registry import Registry
from node_helpers import wait_job_complete
from operator_helpers import Envs, environment, wait_for

AUDIENCE = "envkiln-test-registry"
USER = "envkiln-ci"
HELPER = "envkiln-test"

# The credential helper an administrator would put in the push image (for ECR: docker-credential-ecr-login).
# It reads the workload's token and exchanges it for a registry credential at $EXCHANGE_ADDRESS (bash,
# /dev/tcp: the builder image has no curl).
HELPER_SCRIPT = r"""#!/bin/bash
set -eu
[ "${1:-}" = get ] || exit 1
read -r server || [ -n "$server" ]   # the server name comes without a newline
token=$(cat "$WORKLOAD_IDENTITY_TOKEN_FILE")
exec 3<>"/dev/tcp/${EXCHANGE_ADDRESS%:*}/${EXCHANGE_ADDRESS##*:}"
printf 'POST /exchange HTTP/1.0\r\nHost: %s\r\nX-Registry: %s\r\nContent-Length: %s\r\n\r\n%s' \
  "$EXCHANGE_ADDRESS" "$server" "${#token}" "$token" >&3
response=$(cat <&3)
status=$(printf '%s\n' "$response" | head -n1 | cut -d' ' -f2)
if [ "$status" != 200 ]; then echo "the token service refused the token ($status)" >&2; exit 1; fi
printf '%s\n' "$response" | sed '1,/^\r*$/d'
"""


class TokenService:
    """Exchanges a service-account token with the right audience (asked of the API server's TokenReview)
    for the registry's credential; remembers who asked."""

    def __init__(self, api: client.ApiClient, address: str, password: str):
        self.authn = client.AuthenticationV1Api(api)
        self.password = password
        self.exchanges: list[tuple[str, str]] = []  # (service account user, registry)
        self.refusals = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                token = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                review = service.authn.create_token_review({"spec": {"token": token, "audiences": [AUDIENCE]}})
                user = review.status.user.username if review.status.authenticated else None
                if user is None or not user.startswith("system:serviceaccount:"):
                    service.refusals += 1
                    self.send_response(403)
                    self.end_headers()
                    return
                registry = self.headers.get("X-Registry", "")
                service.exchanges.append((user, registry))
                body = json.dumps({"ServerURL": registry, "Username": USER, "Secret": service.password}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((address, free_port()), Handler)
        self.address = f"{address}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def password() -> str:
    return f"pw-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def private_registry(cluster: Any, tmp_path_factory: pytest.TempPathFactory, password: str) -> Iterator[Registry]:
    directory = tmp_path_factory.mktemp("private-registry")
    ca, ca_key = make_ca(directory, "registry-ca", "/CN=envkiln-test-registry-ca")
    cert, key = sign(directory, "registry", "/CN=envkiln-test-registry", ca, ca_key, san=f"IP:{cluster.address}",
                     usage="serverAuth")
    with Registry(directory / "registry", address=cluster.address, tls=(ca, cert, key),
                  users={USER: password}) as registry:
        cluster.node.trust_registry(registry.host, ca)
        yield registry


@pytest.fixture(scope="module")
def token_service(node_api: client.ApiClient, cluster: Any, password: str) -> Iterator[TokenService]:
    service = TokenService(node_api, cluster.address, password)
    yield service
    service.close()


@pytest.fixture(scope="module")
def helper_image(node_registry_host: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The push image an administrator would choose: the builder image plus the credential helper."""
    archive = with_files(builder_image_archive(), tmp_path_factory.mktemp("helper-image") / "image.oci.tar",
                         {f"/usr/local/bin/docker-credential-{HELPER}": (HELPER_SCRIPT.encode(), 0o755)})
    digest = push_archive(archive, f"{node_registry_host}/envkiln/builder-with-helper:test")
    return f"{node_registry_host}/envkiln/builder-with-helper@{digest}"


def copy_base(source: str, registry: Registry, password: str) -> str:
    """The base image, by tag, in the private registry (skopeo with the credential and the CA)."""
    target = f"{registry.host}/envkiln-test/private-base:bookworm"
    assert registry.tls is not None
    certs = registry.tls[0].parent / "ca-dir"
    certs.mkdir(exist_ok=True)
    (certs / "ca.crt").write_bytes(registry.tls[0].read_bytes())
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"--dest-cert-dir={certs}",
                    f"--dest-creds={USER}:{password}", f"docker://{source}", f"docker://{target}"],
                   check=True, capture_output=True, timeout=300)
    return target


def dockerconfig(document: dict[str, Any]) -> dict[str, str]:
    return {".dockerconfigjson": base64.b64encode(json.dumps(document).encode()).decode()}


def operator_token(core: client.CoreV1Api, namespace: str, directory: Path) -> Path:
    """What the chart would project into the operator pod: a token of its service account, for AUDIENCE."""
    with contextlib.suppress(client.ApiException):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "envkiln-operator"}})
    request = core.create_namespaced_service_account_token(
        "envkiln-operator", namespace, {"spec": {"audiences": [AUDIENCE], "expirationSeconds": 3600}})
    path = directory / "token"
    path.write_text(request.status.token)
    return path


def test_a_private_registry_behind_tls_with_workload_identity_and_tenant_pull_secrets(
        node_api: client.ApiClient, node_namespace: str, operator_namespace: str, node_base_image: str,
        private_registry: Registry, token_service: TokenService, helper_image: str, buildah_operator: Any,
        password: str, tmp_path: Path) -> None:
    host = private_registry.host
    core = client.CoreV1Api(node_api)
    base = copy_base(node_base_image, private_registry, password)

    # The tenant's own pull credential, named by its namespace's default service account.
    core.create_namespaced_secret(node_namespace, {
        "metadata": {"name": "tenant-pull"}, "type": "kubernetes.io/dockerconfigjson",
        "data": dockerconfig({"auths": {host: {"auth": base64.b64encode(f"{USER}:{password}".encode()).decode()}}})})
    wait_for(lambda: core.read_namespaced_service_account("default", node_namespace), timeout=30,
             what="the namespace's default service account")
    core.patch_namespaced_service_account("default", node_namespace, {"imagePullSecrets": [{"name": "tenant-pull"}]})

    # The operator's registry Secret and the namespace's push identity name only the helper: nothing
    # static that can push exists anywhere.
    for name in ("envkiln-registry", f"envkiln-push-{node_namespace}"):
        core.create_namespaced_secret(operator_namespace, {
            "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
            "data": dockerconfig({"auths": {}, "credHelpers": {host: HELPER}})})
    helper_dir = tmp_path / "bin"
    helper_dir.mkdir()
    (helper_dir / f"docker-credential-{HELPER}").write_text(HELPER_SCRIPT)
    (helper_dir / f"docker-credential-{HELPER}").chmod(0o755)
    token = operator_token(core, operator_namespace, tmp_path)

    assert private_registry.tls is not None
    operator = buildah_operator(
        node_namespace, registry_host=f"{host}/envkiln", insecure_registry="false",
        operator_namespace=operator_namespace, registry_secret="envkiln-registry",
        registry_ca_file=str(private_registry.tls[0]), base_image_registries=host,
        buildah_push_image=helper_image, build_push_token_audience=AUDIENCE,
        build_push_env=json.dumps({"EXCHANGE_ADDRESS": token_service.address}),
        process_env={"PATH": f"{helper_dir}:{os.environ['PATH']}", "WORKLOAD_IDENTITY_TOKEN_FILE": str(token),
                     "EXCHANGE_ADDRESS": token_service.address})
    envs = Envs(node_api, node_namespace)
    envs.create(environment("private", image=base, dockerSteps=[
        f"ENV ENVKILN_TEST_DEFINITION={uuid.uuid4().hex[:12]}",
        # RUN steps see the CA bundle (e.g. for PIP_CERT) without the image keeping it.
        "RUN test -s /etc/envkiln/ca/ca.crt && echo private > /private.txt"]))
    status = envs.wait_phase("private", "Ready", timeout=420, diagnostics=operator.log)

    # The image is in the private registry, under the digest the Environment records.
    assert status["image"].startswith(f"{host}/envkiln/")
    repository = status["image"].split("/", 1)[1].rsplit(":", 1)[0]
    _, digest = private_registry.manifest(repository, status["imageDigest"])
    assert digest == status["imageDigest"]

    # Who got the registry credential: the operator's service account (its lookups) and the build
    # pod's (the push container's projected token); nobody without a valid token for the audience.
    users = {user for user, _ in token_service.exchanges}
    assert f"system:serviceaccount:{operator_namespace}:envkiln-operator" in users, token_service.exchanges
    assert f"system:serviceaccount:{node_namespace}:default" in users, token_service.exchanges
    assert {registry for _, registry in token_service.exchanges} == {host}

    # The build pod: the tenant's Secret reached pull-auth only, the token the push container only.
    [job] = envs.jobs()
    [pod] = core.list_namespaced_pod(node_namespace, label_selector=f"job-name={job.metadata.name}").items
    every = [*pod.spec.init_containers, *pod.spec.containers]
    holders = {c.name: {m.name for m in c.volume_mounts or []} for c in every}
    assert [name for name, mounts in holders.items() if "pull-tenant-0" in mounts] == ["pull-auth"]
    assert [name for name, mounts in holders.items() if "push-token" in mounts] == ["push"]
    pull_log = core.read_namespaced_pod_log(pod.metadata.name, node_namespace, container="pull-auth")
    assert "pull credentials from /pull-sources/pull-tenant-0" in pull_log
    assert password not in pull_log and password not in operator.log()
    assert password not in json.dumps(envs.get("private")) and password not in json.dumps(envs.builds())

    # A workload pulls the built image from the private registry with its namespace's pull secret.
    image = f"{status['image'].rsplit(':', 1)[0]}@{status['imageDigest']}"
    batch = client.BatchV1Api(node_api)

    def workload(name: str, secrets: list[str], policy: str = "IfNotPresent") -> dict[str, Any]:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {
            "backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "automountServiceAccountToken": False,
                "serviceAccountName": "nobody", "imagePullSecrets": [{"name": s} for s in secrets],
                "containers": [{"name": "trainer", "image": image, "imagePullPolicy": policy,
                                "command": ["cat", "/private.txt"]}]}}}}

    core.create_namespaced_service_account(node_namespace, {"metadata": {"name": "nobody"}})
    batch.create_namespaced_job(node_namespace, workload("with-secret", ["tenant-pull"]))
    wait_job_complete(batch, node_namespace, "with-secret", timeout=120, diagnostics=operator.log)
    [trainer] = core.list_namespaced_pod(node_namespace, label_selector="job-name=with-secret").items
    assert core.read_namespaced_pod_log(trainer.metadata.name, node_namespace).strip() == "private"

    # Without the pull secret the kubelet is refused: the registry needs the credential (Always: the node
    # holds the image now, and would otherwise not ask the registry).
    batch.create_namespaced_job(node_namespace, workload("without-secret", [], policy="Always"))

    def refused() -> str | None:
        for pod in core.list_namespaced_pod(node_namespace, label_selector="job-name=without-secret").items:
            for status in pod.status.container_statuses or []:
                waiting = status.state.waiting if status.state else None
                if waiting is not None and waiting.reason in ("ErrImagePull", "ImagePullBackOff"):
                    return waiting.message or waiting.reason
        return None

    message = wait_for(refused, timeout=90, what="the pull without a secret refused")
    assert "401" in message or "unauthorized" in message.lower() or "authorization" in message.lower(), message
