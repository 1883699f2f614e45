# A static mpp binary (musl) in an empty image, run as an unprivileged user.
# Build: docker build -t mpp .   (not buildable on the development machine: it has no
# Docker engine; the steps are the conventional ones and use only crates.io.)
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/mpp

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/release/mpp /mpp
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/mpp"]
