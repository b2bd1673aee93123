"""`make demo`: the whole product on one machine without Docker or a cluster.

Starts kube-apiserver + etcd, a registry, the operator with the local (buildah) builder, applies
examples/demo/environments.yaml and prints their status until they settle.
"""

from __future__ import annotations

import argparse
import sys
import time

import yaml
from kubernetes import client, config

from harness.buildah import base_image_archive, push_archive
from harness.controlplane import REPO_ROOT, ControlPlane, install_crds
from harness.operator import OperatorProcess
from harness.registry import Registry

NAMESPACE = "default"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    args = parser.parse_args(argv)
    print("starting etcd + kube-apiserver (first run builds them from the Go modules)...", flush=True)
    with ControlPlane() as plane, Registry() as registry:
        print(f"  API server {plane.url}\n  registry   {registry.url}\n  KUBECONFIG={plane.kubeconfig}", flush=True)
        api = config.new_client_from_config(str(plane.kubeconfig))
        install_crds(api)
        base = f"{registry.host}/envkiln-demo/python-base:bookworm"
        print(f"pushing the Debian + python3 base image to {base}...", flush=True)
        push_archive(base_image_archive(), base)
        settings = {"ENVKILN_REGISTRY": registry.host, "ENVKILN_INSECURE_REGISTRY": "true",
                    "ENVKILN_BUILDER": "local", "ENVKILN_BUILD_SYNC_SECONDS": "2", "ENVKILN_ENV_SYNC_SECONDS": "5"}
        with OperatorProcess(plane.kubeconfig, settings, namespaces=[NAMESPACE]) as operator:
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
            print(f"\nEnvironmentBuilds: {len(builds['items'])} ({summary})")
            if operator.exited():
                print(operator.log()[-3000:], file=sys.stderr)
                return 1
            if args.keep:
                print(f"\nrunning; try: KUBECONFIG={plane.kubeconfig} kubectl get env   (Ctrl-C stops)")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            return 0 if settled else 1


if __name__ == "__main__":
    sys.exit(main())
