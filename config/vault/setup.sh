#!/usr/bin/env bash
# Configures Vault/OpenBao for cubbyhole. Idempotent: safe to run again after any change.
#
# Needs VAULT_ADDR and an admin VAULT_TOKEN in the environment. See README.md in this folder.
#
# Usage: setup.sh [--dev-operator-token-file PATH]
#
# Environment:
#   VAULT_BIN                  CLI to use: bao (default) or vault
#   CUBBYHOLE_ROLE             token role and agent policy name (default cubbyhole-agent)
#   CUBBYHOLE_OPERATOR_POLICY  operator policy and Kubernetes auth role (default cubbyhole-operator)
#   KUBERNETES_HOST            when set, enable and configure the kubernetes auth method
#   KUBERNETES_CA_CERT         optional PEM file with the API server CA
#   CUBBYHOLE_SA_NAME          operator service account (default cubbyhole)
#   CUBBYHOLE_SA_NAMESPACE     its namespace (default cubbyhole-system)
set -euo pipefail

VAULT_BIN="${VAULT_BIN:-bao}"
ROLE="${CUBBYHOLE_ROLE:-cubbyhole-agent}"
OPERATOR_POLICY="${CUBBYHOLE_OPERATOR_POLICY:-cubbyhole-operator}"
SA_NAME="${CUBBYHOLE_SA_NAME:-cubbyhole}"
SA_NAMESPACE="${CUBBYHOLE_SA_NAMESPACE:-cubbyhole-system}"
TOKEN_FILE=""

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dev-operator-token-file)
            [ $# -ge 2 ] || usage
            TOKEN_FILE="$2"
            shift 2
            ;;
        -h | --help) usage ;;
        *)
            echo "setup.sh: unknown argument: $1" >&2
            usage
            ;;
    esac
done

: "${VAULT_ADDR:?VAULT_ADDR must be set}"
: "${VAULT_TOKEN:?VAULT_TOKEN (an admin token) must be set}"
export VAULT_ADDR VAULT_TOKEN

v() { "$VAULT_BIN" "$@"; }
log() { echo "setup.sh: $*" >&2; }

# 1. What agents may do with their token: an example; adapt the paths to your secrets.
log "policy $ROLE (agent example)"
v policy write "$ROLE" - >/dev/null <<POLICY
path "secret/data/agents/*" {
  capabilities = ["read"]
}
POLICY

# 2. The token role the operator mints with: orphan (survives the operator's own token),
#    limited to the agent policy, bounded lifetime.
log "token role $ROLE"
v write "auth/token/roles/$ROLE" \
    allowed_policies="$ROLE" \
    orphan=true \
    renewable=true \
    token_type=service \
    token_explicit_max_ttl=24h >/dev/null

# 3. The operator: mint only through that role and only response-wrapped (min_wrapping_ttl
#    forces wrapping), revoke what it minted, look wraps up. Nothing else.
log "policy $OPERATOR_POLICY"
v policy write "$OPERATOR_POLICY" - >/dev/null <<POLICY
path "auth/token/create/$ROLE" {
  capabilities = ["create", "update"]
  min_wrapping_ttl = "5s"
  max_wrapping_ttl = "1h"
}
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}
path "sys/wrapping/lookup" {
  capabilities = ["update"]
}
POLICY

# 4. Optional: let the operator log in with its Kubernetes service account.
if [ -n "${KUBERNETES_HOST:-}" ]; then
    if ! v auth list -format=json | grep -q '"kubernetes/"'; then
        log "enabling kubernetes auth"
        v auth enable kubernetes >/dev/null
    fi
    log "kubernetes auth config ($KUBERNETES_HOST)"
    config=(kubernetes_host="$KUBERNETES_HOST")
    if [ -n "${KUBERNETES_CA_CERT:-}" ]; then
        config+=(kubernetes_ca_cert="@$KUBERNETES_CA_CERT")
    fi
    v write auth/kubernetes/config "${config[@]}" >/dev/null
    log "kubernetes auth role $OPERATOR_POLICY ($SA_NAMESPACE/$SA_NAME)"
    v write "auth/kubernetes/role/$OPERATOR_POLICY" \
        bound_service_account_names="$SA_NAME" \
        bound_service_account_namespaces="$SA_NAMESPACE" \
        token_policies="$OPERATOR_POLICY" \
        token_ttl=1h >/dev/null
fi

# 5. Optional, development only: a token file for the operator (VaultAuth::TokenFile).
#    The token goes straight into the file; it is never printed.
if [ -n "$TOKEN_FILE" ]; then
    log "operator token -> $TOKEN_FILE"
    tmp="$(dirname -- "$TOKEN_FILE")/.$(basename -- "$TOKEN_FILE").tmp.$$"
    (
        umask 077
        v token create -orphan -no-default-policy -policy="$OPERATOR_POLICY" \
            -ttl=24h -display-name=cubbyhole-operator -field=token >"$tmp"
    ) || {
        rm -f -- "$tmp"
        exit 1
    }
    chmod 0600 -- "$tmp"
    mv -f -- "$tmp" "$TOKEN_FILE"
fi

log "done"
