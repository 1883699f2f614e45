#!/usr/bin/env bash
# Two real Prometheus replicas on loopback (the first started a little before the second,
# so it holds more data), an endpoints file, and mpp in front of them on port 9090.
# Everything started here is stopped on Ctrl-C.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mpp="$root/target/release/mpp"
port=${MPP_DEMO_PORT:-9090}
replica_ports=(${MPP_DEMO_REPLICA_PORTS:-19091 19092})
work=$(mktemp -d -t mpp-demo.XXXXXX)
pids=()

cleanup() {
    trap - EXIT INT TERM
    echo
    echo "stopping the demo"
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

[ -x "$mpp" ] || { echo "build mpp first: cargo build --release" >&2; exit 1; }
for p in "$port" "${replica_ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; set MPP_DEMO_PORT / MPP_DEMO_REPLICA_PORTS to free ports" >&2
        exit 1
    fi
done

start_replica() {
    local p=$1 dir="$work/replica-$1"
    mkdir -p "$dir"
    cat > "$dir/prometheus.yml" <<YML
global: {scrape_interval: 5s, evaluation_interval: 5s}
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ['127.0.0.1:$p']}]
  - job_name: mpp
    metrics_path: /mpp/metrics
    static_configs: [{targets: ['127.0.0.1:$port']}]
YML
    prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
        --web.listen-address="127.0.0.1:$p" --log.level=warn 2>"$dir/prometheus.log" &
    pids+=($!)
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:$p/-/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "replica on port $p did not become ready; see $dir/prometheus.log" >&2
    exit 1
}

echo "starting replica 1 on 127.0.0.1:${replica_ports[0]}"
start_replica "${replica_ports[0]}"
sleep 6 # a head start: replica 1 ingests a scrape before replica 2 exists
echo "starting replica 2 on 127.0.0.1:${replica_ports[1]}"
start_replica "${replica_ports[1]}"

printf 'http://127.0.0.1:%s\n' "${replica_ports[@]}" > "$work/endpoints"
"$mpp" --endpoints-file "$work/endpoints" --port "$port" --selection-interval 5s &
pids+=($!)
for _ in $(seq 1 50); do
    curl -fs "http://127.0.0.1:$port/mpp/health" >/dev/null 2>&1 && break
    sleep 0.1
done

cat <<TXT

mpp is running in front of two Prometheus replicas:
  Prometheus UI, through the proxy:  http://localhost:$port/
  mpp status page:                   http://localhost:$port/mpp/status
  mpp metrics:                       http://localhost:$port/mpp/metrics
  a query:     curl -s 'http://localhost:$port/api/v1/query?query=up' -D - 
  endpoints file: $work/endpoints  (edit it; mpp sees changes at once)
Kill a replica (kill ${pids[0]}) and watch the status page switch. Ctrl-C stops everything.
TXT
wait "${pids[-1]}"
