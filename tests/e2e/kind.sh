#!/usr/bin/env bash
# End to end on a throwaway kind cluster: docs/deploy-kubernetes.md, automated, step for step
# (the same commands and names: the functions gc1024-default-coordinator/-worker, no secret
# created by hand: the operator creates the functions' OpenFaaS secrets from the chart's).
#
# tests/k8s/test_walkthrough.py follows the same page on every `make test`, against stand-ins (kmock's
# API emulator, a gateway emulator, functions as local processes, nats-server and SeaweedFS). What
# only this script covers: the real images (the template's Dockerfile, of-watchdog, the operator
# image, their Python packages), real faas-netes and the gateway (its auth, timeouts, secrets
# API, label copying onto pods), the kubelet (read-only root filesystems, non-root users, probes,
# resource limits, volume mounts of the secret files), cluster networking and DNS (the functions
# reaching nats.fsd, fsd-minio.fsd and the gateway by name), the NATS chart itself (fetched by
# `helm dependency update`), MinIO with its root keys apart and the bucket user its pod creates
# with `mc`, and the operator's RBAC as the API server enforces it.
#
# Needs: a Docker engine, kind, kubectl, helm, faas-cli, network access (OpenFaaS and NATS charts,
# base images, the registry), this repository's venv (`make install`: its Python uploads the model
# folder with the minio package when the aws CLI is absent, and provides `fsd invoke`), and the
# Graph Challenge folder (DATA). It cannot run in CI here: that machine has no Docker engine.
#
# REGISTRY (required, no default): where the two function images are pushed. OpenFaaS CE deploys
# only images it can pull anonymously (faas-netes pkg/handlers/deploy.go and update.go call
# isAnonymous(request.Image): pkg/handlers/validate.go, remote.Head with authn.Anonymous, else 400
# "the Community Edition license agreement only allows public images"), so an image loaded into
# kind is refused: name a registry that serves them to anyone, e.g. a public repository of yours
# (after `docker login`), or for a throwaway run ttl.sh with a random name (anyone who learns the
# name can push over it, and its images expire: within 24 hours). Pushing fsd's code there is
# your choice; this script never picks a registry. The operator image is not deployed through
# faas-netes: it is loaded into kind. (OpenFaaS Standard/Enterprise pulls from private registries
# with an imagePullSecret: docs.openfaas.com/reference/private-registries.)
#
#   REGISTRY=ttl.sh/fsd-$(openssl rand -hex 6) tests/e2e/kind.sh   # create, install, infer, tear down
#   REGISTRY=ghcr.io/you KEEP=1 tests/e2e/kind.sh                  # leave the cluster up afterwards
#
# Environment: REGISTRY (required), CLUSTER (fsd-e2e), DATA (../shared/graphchallenge), KEEP (0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CLUSTER="${CLUSTER:-fsd-e2e}"
DATA="${DATA:-$ROOT/../shared/graphchallenge}"
KEEP="${KEEP:-0}"
# required: see the header (stack.yml names the images ${REGISTRY}/fsd-<function>:latest)
export REGISTRY="${REGISTRY:?set REGISTRY to a registry that serves the function images anonymously, e.g. REGISTRY=ttl.sh/fsd-\$(openssl rand -hex 6) (see the header)}"
COORDINATOR_IMAGE="$REGISTRY/fsd-coordinator:latest"
WORKER_IMAGE="$REGISTRY/fsd-worker:latest"
OPERATOR_IMAGE=fsd.local/fsd-operator:0.1.0
if [[ "$REGISTRY" == fsd.local || "$REGISTRY" == fsd.local/* ]]; then
    echo "REGISTRY=$REGISTRY: no registry serves fsd.local, and OpenFaaS CE refuses images it" \
        "cannot pull anonymously (see the header)" >&2
    exit 2
fi
PIDS=()

log() { printf '\n== %s\n' "$*"; }

cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [[ $status -ne 0 ]]; then
        log "failed (exit $status): operator log and InferenceModels"
        kubectl -n fsd logs deploy/fsd-operator --tail=100 2>/dev/null || true
        kubectl get im -A -o wide 2>/dev/null || true
    fi
    if [[ "$KEEP" != 1 ]]; then
        kind delete cluster --name "$CLUSTER" || true
    fi
    exit "$status"
}
trap cleanup EXIT

port_forward() {  # namespace service local:remote
    kubectl -n "$1" port-forward "svc/$2" "$3" >/dev/null 2>&1 &
    PIDS+=("$!")
    local port="${3%%:*}"
    for _ in $(seq 1 60); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 1
    done
    echo "port-forward to $1/$2 did not come up" >&2
    return 1
}

for tool in docker kind kubectl helm faas-cli; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
[[ -d "$DATA/neuron1024" ]] || { echo "no Graph Challenge folder at $DATA" >&2; exit 2; }

log "1. kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --wait 120s
kubectl cluster-info --context "kind-$CLUSTER"

log "2. OpenFaaS CE"
kubectl apply -f https://raw.githubusercontent.com/openfaas/faas-netes/master/namespaces.yml
helm repo add openfaas https://openfaas.github.io/faas-netes/ --force-update
helm repo update
helm upgrade openfaas --install openfaas/openfaas \
    --namespace openfaas \
    --set functionNamespace=openfaas-fn \
    --set generateBasicAuth=true \
    --set gateway.upstreamTimeout=320s \
    --set gateway.readTimeout=325s \
    --set gateway.writeTimeout=325s \
    --set faasnetes.readTimeout=325s \
    --set faasnetes.writeTimeout=325s
kubectl -n openfaas rollout status deploy/gateway --timeout=300s

log "3. images: faas-cli build and push to $REGISTRY; the operator's: docker build, kind load"
faas-cli build -f stack.yml
faas-cli push -f stack.yml  # $COORDINATOR_IMAGE, $WORKER_IMAGE
docker build -f operator/Dockerfile -t "$OPERATOR_IMAGE" .
kind load docker-image "$OPERATOR_IMAGE" --name "$CLUSTER"
# what CE's faas-netes checks before it deploys them: a manifest answered without credentials (an
# empty DOCKER_CONFIG has none), so a private image fails here, not as a Degraded model later
anonymous="$(mktemp -d)"
for image in "$COORDINATOR_IMAGE" "$WORKER_IMAGE"; do
    DOCKER_CONFIG="$anonymous" docker manifest inspect "$image" >/dev/null || {
        echo "$image cannot be pulled anonymously: OpenFaaS CE would refuse it (make it public)" >&2
        exit 1
    }
done
rmdir "$anonymous"

log "4. helm dependency update charts/fsd (the version locked in Chart.lock, no helm repo add)"
helm dependency update charts/fsd
git diff --exit-code charts/fsd/Chart.lock  # the lock is Helm's own: fetching leaves it as is

log "5. helm install fsd charts/fsd -n fsd --create-namespace (the function images pushed in 3)"
helm install fsd charts/fsd -n fsd --create-namespace \
    --set "functions.coordinator.image=$COORDINATOR_IMAGE" \
    --set "functions.worker.image=$WORKER_IMAGE"
kubectl -n fsd rollout status deploy/fsd-operator --timeout=300s
kubectl -n fsd rollout status statefulset/fsd-nats --timeout=300s
kubectl -n fsd rollout status deploy/fsd-minio --timeout=300s

log "6. upload the Graph Challenge folder to s3://fsd/graphchallenge/"
port_forward fsd fsd-minio 9000:9000
# the bucket user's keys (a MinIO user limited to the bucket fsd, not MinIO's root)
AWS_ACCESS_KEY_ID="$(kubectl -n fsd get secret fsd-credentials \
    -o jsonpath='{.data.fsd-s3-access-key}' | base64 -d)"
AWS_SECRET_ACCESS_KEY="$(kubectl -n fsd get secret fsd-credentials \
    -o jsonpath='{.data.fsd-s3-secret-key}' | base64 -d)"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION=us-east-1
export FSD_S3_ENDPOINT=http://127.0.0.1:9000
export AWS_ENDPOINT_URL=$FSD_S3_ENDPOINT
if command -v aws >/dev/null; then
    aws s3 cp --recursive "$DATA/" s3://fsd/graphchallenge/
    # the user is confined to its bucket: another one is refused
    if aws s3 mb s3://fsd-not-allowed 2>/dev/null; then
        echo "the bucket user could create another bucket" >&2
        exit 1
    fi
else
    "$ROOT/.venv/bin/python" - "$DATA" <<'PY'
import os, pathlib, sys
from minio import Minio

client = Minio("127.0.0.1:9000", access_key=os.environ["AWS_ACCESS_KEY_ID"],
               secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], secure=False, region="us-east-1")
assert client.bucket_exists(bucket_name="fsd"), "MinIO's pod did not create the bucket"
root = pathlib.Path(sys.argv[1])
for path in sorted(p for p in root.rglob("*") if p.is_file()):
    key = f"graphchallenge/{path.relative_to(root).as_posix()}"
    client.fput_object(bucket_name="fsd", object_name=key, file_path=str(path))
    print("uploaded", key)
PY
fi

log "7. kubectl apply -f examples/inferencemodel-gc1024.yaml"
kubectl apply -f examples/inferencemodel-gc1024.yaml
kubectl get im
kubectl wait --for=jsonpath='{.status.phase}'=Ready im/gc1024 --timeout=15m
kubectl get im -o wide
coordinator="$(kubectl get im gc1024 -o jsonpath='{.status.coordinator.function}')"
[[ "$coordinator" == gc1024-default-coordinator ]] || {
    echo "status.coordinator.function is '$coordinator'" >&2
    exit 1
}
# what the operator set on the functions, as faas-netes made the pods
kubectl -n openfaas-fn get pods -l app.kubernetes.io/managed-by=fsd-operator,fsd.dev/role=coordinator \
    -o jsonpath='{.items[0].spec.containers[0].securityContext.readOnlyRootFilesystem}' \
    | grep -qx true || { echo "the coordinator's root filesystem is writable" >&2; exit 1; }

log "8. faas-cli invoke gc1024-default-coordinator < examples/request.json"
port_forward openfaas gateway 8080:8080
export OPENFAAS_URL=http://127.0.0.1:8080
OPENFAAS_PASSWORD="$(kubectl -n openfaas get secret basic-auth \
    -o jsonpath='{.data.basic-auth-password}' | base64 -d)"
export OPENFAAS_PASSWORD
echo "$OPENFAAS_PASSWORD" | faas-cli login --username admin --password-stdin
answer="$(faas-cli invoke gc1024-default-coordinator < examples/request.json)"
echo "$answer"
"$ROOT/.venv/bin/python" -c '
import json, sys
answer = json.loads(sys.argv[1])
assert "error" not in answer, answer
assert answer["model"] == "gc1024" and "categories" in answer, answer
print("answered:", answer["n_categories"], "categories,", answer.get("correct"), "correct")
' "$answer"
log "8b. fsd invoke --inference-model gc1024 --namespace default --request examples/request.json"
PATH="$ROOT/.venv/bin:$PATH" \
    fsd invoke --inference-model gc1024 --namespace default --request examples/request.json

log "9. uninstall"
kubectl delete -f examples/inferencemodel-gc1024.yaml --wait --timeout=5m
helm uninstall fsd -n fsd --wait
kubectl delete namespace fsd --wait
kubectl delete crd inferencemodels.fsd.dev
helm uninstall openfaas -n openfaas
log "done"
