# cubbyhole tasks. `just` lists them.
set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Build the binary (debug).
build:
    cargo build

# Build the release binary.
release:
    cargo build --release

# Find or install what the tests need (cargo-nextest, rustfmt, clippy, bao, kubectl); says what is missing otherwise.
tools:
    e2e/ensure-tools.sh

# Everything CI runs: lint, then every test (unit, OpenBao integration, end-to-end).
# On a fresh machine it first installs cargo-nextest and builds the control plane (~15 minutes cold).
test: tools lint
    e2e/controlplane/build.sh >/dev/null
    e2e/previous-release.sh >/dev/null
    cargo nextest run --no-fail-fast

# Unit tests only (no servers).
test-fast: tools
    cargo nextest run --lib

# Regenerate crds/, config/crd/ and the chart's CRD from the Rust types.
crds:
    cargo run -q -- crd > crds/agentsecretbinding.yaml
    cp crds/agentsecretbinding.yaml config/crd/agentsecretbinding.yaml
    cp crds/agentsecretbinding.yaml charts/cubbyhole/crds/agentsecretbinding.yaml

# CycloneDX SBOM (JSON, spec 1.5) of the cubbyhole binary: every crate Cargo.lock pins for it
# (build dependencies included, dev-dependencies and testkit not), with licenses, hashes and
# purls, in target/sbom/cubbyhole-<version>.cdx.json. Works offline once the crates are fetched;
# installs cargo-cyclonedx from crates.io when missing. Dated by the commit, so it is
# reproducible per commit.
sbom:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-cyclonedx >/dev/null || cargo install --locked cargo-cyclonedx@0.5.9
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
    export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
    # It writes <name>.json beside each workspace member's Cargo.toml: a name of our own, moved.
    name="sbom-$$"
    trap 'rm -f "$name.json" "testkit/$name.json"' EXIT
    cargo cyclonedx --manifest-path Cargo.toml --format json --spec-version 1.5 \
        --override-filename "$name" -q
    out="target/sbom/cubbyhole-$version.cdx.json"
    mkdir -p target/sbom
    mv "$name.json" "$out"
    python3 -c 'import json, sys; b = json.load(open(sys.argv[1])); print("%s: CycloneDX %s, %d components" % (sys.argv[1], b["specVersion"], len(b["components"])))' "$out"

# Formatting and clippy, warnings are errors.
lint: tools
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Start a local control plane + OpenBao (state in target/e2e).
cluster-up:
    e2e/cluster-up.sh target/e2e

# Stop them.
cluster-down:
    e2e/cluster-down.sh target/e2e

# One-command tour: cluster, operator, sample binding and pods.
demo:
    e2e/demo.sh

# Benchmark: local cluster + OpenBao + release operator; raw two-write pipeline vs operator
# bursts. Flags: --pods N --concurrency C --bindings 1,50 (report in bench/).
bench *FLAGS:
    python3 bench/run.py {{FLAGS}}

# Noisy neighbour at the goal's scale (release operator): one namespace with 2,000 bindings,
# 300 labelled Secrets of 0.9 MiB, 150 pods with 0.8 MiB of labels, a binding Vault refuses
# over 50 pods and a crash-looping agent; prints the quiet namespace's p50/p99, the operator's
# peak RSS, and Vault logins and mints (the line starting NOISY). ~4 min after the build.
bench-noisy: tools
    CUBBYHOLE_NOISY=full cargo nextest run --release --test e2e_noisy --no-capture

# Needs `cargo install --locked cargo-mutants`. Every surviving mutant is a rule no unit test
# pins down. Mutation testing of every pure or decision module and of the executor (run by the
# simulation; the lease's and the trust check's API calls and the executor's Event publishing
# through the API server are left to the e2e tests); results in mutants.out/, summary in
# mutants/REPORT.md. Slow: ~870 mutants at ~20 s each on 2 cores (about 5 h); `just mutants -f
# src/core/plan.rs` runs a part.
mutant_files := "-f src/core/plan.rs -f src/core/status.rs -f src/core/spec.rs -f src/core/pod.rs -f src/core/labels.rs -f src/record/seal.rs -f src/record/state.rs -f src/record/writes.rs -f src/agent/receipt.rs -f src/config.rs -f src/webhook/inject.rs -f src/webhook/admit.rs -f src/webhook/certs.rs -f src/controller/budget.rs -f src/controller/fair.rs -f src/controller/cache.rs -f src/controller/trust.rs -f src/controller/leader.rs -f src/request/own_writes.rs -f src/request/gate.rs -f src/request/limits.rs -f src/controller/execute.rs -E 'leader.rs.*(try_hold|acquire|renew|release)' -E 'trust.rs.*(vet|report_released|report_forged)' -E 'execute.rs.*replace publish '"
mutants *ARGS:
    cargo mutants --profile mutants --test-tool nextest --cargo-arg=--lib {{ if ARGS == "" { mutant_files } else { ARGS } }}
