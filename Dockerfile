# pgrelay: one static-ish binary on a slim Debian base.
#   docker build -t pgrelay .
#   docker run -e DATABASE_URL=… -e PGRELAY_SECRET=… -p 8080:8080 pgrelay
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. Without the default `demo` feature:
# a server image has no use for throwaway clusters (crates/cluster stays an empty stub).
COPY Cargo.toml Cargo.lock ./
COPY crates/cluster/Cargo.toml ./crates/cluster/
RUN mkdir -p src crates/cluster/src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && touch crates/cluster/src/lib.rs \
    && cargo build --release --locked --no-default-features && rm -rf src
COPY src ./src
COPY sql ./sql
COPY static ./static
# Compiled in: the client served at /v1/client.js and the OpenAPI document.
COPY clients/js/dist/pgrelay-client.min.js ./clients/js/dist/
COPY docs/openapi.json ./docs/openapi.json
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --no-default-features

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 pgrelay
COPY --from=build /src/target/release/pgrelay /usr/local/bin/pgrelay
USER pgrelay
ENV PGRELAY_BIND=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["pgrelay"]
CMD ["serve"]
