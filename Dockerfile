# One image for both sides: `cubbyhole operator` and `cubbyhole unwrap` (the init container).
# The binary links glibc; the runtime stage is distroless "cc" (glibc, nonroot). The local
# node's image (e2e/controlplane/node/image.py --libs --nonroot) has the same layout: the
# binary at /usr/local/bin/cubbyhole, the libraries it links at their paths, user 65532.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY testkit ./testkit
RUN cargo build --release --locked --bin cubbyhole \
 && cp target/release/cubbyhole /cubbyhole

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /cubbyhole /usr/local/bin/cubbyhole
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cubbyhole"]
