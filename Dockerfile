# The `cas` binary in a small image. The role is the command:
#
#   docker build -t cas .
#   docker run --rm cas api --help
#   docker run --rm -e DATABASE_URL=... cas migrate
#
# Stages:
#   planner  turns the source tree into a "recipe": the workspace manifests, Cargo.lock and
#            an empty stub for every target. Its content changes only when a manifest does.
#   builder  compiles the dependencies against the recipe (a cached layer while no manifest
#            changes), then the real sources.
#   runtime  Debian slim, CA certificates, a non-root user and the binary.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS planner
WORKDIR /src
COPY . .
# For each workspace member: its Cargo.toml, plus a stub for each target file that exists
# (src/lib.rs, src/main.rs, src/bin/*.rs) and for each target named by a `path = "...rs"`
# line, so that Cargo sees the same targets as in the real tree.
RUN set -eu; \
    mkdir -p /recipe; \
    cp Cargo.toml Cargo.lock rust-toolchain.toml /recipe/; \
    find . -path ./target -prune -o -name Cargo.toml -print | while read -r manifest; do \
        dir=$(dirname "$manifest"); \
        [ "$dir" = "." ] && continue; \
        mkdir -p "/recipe/$dir/src"; \
        cp "$manifest" "/recipe/$dir/Cargo.toml"; \
        if [ -f "$dir/src/lib.rs" ]; then : > "/recipe/$dir/src/lib.rs"; fi; \
        for bin in "$dir/src/main.rs" "$dir"/src/bin/*.rs; do \
            if [ -f "$bin" ]; then mkdir -p "/recipe/$(dirname "$bin")"; echo 'fn main() {}' > "/recipe/$bin"; fi; \
        done; \
        sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest" | while read -r target; do \
            mkdir -p "/recipe/$dir/$(dirname "$target")"; \
            [ -f "/recipe/$dir/$target" ] || echo 'fn main() {}' > "/recipe/$dir/$target"; \
        done; \
    done

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# Dependencies first: this layer is reused until a Cargo.toml or Cargo.lock changes.
COPY --from=planner /recipe/ ./
RUN cargo build --release --locked -p cas
# Then the real sources. Cargo decides what to rebuild by modification time, and the copied
# files may be older than the stub build, so every file is touched first.
COPY . .
RUN find . -path ./target -prune -o -type f -exec touch {} + \
    && cargo build --release --locked -p cas \
    && install -m 0755 target/release/cas /usr/local/bin/cas

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cas \
    && useradd --system --uid 10001 --gid cas --home-dir /nonexistent --shell /usr/sbin/nologin cas
COPY --from=builder /usr/local/bin/cas /usr/local/bin/cas
USER 10001:10001
# The API's default listen address is 0.0.0.0:8081.
EXPOSE 8081
# `cas` handles SIGTERM itself: it drains in-flight work and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cas"]
CMD ["--help"]
