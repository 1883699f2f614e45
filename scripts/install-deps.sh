#!/usr/bin/env bash
# Installs what the tests and the demo need from Debian: prometheus and promtool, dnsmasq (a
# real DNS server for the DNS discovery tests; the `dnsmasq-base` package, no system service),
# and podman, buildah and runc (`make image` and the container test); with the argument `bench`, what the
# benchmark needs: wrk, h2load (nghttp2-client), nginx, HAProxy, curl and openssl, cmake (the
# Pingora reference in bench/pingora builds zlib-ng with it), and valgrind (callgrind counts
# instructions per request for `make bench-instructions`).
# As root it installs them; otherwise it says what to install and fails.
set -euo pipefail

if [ "${1:-}" = bench ]; then
    tools=(wrk h2load nginx haproxy curl openssl cmake valgrind)
    packages=(wrk nghttp2-client nginx-light haproxy curl openssl cmake valgrind)
else
    tools=(prometheus promtool dnsmasq podman buildah runc); packages=(prometheus dnsmasq-base podman buildah runc)
fi
missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]}; install them: sudo apt-get install -y ${packages[*]}" >&2
    exit 1
fi
echo "installing from Debian: ${packages[*]} (for: ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# The packages start system-wide services where systemd runs; the demo wants :9090 for mpp,
# and neither the tests nor the benchmark need a system service.
for service in prometheus nginx haproxy; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
        systemctl disable "$service" >/dev/null 2>&1 || true
    fi
done
export PATH="$PATH:/usr/sbin"
for tool in "${tools[@]}"; do command -v "$tool" >/dev/null; done
