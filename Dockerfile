# One image for both sides: `cubbyhole operator` and `cubbyhole unwrap` (the init container).
# The binary links glibc; the runtime stage is distroless "cc" (glibc, nonroot). The local
# node's image (e2e/controlplane/node/image.py --libs --nonroot) has the same layout: the
# binary at /usr/local/bin/cubbyhole, the libraries it links at their paths, user 65532.
FROM rust:1.95-bookworm AS build
# The commit `cubbyhole --version` names (build.rs); the context has no .git, so without it the
# version says "unknown": docker build --build-arg CUBBYHOLE_COMMIT=$(git rev-parse HEAD) .
ARG CUBBYHOLE_COMMIT=""
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# `cubbyhole doctor` compiles in the shipped ClusterRole (config/rbac/role.yaml).
COPY config ./config
COPY testkit ./testkit
RUN cargo build --release --locked --bin cubbyhole \
 && cp target/release/cubbyhole /cubbyhole

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /cubbyhole /usr/local/bin/cubbyhole
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cubbyhole"]
