# One image for both sides: `cubbyhole operator` and `cubbyhole unwrap` (the init container).
# Static musl binary on a distroless, nonroot base.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y musl-tools
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/cubbyhole /cubbyhole

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /cubbyhole /usr/local/bin/cubbyhole
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cubbyhole"]
