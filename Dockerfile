# The `sluice` binary in a small runtime image, for docker-compose.yml (see "Deploying with
# Docker Compose" in README.md). One image serves the scheduler, the workers and the client:
#   docker build -t sluice:local .
#   docker run --rm sluice:local --help

# Build stage: the whole workspace (worker, scheduler, tests) is copied, because cargo needs every
# member's manifest to read the workspace; .dockerignore keeps target/ and .git/ out.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice --bin sluice \
    && install -m 0755 target/release/sluice /usr/local/bin/sluice

# Runtime stage: python3 because the demo pipeline's steps are stdlib-only Python scripts run by
# the workers as local processes; ca-certificates for HTTPS from steps (the binary itself uses
# rustls with its own roots and links no OpenSSL).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice
ENTRYPOINT ["sluice"]
CMD ["--help"]
