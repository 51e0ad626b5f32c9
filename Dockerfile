# Jetline's container image: the release binary on Debian slim, run as an
# unprivileged user, with the example configuration and schemas.
#   docker build -t jetline .
#   docker run --rm jetline check                  # the shipped config/jetline.yaml
#   docker run --rm jetline check --config /etc/jetline/config/projections.yaml
#   docker run --rm -e JETLINE__NATS__URL=nats://my-nats:4222 jetline   # run
# docker-compose.yml runs it with NATS, PostgreSQL, Prometheus and Grafana.
# The image lays the files out as the repository does (config/, schemas/), so
# the configuration's relative `schemas.dir: ../schemas` holds in it too.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# The dependencies, in layers of their own: the real manifests and lock file
# with empty targets, built once; a change to Jetline's code rebuilds only
# Jetline. Every target the manifest names must exist here for cargo to read
# it (tests/e2e/packaging.rs runs this step and asks cargo).
COPY Cargo.toml Cargo.lock ./
COPY pipeline/Cargo.toml pipeline/
RUN mkdir -p pipeline/src pipeline/benches/bench tests/e2e \
    && echo 'fn main() {}' > pipeline/build.rs \
    && echo 'fn main() {}' > pipeline/src/main.rs \
    && touch pipeline/src/lib.rs \
    && echo 'fn main() {}' > pipeline/benches/upcast.rs \
    && echo 'fn main() {}' > pipeline/benches/bench/main.rs \
    && echo 'fn main() {}' > tests/e2e/main.rs
RUN cargo build --release --locked --bin jetline

# Jetline itself. COPY keeps the files' own modification times, older than
# the empty targets' build: touched, so cargo builds them and not the stubs.
COPY schemas schemas
COPY pipeline pipeline
RUN touch pipeline/build.rs pipeline/src/main.rs pipeline/src/lib.rs \
    && cargo build --release --locked --bin jetline

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin jetline
COPY --from=build /src/target/release/jetline /usr/local/bin/jetline
COPY schemas /etc/jetline/schemas
COPY config/jetline.yaml config/projections.yaml /etc/jetline/config/
# `--config` of every command (run, check, ready, ...) defaults to this.
ENV JETLINE_CONFIG=/etc/jetline/config/jetline.yaml
USER jetline
# The image is built only if the binary runs here and the shipped examples
# pass the same check as `docker run IMAGE check` (no NATS needed).
RUN jetline check >/dev/null \
    && jetline check --config /etc/jetline/config/projections.yaml >/dev/null
# metrics.listen of the shipped configuration: /metrics, /healthz, /readyz.
EXPOSE 9464
# `jetline ready` asks /readyz on metrics.listen of the configuration in use
# (JETLINE_CONFIG and JETLINE__* included): healthy once connected to NATS
# with every consumer bound.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["jetline", "ready"]
ENTRYPOINT ["jetline"]
CMD ["run"]
