#!/usr/bin/env bash
# The operator's end-to-end scenario on a real k3s cluster: build and import the images,
# install the chart, apply the one-node example, wait for Ready, connect a client, then check
# that the operator restores a deleted child, that a config change rolls the pod, and that a
# BaseStationBackup writes an encrypted backup of the running station into a volume.
#
# Needs: kubectl pointing at the cluster, helm 3 or 4, podman or docker, age-keygen, and this
# repository with Rust (for the demo client). On the k3s node itself the images are imported with
# `k3s ctr`; elsewhere set IMAGE_REGISTRY to a registry the cluster pulls from.
#
#   deploy/k3s-e2e.sh            # run it
#   KEEP=1 deploy/k3s-e2e.sh     # leave everything installed afterwards
#
# Two sites (deploy/two-sites) are not run here: they need two clusters whose LoadBalancer
# addresses reach each other (two k3s servers on two machines or VMs of one network; one
# cluster would hide what the cross-cluster trust copy and addresses must prove). Their steps
# are in deploy/two-sites/README.md, to run with `--kube-context` for each; the same scenario
# runs without a cluster in tests/it/operator_reconcile.rs (two real stations).
set -euo pipefail
cd "$(dirname "$0")/.."

NS=${NS:-zbase-e2e}
OPERATOR_NS=${OPERATOR_NS:-zbase-system}
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/zbase-operator/Chart.yaml)
REGISTRY=${IMAGE_REGISTRY:-ghcr.io/zbase-dev}
BUILD=$(command -v podman || command -v docker || true)
WORK=$(mktemp -d)

step() { printf '\n== %s\n' "$*"; }
fail() { echo "k3s-e2e: FAILED: $*" >&2; kubectl -n "$NS" get all,basestations -o wide >&2 || true; exit 1; }
cleanup() {
  rm -rf "$WORK"
  if [ -z "${KEEP:-}" ]; then
    kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null
    helm uninstall zbase -n "$OPERATOR_NS" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "images $REGISTRY/zbase-{station,operator}:$VERSION"
if [ -n "$BUILD" ] && [ -z "${SKIP_BUILD:-}" ]; then
  for target in station operator; do
    "$BUILD" build -f deploy/images/Containerfile --target "$target" -t "$REGISTRY/zbase-$target:$VERSION" .
    if [ -n "${IMAGE_REGISTRY:-}" ]; then
      "$BUILD" push "$REGISTRY/zbase-$target:$VERSION"
    elif command -v k3s >/dev/null; then
      "$BUILD" save "$REGISTRY/zbase-$target:$VERSION" | sudo k3s ctr images import -
    fi
  done
fi

step "install the chart"
helm upgrade --install zbase charts/zbase-operator -n "$OPERATOR_NS" --create-namespace \
  -f deploy/one-node-sqlite/values.yaml --set image.pullPolicy=IfNotPresent --wait --timeout 3m
kubectl -n "$OPERATOR_NS" rollout status deploy -l app.kubernetes.io/name=zbase-operator --timeout=2m

step "apply the one-node example"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" apply -f deploy/one-node-sqlite/basestation.yaml
kubectl -n "$NS" wait basestation/home --for=condition=Ready --timeout=5m || fail "the station never became Ready"
kubectl -n "$NS" get basestations

step "connect a client through the Service"
kubectl -n "$NS" get secret home-tls -o jsonpath='{.data.ca\.crt}' | base64 -d > "$WORK/home-ca.pem"
kubectl -n "$NS" port-forward svc/home 18443:443 >/dev/null 2>&1 &
PF=$!
sleep 2
cargo run -q -p zbase-tests --example quickstart -- wss://127.0.0.1:18443 \
  --ca "$WORK/home-ca.pem" --server-name "home.$NS.svc" || { kill $PF; fail "the demo client failed"; }
kill $PF

step "a deleted child is restored"
kubectl -n "$NS" delete service home-internal --wait=true
for _ in $(seq 30); do kubectl -n "$NS" get service home-internal >/dev/null 2>&1 && break; sleep 1; done
kubectl -n "$NS" get service home-internal >/dev/null || fail "the operator did not restore Service home-internal"

step "a config change rolls the pod"
before=$(kubectl -n "$NS" get pod home-0 -o jsonpath='{.metadata.uid}')
kubectl -n "$NS" patch basestation home --type merge -p '{"spec":{"station":{"peersPerResource":512}}}'
kubectl -n "$NS" rollout status statefulset/home --timeout=3m
after=$(kubectl -n "$NS" get pod home-0 -o jsonpath='{.metadata.uid}')
[ "$before" != "$after" ] || fail "the pod was not replaced after a configuration change"
kubectl -n "$NS" wait basestation/home --for=condition=Ready --timeout=3m

step "an on-demand backup of the running station"
age-keygen -o "$WORK/backup-key.txt" 2>/dev/null
recipient=$(age-keygen -y "$WORK/backup-key.txt")
kubectl -n "$NS" apply -f - <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: backups}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
YAML
kubectl -n "$NS" patch basestation home --type merge -p "{\"spec\":{\"backup\":{
  \"schedule\":\"30 2 * * *\",\"recipients\":[\"$recipient\"],
  \"volume\":{\"claimName\":\"backups\",\"subPath\":\"home\"},\"keepLast\":3}}}"
for _ in $(seq 30); do kubectl -n "$NS" get cronjob home-backup >/dev/null 2>&1 && break; sleep 1; done
kubectl -n "$NS" get cronjob home-backup >/dev/null || fail "the operator made no backup CronJob"
kubectl -n "$NS" apply -f - <<YAML
apiVersion: zbase.dev/v1alpha1
kind: BaseStationBackup
metadata: {name: e2e}
spec: {baseStation: home}
YAML
kubectl -n "$NS" wait basestationbackup/e2e --for=jsonpath='{.status.phase}'=Succeeded --timeout=5m \
  || { kubectl -n "$NS" logs job/e2e-backup >&2 || true; fail "the on-demand backup did not succeed"; }
kubectl -n "$NS" get basestationbackup e2e -o jsonpath='{.status.backup}{"\n"}' | grep -q zbase- \
  || fail "the on-demand backup does not say where it was written"

step "passed"
