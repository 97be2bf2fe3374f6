# bqsink container image: build in the Rust image, run in a distroless one (glibc, CA certificates,
# no shell). librdkafka, OpenSSL (Kafka over TLS/SASL), zlib and zstd are built from source and linked
# statically; TLS to BigQuery is rustls, so the runtime image needs no shared OpenSSL.
#
# The binary is built with --no-default-features: the development tooling (crate bqsink-devtools:
# the demo, the benchmark, the local BigQuery server) is left out; `bqsink demo` says so.
#
#   docker build -t bqsink .
#   docker run --rm -p 8083:8083 -e BQSINK__KAFKA__BROKERS=kafka:9092 -e BQSINK__ADMIN__TOKEN=... bqsink
#
# The admin API listens on 0.0.0.0 here, so bqsink refuses to start without admin.token.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that changing bqsink's own code does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/Cargo.toml
# A workspace member: cargo needs its manifest to resolve the workspace, not its code.
COPY devtools/Cargo.toml devtools/Cargo.toml
RUN mkdir -p src actors/src devtools/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs actors/src/lib.rs devtools/src/lib.rs \
    && cargo build --release --locked --no-default-features \
    && rm -rf src actors/src devtools/src
COPY . .
# The commit bqsink reports (bqsink --version, bqsink_build_info): the context has no .git, so pass it:
#   docker build --build-arg GIT_SHA=$(git rev-parse --short=12 HEAD) -t bqsink .
ARG GIT_SHA=unknown
ENV BQSINK_GIT_SHA=$GIT_SHA
# Make cargo see the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs actors/src/lib.rs \
    && cargo build --release --locked --no-default-features --bin bqsink \
    && cp target/release/bqsink /bqsink

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /bqsink /usr/local/bin/bqsink
COPY config /etc/bqsink/config
ENV BQSINK_CONFIG_DIR=/etc/bqsink/config \
    BQSINK__ADMIN__LISTEN=0.0.0.0:8083
EXPOSE 8083
# distroless's nonroot user by number: with runAsNonRoot the kubelet must see a numeric user.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bqsink"]
CMD ["run", "--env", "production"]
