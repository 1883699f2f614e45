# mpp from source, for machines that reach an image registry (it starts FROM rust:1-alpine):
# a static musl binary in an empty image, run as an unprivileged user. Where no registry is
# reachable, `make image` builds the equivalent image from Containerfile (see the README).
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" --build-arg BRANCH=main \
#       --build-arg SOURCE=<repository URL> -t registry.example.com/monitoring/mpp:0.1.0 .
#   docker push registry.example.com/monitoring/mpp:0.1.0
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
# The revision and branch for mpp_build_info and --version (no .git in the build context).
ARG REVISION
ARG BRANCH
ENV MPP_BUILD_REVISION=${REVISION} MPP_BUILD_BRANCH=${BRANCH}
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo ./.cargo
COPY src ./src
RUN cargo build --profile dist --locked && strip target/dist/mpp

FROM scratch
ARG VERSION
ARG REVISION
ARG SOURCE
LABEL org.opencontainers.image.title="mpp" \
      org.opencontainers.image.description="Multi-Prometheus proxy: makes HA Prometheus replicas look like one server" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/dist/mpp /mpp
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/mpp"]
CMD ["--endpoints-file", "/etc/mpp/endpoints"]
