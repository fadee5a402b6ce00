# syntax=docker/dockerfile:1
#
# wsgate gateway image: build with the Rust toolchain, run on a distroless glibc base as a
# non-root user. Config.toml and the TLS/JWT files are NOT in the image: mount them.
#
#   docker build -t wsgate-gateway .
#   docker run --rm --network host --stop-timeout 20 --ulimit nofile=65536:65536 \
#     -v "$PWD/Config.toml:/etc/wsgate/Config.toml:ro" -v "$PWD/certs:/etc/wsgate/certs:ro" \
#     wsgate-gateway
#
# --network host: the sample Config.toml names its backends on localhost. On a bridge
# network (-p 9090:9090), point [backends] at addresses the container can reach.
#
# See deploy/README.md for Kubernetes, sizing and the open-file limit.

# The toolchain the project is developed and tested with (the locked dependencies of the
# gateway need at least 1.88). Build and runtime images share Debian 12 (bookworm), so
# the binary's glibc requirements match the runtime's glibc.
ARG RUST_VERSION=1.95
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole workspace (see .dockerignore for what that is): `-p gateway` still makes cargo
# load every member's manifest and declared targets.
COPY . .
# Caches survive between builds (BuildKit); the binary is copied out of the cached target
# folder in the same step. aws-lc-sys (rustls' crypto) and mimalloc compile C with the
# image's gcc: no cmake, clang or Go is needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p gateway --bin gateway \
    && install -D -m 0755 target/release/gateway /out/gateway

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="wsgate gateway" \
      org.opencontainers.image.description="WebSocket gateway: WSS, JWT authentication, routing by the ID header" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/gateway /usr/local/bin/gateway
# Relative paths in a config resolve against the config file's folder, so mounting the
# repository's Config.toml at /etc/wsgate/Config.toml and certs/ at /etc/wsgate/certs/
# works unchanged. Kubernetes mounts them elsewhere and passes --config (deploy/).
WORKDIR /etc/wsgate
# distroless "nonroot" (65532), numeric so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 9090: WSS. 9091: admin (/healthz /readyz /metrics POST /reload), which listens on
# 127.0.0.1 unless the config sets [admin] listen = "0.0.0.0:9091".
EXPOSE 9090 9091
# SIGTERM drains: stop accepting, close sessions with 1001, wait up to [timeouts].drain
# (10s by default) and exit 0. Give `docker stop` more than that (--stop-timeout 20).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["--config", "/etc/wsgate/Config.toml"]
