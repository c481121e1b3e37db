#!/usr/bin/env bash
# Configures Vault/OpenBao for cubbyhole. Idempotent: safe to run again after any change.
#
# Needs VAULT_ADDR and an admin VAULT_TOKEN in the environment. See README.md in this folder.
#
# Usage: setup.sh [--dev-operator-token-file PATH]
#
# Environment:
#   VAULT_BIN                  CLI to use: bao (default) or vault
#   CUBBYHOLE_ROLE             token role and agent policy name (default cubbyhole-agent);
#                              several roles separated by spaces share one operator policy
#   CUBBYHOLE_OPERATOR_POLICY  operator policy and Kubernetes auth role (default cubbyhole-operator)
#   KUBERNETES_HOST            when set, enable and configure the kubernetes auth method
#   KUBERNETES_CA_CERT         PEM file with the API server CA, when Vault runs outside the
#                              cluster (then TOKEN_REVIEWER_JWT_FILE is needed too)
#   TOKEN_REVIEWER_JWT_FILE    Vault outside the cluster: a file with an API server token of a
#                              service account bound to system:auth-delegator
#                              (config/vault/auth-delegator.yaml), which Vault reviews logins with
#   CUBBYHOLE_VAULT_AUDIENCE   audience the operator's login token must carry (default vault;
#                              the chart mounts a projected token for it)
#   CUBBYHOLE_SA_NAME          operator service account (default cubbyhole)
#   CUBBYHOLE_SA_NAMESPACE     its namespace (default cubbyhole-system)
set -euo pipefail

VAULT_BIN="${VAULT_BIN:-bao}"
ROLES="${CUBBYHOLE_ROLE:-cubbyhole-agent}"
OPERATOR_POLICY="${CUBBYHOLE_OPERATOR_POLICY:-cubbyhole-operator}"
SA_NAME="${CUBBYHOLE_SA_NAME:-cubbyhole}"
SA_NAMESPACE="${CUBBYHOLE_SA_NAMESPACE:-cubbyhole-system}"
VAULT_AUDIENCE="${CUBBYHOLE_VAULT_AUDIENCE:-vault}"
TOKEN_FILE=""

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit "${1:-2}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dev-operator-token-file)
            [ $# -ge 2 ] || usage
            TOKEN_FILE="$2"
            shift 2
            ;;
        -h | --help) usage 0 ;;
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

for role in $ROLES; do
    if ! [[ "$role" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
        echo "setup.sh: invalid role name: $role" >&2
        exit 2
    fi
done

# 1. What agents may do with their token: an example; adapt the paths to your secrets.
# 2. The token role the operator mints with: orphan (survives the operator's own token),
#    limited to the agent policy, bounded lifetime.
for role in $ROLES; do
    log "policy $role (agent example)"
    v policy write "$role" - >/dev/null <<POLICY
path "secret/data/agents/*" {
  capabilities = ["read"]
}
POLICY
    log "token role $role"
    v write "auth/token/roles/$role" \
        allowed_policies="$role" \
        orphan=true \
        renewable=true \
        token_type=service \
        token_explicit_max_ttl=24h >/dev/null
done

# 3. The operator: exactly the calls src/vault/mod.rs makes with its token. Mint only through
#    those roles and only response-wrapped (min_wrapping_ttl forces wrapping; a POST there is
#    an "update"), revoke by accessor, renew by accessor (keeps an agent's token alive while
#    its pod lives), look up a token's metadata by accessor (before revoking: Vault must vouch
#    that the token was minted for the record; the answer never holds the token), and for
#    `cubbyhole doctor` read its roles' definitions and its own capabilities. sys/wrapping/lookup needs no grant: the operator calls it
#    without a token, like the agent.
operator_policy() {
    for role in $ROLES; do
        cat <<POLICY
path "auth/token/create/$role" {
  capabilities = ["update"]
  min_wrapping_ttl = "5s"
  max_wrapping_ttl = "1h"
}
path "auth/token/roles/$role" {
  capabilities = ["read"]
}
POLICY
    done
    cat <<POLICY
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}
path "auth/token/renew-accessor" {
  capabilities = ["update"]
}
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}
path "sys/capabilities-self" {
  capabilities = ["update"]
}
POLICY
}
log "policy $OPERATOR_POLICY"
operator_policy | v policy write "$OPERATOR_POLICY" - >/dev/null

# 4. Optional: let the operator log in with its Kubernetes service account.
if [ -n "${KUBERNETES_HOST:-}" ]; then
    # Captured first: with pipefail, `grep -q` closing the pipe early would fail the list.
    auth_methods="$(v auth list -format=json)"
    if ! grep -q '"kubernetes/"' <<<"$auth_methods"; then
        log "enabling kubernetes auth"
        v auth enable kubernetes >/dev/null
    fi
    log "kubernetes auth config ($KUBERNETES_HOST)"
    config=(kubernetes_host="$KUBERNETES_HOST")
    if [ -n "${KUBERNETES_CA_CERT:-}" ]; then
        # Vault outside the cluster: no local service account to review logins with. The
        # operator's login token is for audience $VAULT_AUDIENCE only, so the API server would
        # refuse it as the reviewer's credential: Vault needs a reviewer token of its own.
        if [ -z "${TOKEN_REVIEWER_JWT_FILE:-}" ]; then
            echo "setup.sh: KUBERNETES_CA_CERT needs TOKEN_REVIEWER_JWT_FILE (see the header)" >&2
            exit 2
        fi
        config+=(kubernetes_ca_cert="@$KUBERNETES_CA_CERT" disable_local_ca_jwt=true
            token_reviewer_jwt="@$TOKEN_REVIEWER_JWT_FILE")
    fi
    v write auth/kubernetes/config "${config[@]}" >/dev/null
    log "kubernetes auth role $OPERATOR_POLICY ($SA_NAMESPACE/$SA_NAME)"
    # No `default` policy: the operator's login token holds the operator policy only. Only a
    # token for audience $VAULT_AUDIENCE logs in: the operator never hands Vault a token the
    # API server would accept.
    v write "auth/kubernetes/role/$OPERATOR_POLICY" \
        bound_service_account_names="$SA_NAME" \
        bound_service_account_namespaces="$SA_NAMESPACE" \
        audience="$VAULT_AUDIENCE" \
        token_policies="$OPERATOR_POLICY" \
        token_no_default_policy=true \
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
