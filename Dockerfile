# syntax=docker/dockerfile:1
# One image for all of Trellis: `webhook`, `proxyinit` (with iptables, legacy and nft), `proxy`,
# `control`, plus the demo's `color` app, `loadgen` client and `grpc-echo` gRPC app. `make image` builds it as
# ghcr.io/trellis-mesh/trellis:0.1.0, the tag the injector and manifests/ default to.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
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
    cargo build --release --locked \
        -p webhook -p proxyinit -p proxy -p control -p sandbox \
        --bin webhook --bin proxyinit --bin proxy --bin control --bin color --bin loadgen \
        --bin grpc-echo \
 && mkdir -p /out \
 && cp target/release/webhook target/release/proxyinit target/release/proxy target/release/control \
       target/release/color target/release/loadgen target/release/grpc-echo /out/

FROM debian:${DEBIAN}-slim
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
