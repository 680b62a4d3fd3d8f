# The batchguard operator image: a static musl binary on a distroless, non-root base.
# (Not built on the development machine, which has no Docker engine.)
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sdk/rust sdk/rust
COPY benches benches
RUN cargo build --release --locked --bin batchguard \
 && cp target/release/batchguard /batchguard

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /batchguard /batchguard
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/batchguard"]
