"""`make demo`: the whole product on one machine, without Docker or kind.

Starts a one-node cluster (harness.cluster: kube-apiserver + etcd, controller-manager, scheduler,
kubelet + containerd, kube-proxy, a registry on the node's own network), the operator with the
in-cluster buildah builder (build Jobs on the node, as in a real cluster: `envkiln logs -f` follows
them) and its pod webhook, applies examples/demo/environments.yaml, waits for them to settle and
prints how long each build took, then runs examples/demo/train-job.yaml on the node and prints what
the training container printed. Pods on the node reach no package index of their own: the demo's
pins are downloaded once on this machine and served on the node's address (harness.wheels), given to
builds through the build env. `--keep` (or DEMO_KEEP=1) leaves everything running for kubectl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time

import yaml
from kubernetes import client, config

from harness.buildah import base_image_archive, push_archive
from harness.cluster import Cluster
from harness.controlplane import REPO_ROOT, install_crds
from harness.images import builder_image_archive
from harness.operator import OperatorProcess
from harness.ports import free_port
from harness.pypi import PackageIndex
from harness.webhook import webhook_configuration
from harness.wheels import mirror, uv_tool_archive

NAMESPACE = "default"
WEBHOOK = "envkiln-demo"
PINS = ["six==1.16.0", "tomli==2.0.1"]  # the demo's packages (examples/demo/environments.yaml)
UV_VERSION = "0.9.18"


def build_times(custom: client.CustomObjectsApi) -> str:
    """Each EnvironmentBuild's phase and how long it took (start to completion)."""
    lines = []
    for build in custom.list_namespaced_custom_object("envkiln.dev", "v1alpha1", NAMESPACE,
                                                      "environmentbuilds")["items"]:
        status = build.get("status") or {}
        took = ""
        if status.get("startTime") and status.get("completionTime"):
            start, end = (time.mktime(time.strptime(status[k], "%Y-%m-%dT%H:%M:%SZ"))
                          for k in ("startTime", "completionTime"))
            took = f" in {end - start:.0f} s"
        lines.append(f"  {build['metadata']['name']}: {status.get('phase', '?')}{took} (Job {status.get('job', '-')})")
    return "\n".join(lines)


def table(custom: client.CustomObjectsApi) -> tuple[str, bool]:
    rows = [("NAME", "VERSION", "HASH", "PHASE", "CACHE", "IMAGE REF / MESSAGE")]
    settled = True
    for env in custom.list_namespaced_custom_object("envkiln.dev", "v1alpha1", NAMESPACE, "environments")["items"]:
        status = env.get("status") or {}
        phase = status.get("phase", "")
        settled &= phase in ("Ready", "Failed")
        detail = status.get("imageRef") or (status.get("message") or "")[:100]
        rows.append((env["metadata"]["name"], env["spec"].get("version", ""), status.get("shortHash", ""), phase,
                     str(status.get("cacheHit", "")), detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows)
    return text, settled


def run_training_job(api: client.ApiClient, timeout: float) -> bool:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    job = yaml.safe_load((REPO_ROOT / "examples/demo/train-job.yaml").read_text())
    batch.create_namespaced_job(NAMESPACE, job)
    name = job["metadata"]["name"]
    print(f"\napplied Job {name} (label envkiln.dev/environment=demo-pip); waiting for it to run on the node...",
          flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = batch.read_namespaced_job(name, NAMESPACE)
        states = {c.type for c in current.status.conditions or [] if c.status == "True"}
        if states & {"Complete", "Failed"}:
            pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={name}").items
            for pod in pods:
                print(f"  pod {pod.metadata.name} on node {pod.spec.node_name}, image {pod.spec.containers[0].image}")
                log = core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)
                print("  log: " + log.strip().replace("\n", "\n       "))
            print(f"  Job {name}: {'Complete' if 'Complete' in states else 'Failed'}", flush=True)
            return "Complete" in states
        time.sleep(1)
    print(f"  Job {name} did not finish in {timeout:.0f}s", flush=True)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--keep", action="store_true", default=os.environ.get("DEMO_KEEP", "") not in ("", "0"),
                        help="keep everything running until Ctrl-C (also DEMO_KEEP=1)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # undo the cluster on `kill` too
    print("starting a one-node cluster (the first run builds the binaries from the Go modules)...", flush=True)
    with Cluster() as cluster, contextlib.ExitStack() as stack:
        assert cluster.registry is not None
        registry = cluster.registry
        print(f"  node {cluster.address}, registry {registry.url}\n  KUBECONFIG={cluster.kubeconfig}", flush=True)
        api = config.new_client_from_config(str(cluster.kubeconfig))
        install_crds(api)
        base = f"{registry.host}/envkiln-demo/python-base:bookworm"
        print(f"pushing the Debian + python3 base image to {base}...", flush=True)
        push_archive(base_image_archive(), base)
        print("pushing the builder (buildah + skopeo) and uv tool images...", flush=True)
        builder = f"{registry.host}/envkiln/builder@" + push_archive(builder_image_archive(),
                                                                     f"{registry.host}/envkiln/builder:demo")
        uv = f"{registry.host}/envkiln/uv@" + push_archive(uv_tool_archive(UV_VERSION),
                                                           f"{registry.host}/envkiln/uv:{UV_VERSION}")
        index = stack.enter_context(PackageIndex(host=cluster.address, directory=mirror(PINS)))
        print(f"  package index for builds: {index.url}", flush=True)
        port = free_port()
        admission = client.AdmissionregistrationV1Api(api)
        admission.create_mutating_webhook_configuration(webhook_configuration(WEBHOOK, port))
        settings = {"ENVKILN_REGISTRY": registry.host, "ENVKILN_INSECURE_REGISTRY": "true",
                    "ENVKILN_BUILDER": "buildah", "ENVKILN_BUILDAH_IMAGE": builder,
                    "ENVKILN_BUILDAH_PUSH_IMAGE": builder, "ENVKILN_UV_IMAGE": uv,
                    "ENVKILN_BUILDAH_SECCOMP_PROFILE": str(cluster.seccomp_profile),
                    "ENVKILN_BUILD_CPU_REQUEST": "100m", "ENVKILN_BUILD_MEMORY_REQUEST": "128Mi",
                    "ENVKILN_BUILD_ENV": json.dumps({"PIP_INDEX_URL": index.url, "PIP_TRUSTED_HOST": index.host}),
                    "ENVKILN_BUILD_SYNC_SECONDS": "2", "ENVKILN_ENV_SYNC_SECONDS": "5",
                    "ENVKILN_WEBHOOK_ENABLED": "true", "ENVKILN_WEBHOOK_LISTEN_ADDRESS": "127.0.0.1",
                    "ENVKILN_WEBHOOK_PORT": str(port), "ENVKILN_WEBHOOK_HOSTS": "127.0.0.1",
                    "ENVKILN_WEBHOOK_CONFIGURATION": WEBHOOK, "ENVKILN_OPERATOR_NAMESPACE": NAMESPACE}
        with OperatorProcess(cluster.kubeconfig, settings, namespaces=[NAMESPACE],
                             log_dir=cluster.workdir) as operator:
            text = (REPO_ROOT / "examples/demo/environments.yaml").read_text()
            custom = client.CustomObjectsApi(api)
            for document in yaml.safe_load_all(text.replace("${BASE_IMAGE}", base)):
                custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", NAMESPACE, "environments",
                                                       document)
                print(f"applied Environment {document['metadata']['name']}", flush=True)
            deadline = time.monotonic() + args.timeout
            settled = False
            while time.monotonic() < deadline:
                rendered, settled = table(custom)
                print(f"\n{time.strftime('%H:%M:%S')}\n{rendered}", flush=True)
                if settled or operator.exited():
                    break
                time.sleep(5)
            builds = custom.list_namespaced_custom_object("envkiln.dev", "v1alpha1", NAMESPACE, "environmentbuilds")
            summary = ", ".join(f"{b['metadata']['name']}={(b.get('status') or {}).get('phase', '?')}"
                                for b in builds["items"])
            print(f"\nEnvironmentBuilds: {len(builds['items'])} ({summary})\n{build_times(custom)}")
            print(f"  (follow a build: KUBECONFIG={cluster.kubeconfig} envkiln logs -f demo-pip)")
            if operator.exited() or not settled:
                print(operator.log()[-3000:], file=sys.stderr)
                return 1
            trained = run_training_job(api, timeout=300)
            if args.keep:
                print(f"\nrunning; try: KUBECONFIG={cluster.kubeconfig} kubectl get env,envbuild,jobs,pods"
                      "   (Ctrl-C stops and cleans up)", flush=True)
                try:
                    while not operator.exited():
                        time.sleep(5)
                except KeyboardInterrupt:
                    pass
            admission.delete_mutating_webhook_configuration(WEBHOOK)
            return 0 if trained else 1


if __name__ == "__main__":
    sys.exit(main())
