#!/usr/bin/env bash
# Creates a kind cluster with a local registry, builds and loads the operator image, installs
# the chart and applies an example Environment. Needs docker and kind (not this CI machine).
#
#   scripts/kind-up.sh            # then: kubectl get env -w
#   ENVKILN_E2E=1 make e2e        # the e2e suite against it
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=envkiln
reg_name=envkiln-registry
reg_port=5001

if [ "$(docker inspect -f '{{.State.Running}}' "$reg_name" 2>/dev/null || true)" != 'true' ]; then
  docker run -d --restart=always -p "127.0.0.1:${reg_port}:5000" --network bridge --name "$reg_name" registry:2.8.3
fi
kind get clusters | grep -qx "$cluster" || kind create cluster --config kind-config.yaml

# Kubelets pull localhost:5001/... through the registry container on the kind network.
for node in $(kind get nodes --name "$cluster"); do
  docker exec "$node" mkdir -p "/etc/containerd/certs.d/localhost:${reg_port}"
  printf '[host."http://%s:5000"]\n' "$reg_name" | docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/localhost:${reg_port}/hosts.toml"
done
docker network connect kind "$reg_name" 2>/dev/null || true

# KEP-1755: tell tools where the local registry is.
kubectl apply -f - <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: local-registry-hosting, namespace: kube-public}
data:
  localRegistryHosting.v1: |
    host: "localhost:${reg_port}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
YAML

docker build -f operator/Dockerfile -t envkiln:dev .
kind load docker-image envkiln:dev --name "$cluster"

# Kaniko pushes to the registry container by its name on the kind network; kubelets pull
# through localhost:5001 (push name and pull name differ, see DESIGN.md).
kubectl apply -f crds/ -f charts/envkiln/crds/
helm upgrade --install envkiln charts/envkiln -n envkiln-system --create-namespace \
  --set image.repository=envkiln --set image.tag=dev --set image.pullPolicy=Never \
  --set operator.registry="${reg_name}:5000" --set operator.pullRegistry="localhost:${reg_port}" \
  --set operator.insecureRegistry=true --set curated.enabled=false
kubectl -n envkiln-system rollout status deploy/envkiln --timeout=180s
kubectl apply -f examples/python-pip.yaml
kubectl get env
