#!/usr/bin/env bash
# up.sh DIR: start etcd + cubbyhole-apiserver on random free 127.0.0.1 ports, state in DIR.
# Writes DIR/kubeconfig, DIR/env (KUBECONFIG, APISERVER_URL, ...), DIR/*.pid, DIR/*.log.
# Idempotent: on a DIR that is already up it only checks /readyz and returns.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
CERTS="$DIR/certs"
READY_TIMEOUT="${CUBBYHOLE_READY_TIMEOUT:-30}"

die() { echo "up.sh: ERROR: $*" >&2; exit 1; }
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 30000))
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

readyz() {
  curl -sf --max-time 2 --cacert "$CERTS/ca.crt" --cert "$CERTS/admin.crt" --key "$CERTS/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}

# ---- already up? ------------------------------------------------------------------------
if [[ -f "$DIR/ports.env" ]]; then source "$DIR/ports.env"; fi
if alive "$DIR/apiserver.pid" && alive "$DIR/etcd.pid" && [[ -n "${API_PORT:-}" ]] && readyz; then
  echo "up.sh: already running: KUBECONFIG=$DIR/kubeconfig"
  exit 0
fi

# ---- binaries -------------------------------------------------------------------------
"$HERE/build.sh" >"$DIR/build.log" 2>&1 || { tail -30 "$DIR/build.log" >&2; die "build.sh failed (full log: $DIR/build.log)"; }
ENV_FILE="${CUBBYHOLE_CACHE:-$HOME/.cache/cubbyhole}/controlplane/current.env"
source "$ENV_FILE"
[[ -x "$APISERVER_BIN" && -x "$ETCD_BIN" ]] || die "binaries missing after build (see $ENV_FILE)"

# ---- certificates (EC P-256, PKCS#8 keys: accepted by Go, kubectl and rustls) ---------
if [[ ! -s "$CERTS/admin.crt" ]]; then
  mkdir -p "$CERTS"; chmod 700 "$CERTS"
  (
    cd "$CERTS"
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    key ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=cubbyhole-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out ca.crt 2>/dev/null
    sign() { # name subject extensions
      key "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign server "/CN=cubbyhole-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
    sign admin "/O=system:masters/CN=cubbyhole-admin" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  ) || die "certificate generation with openssl failed"
fi

# ---- ports (reused across restarts so etcd's stored peer URL stays valid) -------------
if [[ -z "${ETCD_PORT:-}" ]] || ! { port_free "$ETCD_PORT" || alive "$DIR/etcd.pid"; }; then ETCD_PORT="$(free_port)"; fi
if [[ -z "${PEER_PORT:-}" ]] || ! { port_free "$PEER_PORT" || alive "$DIR/etcd.pid"; }; then PEER_PORT="$(free_port)"; fi
if [[ -z "${API_PORT:-}" ]] || ! { port_free "$API_PORT" || alive "$DIR/apiserver.pid"; }; then API_PORT="$(free_port)"; fi
printf 'ETCD_PORT=%s\nPEER_PORT=%s\nAPI_PORT=%s\n' "$ETCD_PORT" "$PEER_PORT" "$API_PORT" >"$DIR/ports.env"

# ---- etcd -----------------------------------------------------------------------------
if ! alive "$DIR/etcd.pid"; then
  nohup "$ETCD_BIN" --name cubbyhole --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "cubbyhole=http://127.0.0.1:$PEER_PORT" \
    --unsafe-no-fsync --heartbeat-interval 10 --election-timeout 100 --log-level warn --quota-backend-bytes 2147483648 \
    >"$DIR/etcd.log" 2>&1 </dev/null &
  echo $! >"$DIR/etcd.pid"
fi
for _ in $(seq 1 100); do
  curl -sf --max-time 1 "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break
  alive "$DIR/etcd.pid" || { tail -20 "$DIR/etcd.log" >&2; die "etcd exited (log: $DIR/etcd.log)"; }
  sleep 0.1
done

# ---- API server -----------------------------------------------------------------------
if ! alive "$DIR/apiserver.pid"; then
  nohup "$APISERVER_BIN" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$CERTS/server.crt" --tls-private-key-file "$CERTS/server.key" \
    --client-ca-file "$CERTS/ca.crt" --cert-dir "$DIR/certs/generated" \
    --shutdown-delay-duration 0 --v "${CUBBYHOLE_APISERVER_V:-1}" \
    >"$DIR/apiserver.log" 2>&1 </dev/null &
  echo $! >"$DIR/apiserver.pid"
fi

b64() { base64 -w0 <"$1"; }
cat >"$DIR/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: cubbyhole-e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$CERTS/ca.crt")
users:
- name: cubbyhole-admin
  user:
    client-certificate-data: $(b64 "$CERTS/admin.crt")
    client-key-data: $(b64 "$CERTS/admin.key")
contexts:
- name: cubbyhole-e2e
  context:
    cluster: cubbyhole-e2e
    user: cubbyhole-admin
    namespace: default
current-context: cubbyhole-e2e
EOF
mv "$DIR/kubeconfig.tmp" "$DIR/kubeconfig"; chmod 600 "$DIR/kubeconfig"
printf 'KUBECONFIG=%s\nAPISERVER_URL=https://127.0.0.1:%s\nETCD_URL=http://127.0.0.1:%s\n' \
  "$DIR/kubeconfig" "$API_PORT" "$ETCD_PORT" >"$DIR/env"

# Watchdog: if DIR is deleted without down.sh (a test harness removing its temp dir), stop
# both processes instead of leaking them. down.sh stops the watchdog first.
if ! alive "$DIR/watchdog.pid"; then
  AP="$(cat "$DIR/apiserver.pid")" EP="$(cat "$DIR/etcd.pid")"
  nohup bash -c 'while [[ -d "$0" ]] && kill -0 "$1" 2>/dev/null; do sleep 2; done
    [[ -d "$0" ]] || kill -TERM "$1" "$2" 2>/dev/null' "$DIR" "$AP" "$EP" >/dev/null 2>&1 </dev/null &
  echo $! >"$DIR/watchdog.pid"
fi

start=$SECONDS
while ! readyz; do
  if ! alive "$DIR/apiserver.pid"; then
    tail -30 "$DIR/apiserver.log" >&2; die "cubbyhole-apiserver exited (log: $DIR/apiserver.log)"
  fi
  if (( SECONDS - start >= READY_TIMEOUT )); then
    tail -30 "$DIR/apiserver.log" >&2
    die "cubbyhole-apiserver not ready after ${READY_TIMEOUT}s (log: $DIR/apiserver.log)"
  fi
  sleep 0.1
done
echo "up.sh: ready at https://127.0.0.1:$API_PORT: KUBECONFIG=$DIR/kubeconfig"
