# syntax=docker/dockerfile:1
# One image for all of Trellis: `webhook`, `proxyinit` (with iptables, legacy and nft), `proxy`,
# `control`, plus the demo's `color` app, `loadgen` client and `grpc-echo` gRPC app. `make image` builds it as
# ghcr.io/trellis-mesh/trellis:0.1.0, the tag the injector and manifests/ default to.
# Built with Cargo's `image` profile (release without debug info, symbols stripped): the seven
# binaries are 46 MB instead of 234 MB with release's line tables and symbols (webhook 13.5 MB,
# control 16.1 MB, proxy 6.9 MB, proxyinit 2.6 MB). Debug builds or `--profile release` for
# profiling stay outside the image.

# The two base images, by tag. To build from immutable images, pass them by digest (what
# `docker buildx imagetools inspect rust:1.95-slim-bookworm` prints), e.g.
#   docker build --build-arg BUILD_IMAGE=rust:1.95-slim-bookworm@sha256:<digest> \
#                --build-arg RUNTIME_IMAGE=debian:bookworm-slim@sha256:<digest> .
# The builder's Debian must be the runtime's (the binaries link the builder's glibc).
ARG BUILD_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# Manifests first, so the dependency layer is rebuilt only when they change.
COPY Cargo.toml Cargo.lock ./
COPY config config
COPY tests/kit tests/kit
COPY webhook webhook
COPY proxyinit proxyinit
COPY proxy proxy
COPY control control
COPY tests/sandbox tests/sandbox
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile image --locked \
        -p webhook -p proxyinit -p proxy -p control -p sandbox \
        --bin webhook --bin proxyinit --bin proxy --bin control --bin color --bin loadgen \
        --bin grpc-echo \
 && mkdir -p /out \
 && cp target/image/webhook target/image/proxyinit target/image/proxy target/image/control \
       target/image/color target/image/loadgen target/image/grpc-echo /out/

FROM ${RUNTIME_IMAGE}
# iptables: both backends (iptables-legacy-* and iptables-nft-*); proxyinit picks the node's.
# curl: `kubectl exec POD -c proxy -- curl -s localhost:9901/stats`, as the README shows.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot \
 && groupadd --gid 1337 trellis-proxy \
 && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin trellis-proxy
COPY --from=build /out/ /usr/local/bin/
# Non-root by default; the injected proxyinit asks for root (+NET_ADMIN, NET_RAW) explicitly, the
# proxy for 1337.
USER 65532:65532
CMD ["proxy", "--help"]
