# syntax=docker/dockerfile:1
# The operator image, the same runtime tests/cluster/images/build makes without Docker: the glibc
# release binary on distroless cc (Debian 12), user nonroot 65532. Not built on the development
# machine, which has no Docker engine. Both architectures from one builder, which compiles
# natively on its own CPU and cross-links for the other:
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" --sbom=true --provenance=mode=max \
#     -t ghcr.io/batchguard/batchguard:0.1.0 .
# --sbom=true attaches BuildKit's SPDX attestation; BUILDKIT_SBOM_SCAN_STAGE below makes it scan
# the build stage too, so the crates from Cargo.lock are listed beside distroless's packages.
FROM --platform=$BUILDPLATFORM rust:1-bookworm AS build
ARG BUILDKIT_SBOM_SCAN_STAGE=true
ARG TARGETARCH
# ring compiles C and assembly for the target, so it needs the target's gcc as well as its linker.
RUN case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-gnu gnu=x86_64-linux-gnu cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      arm64) target=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      *) echo "unsupported TARGETARCH=$TARGETARCH" >&2; exit 1 ;; \
    esac \
 && if ! command -v "$gnu-gcc" >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends $cross && rm -rf /var/lib/apt/lists/*; \
    fi \
 && rustup target add "$target" \
 && upper="$(echo "$target" | tr a-z- A-Z_)" \
 && printf 'export CARGO_BUILD_TARGET=%s CARGO_TARGET_%s_LINKER=%s-gcc CC_%s=%s-gcc\n' \
      "$target" "$upper" "$gnu" "$(echo "$target" | tr - _)" "$gnu" >/cross.env
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sdk/rust sdk/rust
COPY benches benches
RUN . /cross.env \
 && cargo build --release --locked --bin batchguard \
 && cp "target/$CARGO_BUILD_TARGET/release/batchguard" /batchguard

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/batchguard/batchguard
LABEL org.opencontainers.image.source=$SOURCE \
      org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.revision=$REVISION \
      org.opencontainers.image.licenses=Apache-2.0 \
      org.opencontainers.image.title=batchguard
COPY --from=build /batchguard /batchguard
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/batchguard"]
