#!/usr/bin/env bash
# Records the Prometheus API answers that `src/merge.rs` is tested against: two real
# Prometheus replicas on loopback, each scraping both, one stopped for a few seconds and
# restarted, then the same queries asked of each over a range spanning the hole.
#
#   scripts/record-merge-fixtures.sh [OUT_DIR]   (default: tests/fixtures/merge)
#
# Needs `prometheus` (2.42 or later), curl and python3 (free ports, and a scrape target with a
# native histogram and exemplars). Takes about half a minute; KEEP_WORK=1 keeps the replicas'
# data and logs. The answers are saved as Prometheus sent them (one line of JSON each, no
# newline at the end): `a-*` from the replica that stayed up, `b-*` from the one stopped.
# The tests pin no timestamps or ports, only what the scenario makes true.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/tests/fixtures/merge}
prometheus=${PROMETHEUS:-prometheus}
work=$(mktemp -d -t mpp-merge-fixtures.XXXXXX)
pids=()

cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

# The target both replicas scrape besides each other, for what Prometheus 2.42's own metrics
# lack: a native histogram and exemplars.
cat > "$work/target.py" <<'PY'
# A target exposing one native histogram and one counter with exemplars, in Prometheus's
# protobuf format (what Prometheus 2.42 asks for with --enable-feature=native-histograms),
# encoded by hand so that nothing needs installing. Counts grow with time.
import http.server, struct, sys, time

START = time.time()

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def zigzag(n):
    return (n << 1) ^ (n >> 63)

def field(number, wire, payload):
    return varint(number << 3 | wire) + payload

def f_varint(number, n):
    return field(number, 0, varint(n))

def f_double(number, x):
    return field(number, 1, struct.pack("<d", x))

def f_bytes(number, b):
    return field(number, 2, varint(len(b)) + b)

def label(name, value):
    return f_bytes(1, name.encode()) + f_bytes(2, value.encode())

def family(name, help_, type_, metric):
    return f_bytes(1, name.encode()) + f_bytes(2, help_.encode()) + f_varint(3, type_) + f_bytes(4, metric)

def body():
    now = time.time()
    t = int((now - START) * 4)  # four observations a second
    # Schema 0: bucket i is (2^(i-1), 2^i]; buckets 0..2 are (0.5,1], (1,2], (2,4]; one
    # negative bucket [-1,-0.5); observations spread 1:2:1 with a few at zero and below.
    pos = [t, 2 * t, t]
    neg = [t // 4]
    zero = t // 8
    count = sum(pos) + sum(neg) + zero
    total = 0.75 * pos[0] + 1.5 * pos[1] + 3 * pos[2] - 0.75 * neg[0]
    hist = f_varint(1, count) + f_double(2, total) + f_varint(5, zigzag(0)) + f_double(6, 0.001) + f_varint(7, zero)
    hist += f_bytes(9, f_varint(1, zigzag(0)) + f_varint(2, 1))
    hist += f_bytes(10, varint(zigzag(neg[0])))
    hist += f_bytes(12, f_varint(1, zigzag(0)) + f_varint(2, 3))
    deltas, prev = b"", 0
    for c in pos:
        deltas += varint(zigzag(c - prev))
        prev = c
    hist += f_bytes(13, deltas)
    out = family("rpc_duration_seconds", "RPC latency.", 4, f_bytes(1, label("service", "api")) + f_bytes(7, hist))
    # A counter with an exemplar that changes every second, timestamped at that second.
    second = int(now)
    exemplar = f_bytes(1, label("trace_id", "%x" % (second * 2654435761 % 2**32))) + f_double(2, 1.0)
    exemplar += f_bytes(3, f_varint(1, second))
    counter = f_double(1, float(t)) + f_bytes(2, exemplar)
    out2 = family("rpc_requests_total", "RPCs served.", 0, f_bytes(1, label("service", "api")) + f_bytes(3, counter))
    return b"".join(varint(len(m)) + m for m in (out, out2))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        payload = body()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_a=$(free_port)
port_b=$(free_port)
port_target=$(free_port)

cat > "$work/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ['127.0.0.1:$port_a', '127.0.0.1:$port_b']}]
  - job_name: app
    static_configs: [{targets: ['127.0.0.1:$port_target']}]
YML

# A short lookback makes a one-second-scrape hole visible in `up` (the default, 5m, would
# bridge it with the last sample before the hole).
start_replica() { # name port; sets pid_<name>
    mkdir -p "$work/$1"
    "$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/$1" \
        --web.listen-address="127.0.0.1:$2" --query.lookback-delta=2s \
        --enable-feature=native-histograms,exemplar-storage >"$work/$1.log" 2>&1 &
    pids+=($!)
    eval "pid_$1=$!"
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$2/-/ready" >/dev/null && return 0
        sleep 0.1
    done
    echo "replica $1 did not become ready; its log:" >&2
    cat "$work/$1.log" >&2
    exit 1
}

now() { date +%s.%3N; }

python3 "$work/target.py" "$port_target" &
pids+=($!)
start_replica a "$port_a"
start_replica b "$port_b"
sleep 8
begin=$(now)
sleep 4
kill "$pid_b"
wait "$pid_b" 2>/dev/null || true
hole_start=$(now)
# A handler first used while B is down: a series B never scraped before its hole.
curl -sf "http://127.0.0.1:$port_a/api/v1/status/flags" >/dev/null
sleep 6
hole_end=$(now)
start_replica b "$port_b"
# Prometheus's discovery hands out targets about 5 s after start: B's hole lasts that much
# longer than its downtime, and it should have data again before the range ends.
sleep 10
end=$(now)
hole_mid=$(python3 -c "print(f'{($hole_start + $hole_end) / 2:.3f}')")

mkdir -p "$out"
ask() { # file-suffix path-and-query (curl --data-urlencode args follow)
    local name=$1 path=$2
    shift 2
    for r in a b; do
        local port_var="port_$r"
        curl -s -G "http://127.0.0.1:${!port_var}$path" "$@" >"$out/$r-$name.json"
    done
}
range=(--data-urlencode "start=$begin" --data-urlencode "end=$end" --data-urlencode step=1)

ask range-up /api/v1/query_range --data-urlencode query=up "${range[@]}"
ask range-up-down /api/v1/query_range --data-urlencode 'query=up == 0' "${range[@]}"
ask range-count /api/v1/query_range --data-urlencode 'query=count_over_time(up[2s])' "${range[@]}"
ask range-rate /api/v1/query_range \
    --data-urlencode 'query=rate(prometheus_http_requests_total{handler=~"/metrics|/api/v1/status/flags"}[5s])' "${range[@]}"
ask range-special /api/v1/query_range \
    --data-urlencode 'query=label_replace(vector(NaN), "v", "nan", "", "") or label_replace(vector(1/0), "v", "inf", "", "") or label_replace(vector(-1/0), "v", "-inf", "", "") or label_replace(vector(1e300), "v", "big", "", "")' \
    "${range[@]}"
ask range-histogram /api/v1/query_range --data-urlencode 'query=rpc_duration_seconds' "${range[@]}"
ask instant-up /api/v1/query --data-urlencode 'query=up' --data-urlencode "time=$hole_mid"
ask instant-up-down /api/v1/query --data-urlencode 'query=up == 0' --data-urlencode "time=$hole_mid"
ask instant-matrix /api/v1/query --data-urlencode 'query=up[3s]' --data-urlencode "time=$hole_end"
ask instant-histogram /api/v1/query --data-urlencode 'query=rpc_duration_seconds' --data-urlencode "time=$end"
ask instant-nan /api/v1/query --data-urlencode 'query=vector(NaN)' --data-urlencode "time=$end"
ask instant-scalar /api/v1/query --data-urlencode 'query=1/0' --data-urlencode "time=$end"
ask instant-scalar-neg /api/v1/query --data-urlencode 'query=-1/0' --data-urlencode "time=$end"
ask instant-string /api/v1/query --data-urlencode 'query="replica"' --data-urlencode "time=$end"
ask instant-error /api/v1/query --data-urlencode 'query=rate(up[' --data-urlencode "time=$end"
ask series /api/v1/series --data-urlencode 'match[]=up' \
    --data-urlencode 'match[]=prometheus_http_requests_total{handler="/api/v1/status/flags"}' \
    --data-urlencode "start=$hole_start" --data-urlencode "end=$hole_end"
ask labels /api/v1/labels --data-urlencode "start=$begin" --data-urlencode "end=$end"
ask label-values /api/v1/label/handler/values --data-urlencode "start=$hole_start" --data-urlencode "end=$hole_end"
ask label-job-values /api/v1/label/job/values
ask exemplars /api/v1/query_exemplars --data-urlencode 'query=rpc_requests_total' \
    --data-urlencode "start=$begin" --data-urlencode "end=$end"
echo "recorded into $out: range $begin..$end, B down $hole_start..$hole_end"
