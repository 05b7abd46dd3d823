# syntax=docker/dockerfile:1
#
# One image for every role of the `ttfd` binary. The entrypoint is `ttfd`; each
# Kubernetes workload picks its role with `args` (sync, query, web, discord, telegram,
# migrate, nats setup, ...). Build from the repository root:
#
#   docker build -t ttfd:$(git rev-parse --short HEAD) .
#
# The builder and the runtime are both Debian 12 (bookworm), so the binary finds the
# glibc it was linked against (it needs 2.34 or newer; bookworm has 2.36).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
# rust-toolchain.toml pins 1.95.0 and asks for rustfmt and clippy, which a release build
# does not use: naming the image's own toolchain keeps rustup from downloading them.
ENV RUSTUP_TOOLCHAIN=1.95.0 \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
WORKDIR /src
# .dockerignore lets in only what the build reads: the manifests, the two crates, the
# migrations (embedded by sqlx::migrate!), the stream definitions in nats/*.json
# (embedded by the broker); workers/ holds the test target Cargo declares.
COPY . .
# The cache mounts keep the registry and the target directory between builds (BuildKit);
# the binary is copied out because the cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ttfd --bin ttfd \
    && install -D -m 0755 target/release/ttfd /out/ttfd

FROM debian:bookworm-slim AS runtime
# ca-certificates: the Discord and Telegram APIs and tls:// NATS URLs are checked
# against the system roots. The shell stays (debian-slim): the Discord StatefulSet
# derives its shard range from the pod ordinal with `sh -c`. Not version-pinned on
# purpose: the root store must follow Debian's security updates at every build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid, so that Kubernetes can check `runAsNonRoot` without a passwd
# lookup; the manifests run as this uid with a read-only root filesystem.
RUN groupadd --system --gid 10001 ttfd \
    && useradd --system --uid 10001 --gid ttfd --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ttfd
COPY --from=builder /out/ttfd /usr/local/bin/ttfd
USER 10001:10001
# Containers log JSON (one object per line) for the cluster's log collector.
ENV TTFD__LOG__FORMAT=json
# 8080: `ttfd web` (web.listen); 9090: /metrics, /healthz, /readyz of the other roles
# (metrics.listen, set by the manifests).
EXPOSE 8080 9090
ENTRYPOINT ["ttfd"]
CMD ["--help"]
