# Jetline container image: a static-ish release build on Debian slim.
# Build: docker build -t jetline .   Run: see docker-compose.yml.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY pipeline pipeline
COPY schemas schemas
COPY tests tests
RUN cargo build --release --locked --bin jetline

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 jetline
COPY --from=build /src/target/release/jetline /usr/local/bin/jetline
COPY schemas /etc/jetline/schemas
COPY config/jetline.yaml /etc/jetline/jetline.yaml
USER jetline
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:9464/healthz || exit 1
ENTRYPOINT ["jetline"]
CMD ["run", "--config", "/etc/jetline/jetline.yaml"]
