#!/usr/bin/env bash
# Installs what the tests and the demo need from Debian: prometheus and promtool.
# As root it installs them; otherwise it says what to install and fails.
set -euo pipefail

missing=()
for tool in prometheus promtool; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]}; install Debian's prometheus package: sudo apt-get install -y prometheus" >&2
    exit 1
fi
echo "installing Debian's prometheus package (for: ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system-wide Prometheus on :9090 where systemd runs; the demo wants
# that port for mpp, and the tests need no system service.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
    systemctl disable prometheus >/dev/null 2>&1 || true
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
