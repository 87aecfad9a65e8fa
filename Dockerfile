# Multi-stage build: compile in the Rust image, run in a small Debian image as
# a non-root user with the SQLite store on the /data volume.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin dispatch-relay

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /data relay \
 && mkdir -p /data /etc/dispatch-relay \
 && chown relay /data
COPY --from=build /src/target/release/dispatch-relay /usr/local/bin/dispatch-relay
USER relay
WORKDIR /data
VOLUME ["/data"]
ENV RELAY_CONFIG=/etc/dispatch-relay/routes.yaml \
    RELAY_DATABASE_URL=sqlite:/data/dispatch-relay.db \
    RELAY_LISTEN=0.0.0.0:8080 \
    RELAY_LOG_FORMAT=json
EXPOSE 8080
# The port is RELAY_LISTEN's, which wins over server.listen in routes.yaml.
HEALTHCHECK --interval=30s --timeout=3s CMD curl -fsS "http://127.0.0.1:${RELAY_LISTEN##*:}/healthz" || exit 1
ENTRYPOINT ["dispatch-relay"]
CMD ["serve"]
