#!/usr/bin/env python3
"""mpp's benchmark harness (`make bench`).

Measures, side by side in one run and in alternation (direct, mpp, nginx, HAProxy, Pingora,
repeated), the throughput and latency of the same fast backend reached directly and through
each proxy, under the same wrk load; then HTTP/2 clients (h2load) through mpp and nginx; then
mpp's memory (idle, and while streaming 4 x 1 GB), its time to the first proxied answer, and
the duration of one selection round over 200 candidates of which 20 accept connections and
never answer; and, over TLS, mpp (with a web config file) beside nginx terminating TLS in
front of the same backend. Writes BENCHMARKS.md.

Everything listens on 127.0.0.1; every process started here is stopped at the end.
Needs: wrk, h2load (nghttp2-client), nginx (nginx-light), haproxy, curl, openssl; mpp's
shipped build (`make dist`) and the Pingora reference (`bench/pingora`, built by `make bench`).
`--tls-only` runs just the TLS comparison and prints it, `--quick` just the HTTP/1.1 table
(BENCHMARKS.md is left alone by both).
"""

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# MPP_BIN points at another build (a debug one, for a smoke run of the harness itself).
MPP = Path(os.environ.get("MPP_BIN", ROOT / "target" / "dist" / "mpp")).resolve()
# The Pingora reference proxy (bench/pingora), built by `make bench`.
PINGORA = ROOT / "bench" / "pingora" / "target" / "release" / "pingora-bench"
TARGETS = ["direct", "mpp", "nginx", "haproxy", "pingora"]
QUERY = "/api/v1/query?query=up"
VECTOR = ('{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up",'
          '"instance":"127.0.0.1:9090","job":"prometheus"},"value":[1700000000.000,"1"]}]}}')
MARKER = "<!-- profile: kept by bench.py -->"
METRICS = 'prometheus_tsdb_head_samples_appended_total{type="float"} 123456\nprocess_start_time_seconds 1.7e9\n'


def free_ports(n):
    """`n` distinct free ports: each socket stays bound until all are chosen, so the kernel
    cannot hand out the same port twice."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port():
    return free_ports(1)[0]


def wait_http(url, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def rss_kib(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


class Processes:
    """Starts processes and stops them all at the end, whatever happens."""

    def __init__(self, work):
        self.work = work
        self.children = []

    def start(self, name, argv, **kw):
        log = open(self.work / f"{name}.log", "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)
        self.children.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.children):
            self.stop(p)


def nginx_backend(procs, work, ports, big_file):
    """A fast backend answering like Prometheus, on every port of `ports`."""
    listens = "\n".join(f"    listen 127.0.0.1:{p} reuseport backlog=4096;" for p in ports)
    conf = work / "backend.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/backend.pid;
error_log {work}/backend-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
{listens}
    location = /api/v1/query {{ default_type application/json; return 200 '{VECTOR}'; }}
    location = /metrics {{ default_type text/plain; return 200 '{METRICS}'; }}
    location = /-/ready {{ default_type text/plain; return 200 'Prometheus Server is Ready.'; }}
    location = /big {{ alias {big_file}; }}
  }}
}}
""")
    return procs.start("backend", ["nginx", "-c", str(conf), "-p", str(work)])


def nginx_proxy_argv(work, port, backend, workers=2):
    """nginx's command line in front of `backend` on `port`, its configuration written; with
    `workers=1`, one process (no master), so that callgrind sees all of it."""
    conf = work / f"proxy-nginx-{port}.conf"
    single = "master_process off;\n" if workers == 1 else ""
    conf.write_text(f"""
{single}worker_processes {workers};
daemon off;
pid {work}/proxy-nginx-{port}.pid;
error_log {work}/proxy-nginx-{port}-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream prometheus {{ server 127.0.0.1:{backend}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://prometheus;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    return ["nginx", "-c", str(conf), "-p", str(work)]


def nginx_proxy(procs, work, port, backend):
    return procs.start("proxy-nginx", nginx_proxy_argv(work, port, backend))


def self_signed_cert(work):
    """A certificate for 127.0.0.1 valid for one day, made for this run (ECDSA P-256, what
    both mpp and nginx then serve)."""
    cert, key = work / "tls-cert.pem", work / "tls-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def nginx_tls_proxy(procs, work, port, backend, cert, key):
    """nginx terminating TLS (HTTP/1.1, TLS 1.2 and 1.3) in front of the backend, as mpp does."""
    conf = work / "proxy-nginx-tls.conf"
    conf.write_text(f"""
worker_processes 2;
daemon off;
pid {work}/proxy-nginx-tls.pid;
error_log {work}/proxy-nginx-tls-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream prometheus {{ server 127.0.0.1:{backend}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} ssl backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://prometheus;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    return procs.start("proxy-nginx-tls", ["nginx", "-c", str(conf), "-p", str(work)])


def mpp_tls(procs, work, port, backend, cert, key):
    """mpp with a web config file that turns TLS on (no client certificates, no basic auth)."""
    web = work / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    return start_mpp(procs, work, port, [backend], name="mpp-tls", extra=["--web.config.file", str(web)])


def wait_https(url, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True)
        if r.stdout == "200":
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def tls_throughput(procs, work, backend, args):
    """mpp and nginx, both terminating TLS for the same backend, measured in alternation."""
    cert, key = self_signed_cert(work)
    mpp_port, nginx_port = free_ports(2)
    mpp = mpp_tls(procs, work, mpp_port, backend, cert, key)
    nginx = nginx_tls_proxy(procs, work, nginx_port, backend, cert, key)
    targets = [("mpp-tls", f"https://127.0.0.1:{mpp_port}{QUERY}", mpp.pid),
               ("nginx-tls", f"https://127.0.0.1:{nginx_port}{QUERY}", nginx.pid)]
    for _, url, _ in targets:
        wait_https(url)
    print("over TLS:", flush=True)
    return throughput(targets, args.rounds, args.seconds)


def tls_report(summary):
    lines = ["## Over TLS", "",
             "mpp with a web config file (`tls_server_config` only) beside nginx terminating TLS, both in",
             "front of the same backend over plain HTTP; the same certificate (ECDSA P-256), HTTP/1.1 with",
             "keep-alive (wrk), so the figures are the cost of encryption on the request path, not of",
             "handshakes.", "",
             "| connections | target | requests/s | p50 ms | p99 ms | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for (c, name), s in sorted(summary.items()):
        lines.append(f"| {c} | {name} | {s['rps']:.0f} | {s['p50']:.2f} | {s['p99']:.2f} | {s['errors']} |")
    lines += ["", "| connections | mpp-tls/nginx-tls req/s | mpp-tls/nginx-tls p99 |", "| --- | ---: | ---: |"]
    for c in sorted({c for c, _ in summary}):
        mp, ng = summary[(c, "mpp-tls")], summary[(c, "nginx-tls")]
        lines.append(f"| {c} | {mp['rps'] / ng['rps']:.2f} | {mp['p99'] / ng['p99']:.2f} |")
    return "\n".join(lines) + "\n"


def haproxy_argv(work, port, backend, threads=2):
    """HAProxy's command line in front of `backend` on `port`, its configuration written."""
    conf = work / f"haproxy-{port}.cfg"
    conf.write_text(f"""
global
  nbthread {threads}
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend prometheus
backend prometheus
  server p1 127.0.0.1:{backend}
""")
    return ["haproxy", "-f", str(conf), "-db"]


def haproxy(procs, work, port, backend):
    return procs.start("haproxy", haproxy_argv(work, port, backend))


def pingora(procs, port, backend):
    """Pingora's load balancer with its defaults, on 2 threads as nginx and HAProxy."""
    return procs.start("pingora", [str(PINGORA), f"127.0.0.1:{port}", f"127.0.0.1:{backend}", "2"])


def nginx_h2_proxy(procs, work, port, backend):
    """nginx as for HTTP/1.1, taking HTTP/2 in clear text (prior knowledge, as h2load speaks)."""
    conf = work / "proxy-nginx-h2.conf"
    conf.write_text(f"""
worker_processes 2;
daemon off;
pid {work}/proxy-nginx-h2.pid;
error_log {work}/proxy-nginx-h2-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  http2_max_requests 1000000;
  upstream prometheus {{ server 127.0.0.1:{backend}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} http2 backlog=4096;
    location / {{
      proxy_pass http://prometheus;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    return procs.start("proxy-nginx-h2", ["nginx", "-c", str(conf), "-p", str(work)])


# HTTP/2 loads: (connections, streams in flight on each).
H2_LOADS = [(32, 8), (256, 1)]


def h2load(url, connections, streams, seconds):
    out = subprocess.run(["h2load", f"-c{connections}", f"-m{streams}", "-t1", f"-D{seconds}",
                          "--warm-up-time=1", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    errors = int(m.group(2)) + int(m.group(3))
    m = re.search(r"status codes: (\d+) 2xx", out)
    succeeded = int(m.group(1)) if m else 0
    t = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    return {"rps": rps, "mean": parse_duration_ms(t.group(3)), "max": parse_duration_ms(t.group(2)),
            "errors": errors, "non2xx": int(re.search(r"(\d+) done", out).group(1)) - succeeded}


def h2_throughput(procs, work, backend, mpp_port, args):
    """h2load through mpp (its one listener speaks both) and through nginx, in alternation."""
    nginx_port = free_port()
    nginx_h2_proxy(procs, work, nginx_port, backend)
    targets = [("mpp-h2", f"http://127.0.0.1:{mpp_port}{QUERY}"), ("nginx-h2", f"http://127.0.0.1:{nginx_port}{QUERY}")]
    wait_h2(targets[1][1])
    print("HTTP/2 (h2load):", flush=True)
    results = {}
    for connections, streams in H2_LOADS:
        for _ in range(args.rounds):
            for name, url in targets:
                r = h2load(url, connections, streams, args.seconds)
                results.setdefault((connections, streams, name), []).append(r)
                print(f"  c={connections:<3} m={streams:<2} {name:<8} {r['rps']:>9.0f} req/s  mean {r['mean']:.2f} ms  "
                      f"max {r['max']:.2f} ms  errors {r['errors']}  non-2xx {r['non2xx']}", flush=True)
    summary = {}
    for key, runs in results.items():
        summary[key] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "mean", "max")}
        summary[key]["errors"] = sum(r["errors"] + r["non2xx"] for r in runs)
    return summary


def wait_h2(url, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = subprocess.run(["h2load", "-n1", "-c1", url], capture_output=True, text=True)
        if "1 succeeded" in r.stdout:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer over HTTP/2 within {timeout}s")


def h2_report(summary):
    lines = ["## HTTP/2 clients", "",
             "h2load (`-t1`, prior-knowledge HTTP/2 in clear text) through mpp and through nginx",
             "(`listen ... http2`), both in front of the same backend over HTTP/1.1; medians of the",
             "rounds. h2load reports the mean and the maximum time per request, not percentiles.", "",
             "| connections | streams each | target | requests/s | mean ms | max ms | errors |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for (c, m, name), s in sorted(summary.items()):
        lines.append(f"| {c} | {m} | {name} | {s['rps']:.0f} | {s['mean']:.2f} | {s['max']:.2f} | {s['errors']} |")
    lines += ["", "| connections | streams each | mpp-h2/nginx-h2 req/s | mpp-h2/nginx-h2 mean |", "| --- | --- | ---: | ---: |"]
    for c, m in H2_LOADS:
        mp, ng = summary[(c, m, "mpp-h2")], summary[(c, m, "nginx-h2")]
        lines.append(f"| {c} | {m} | {mp['rps'] / ng['rps']:.2f} | {mp['mean'] / ng['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def require_with_prometheus():
    """Exits, saying what to install, unless wrk, nginx, Prometheus, promtool and the dist
    build are there (the benchmarks that run real replicas)."""
    for tool in ("wrk", "nginx", "prometheus", "promtool"):
        if not any((Path(p) / tool).exists() for p in os.environ["PATH"].split(":") + ["/usr/sbin"]):
            sys.exit(f"{tool} is missing: apt-get install -y wrk nginx-light prometheus")
    if not MPP.exists():
        sys.exit(f"{MPP} is missing: make dist")


def write_section(section, begin, end):
    """Puts `section` (which starts with `begin` and ends with `end`) into BENCHMARKS.md, in
    place of the one written before, or at its end."""
    target = ROOT / "BENCHMARKS.md"
    text = target.read_text()
    if begin in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    target.write_text(text)


def start_mpp(procs, work, port, endpoints, name="mpp", extra=()):
    ep = work / f"{name}-endpoints"
    ep.write_text("".join(f"http://127.0.0.1:{p}\n" for p in endpoints))
    argv = [str(MPP), "--endpoints-file", str(ep), "--listen-address", f"127.0.0.1:{port}", *extra]
    return procs.start(name, argv, env={**os.environ, "NO_COLOR": "1"})


def parse_duration_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url, connections, seconds):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = parse_duration_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = parse_duration_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors}


def cpu_seconds(pid):
    """User and system CPU seconds of `pid` and its descendants (nginx's workers), from /proc."""
    parents, used = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        parents[int(d.name)] = int(fields[1])
        used[int(d.name)] = int(fields[11]) + int(fields[12])
    family, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return sum(used.get(p, 0) for p in family) / os.sysconf("SC_CLK_TCK")


def throughput(targets, rounds, seconds):
    """wrk against each of `targets` ((name, url, pid of the proxy or None)) in alternation;
    medians of requests/s, latency and the proxy's CPU time per request (microseconds)."""
    results = {}
    for connections in (32, 256):
        for _ in range(rounds):
            for name, url, pid in targets:
                before = cpu_seconds(pid) if pid else 0.0
                r = wrk(url, connections, seconds)
                r["cpu_us"] = (cpu_seconds(pid) - before) * 1e6 / max(r["rps"] * seconds, 1) if pid else 0.0
                results.setdefault((connections, name), []).append(r)
                print(f"  c={connections:<3} {name:<8} {r['rps']:>9.0f} req/s  p50 {r['p50']:.2f} ms  "
                      f"p99 {r['p99']:.2f} ms  CPU {r['cpu_us']:.1f} us/request  errors {r['errors']}", flush=True)
    summary = {}
    for key, runs in results.items():
        summary[key] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "cpu_us")}
        summary[key]["errors"] = sum(r["errors"] for r in runs)
    return summary


def stream_peak_rss(procs, work, backend_port, size_bytes, clients):
    port = free_port()
    p = start_mpp(procs, work, port, [backend_port], name="mpp-stream")
    wait_http(f"http://127.0.0.1:{port}/mpp/health")
    urls = [f"http://127.0.0.1:{port}/big"] * clients
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], rss_kib(p.pid))
            except Exception:
                pass
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    curls = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", u],
                              stdout=subprocess.PIPE, text=True) for u in urls]
    sizes = [int(c.communicate()[0] or 0) for c in curls]
    took = time.monotonic() - started
    done.set()
    sampler.join()
    hwm = rss_kib(p.pid, "VmHWM")
    procs.stop(p)
    if any(size != size_bytes for size in sizes):
        raise RuntimeError(f"streaming: expected {size_bytes} bytes per client, got {sizes}")
    return {"peak_kib": max(peak[0], hwm), "sizes": sizes, "seconds": took}


def stream_throughput(urls, size_bytes, rounds):
    """MB/s of one client fetching the big answer through each of `urls` ((name, url)), in
    alternation; medians."""
    speeds = {}
    for _ in range(rounds):
        for name, url in urls:
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}", url],
                                 capture_output=True, text=True, check=True).stdout.split()
            if int(out[0]) != size_bytes:
                raise RuntimeError(f"streaming through {name}: expected {size_bytes} bytes, got {out[0]}")
            speeds.setdefault(name, []).append(float(out[1]) / 1e6)
            print(f"  {name:<8} {speeds[name][-1]:>8.0f} MB/s", flush=True)
    return {name: statistics.median(v) for name, v in speeds.items()}


def idle_rss_and_first_answer(procs, work, backend_port):
    port = free_port()
    started = time.monotonic()
    p = start_mpp(procs, work, port, [backend_port], name="mpp-start")
    first = None
    while time.monotonic() - started < 10:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {QUERY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    first = time.monotonic() - started
                    break
        except OSError:
            time.sleep(0.001)
    time.sleep(2)
    idle = rss_kib(p.pid)
    procs.stop(p)
    return {"first_answer_ms": first * 1000 if first else None, "idle_kib": idle}


def selection_round(procs, work, healthy_ports):
    """200 candidates: the 180 healthy backend ports and 20 sockets that accept and never answer."""
    hung = []
    for _ in range(20):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1024)  # the kernel completes handshakes; nobody ever reads or answers
        hung.append(s)
    ports = list(healthy_ports) + [s.getsockname()[1] for s in hung]
    port = free_port()
    p = start_mpp(procs, work, port, ports, name="mpp-round", extra=["--selection-interval", "10s"])
    wait_http(f"http://127.0.0.1:{port}/mpp/health", timeout=15)
    with urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/mpp/status", headers={"Accept": "application/json"})) as r:
        status = json.load(r)
    procs.stop(p)
    for s in hung:
        s.close()
    viable = sum(1 for c in status["candidates"] if c["viable"])
    return {"round_ms": status["last_round_millis"], "candidates": len(status["candidates"]), "viable": viable}


def pingora_version():
    lock = ROOT / "bench" / "pingora" / "Cargo.lock"
    m = re.search(r'name = "pingora"\nversion = "([^"]+)"', lock.read_text()) if lock.exists() else None
    return m.group(1) if m else "unknown"


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    def version(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:
            return "unknown"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "kernel": platform.release(),
        "nginx": version(["nginx", "-v"]), "haproxy": version(["haproxy", "-v"]),
        "wrk": version(["wrk", "--version"]), "h2load": version(["h2load", "--version"]),
        "pingora": "pingora " + pingora_version(), "mpp": version([str(MPP), "--version"]),
    }


def throughput_table(summary):
    lines = ["| connections | target | requests/s | p50 ms | p99 ms | proxy CPU µs/request | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (c, name), s in sorted(summary.items(), key=lambda kv: (kv[0][0], TARGETS.index(kv[0][1]))):
        cpu = f"{s['cpu_us']:.1f}" if name != "direct" else "—"
        lines.append(f"| {c} | {name} | {s['rps']:.0f} | {s['p50']:.2f} | {s['p99']:.2f} | {cpu} | {s['errors']} |")
    lines += ["", "| connections | mpp/nginx req/s | mpp/HAProxy req/s | mpp/Pingora req/s | mpp/direct req/s | "
              "mpp/nginx p99 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in (32, 256):
        mp, ng, ha, pi, di = (summary[(c, n)] for n in ("mpp", "nginx", "haproxy", "pingora", "direct"))
        lines.append(f"| {c} | {mp['rps'] / ng['rps']:.2f} | {mp['rps'] / ha['rps']:.2f} | {mp['rps'] / pi['rps']:.2f} | "
                     f"{mp['rps'] / di['rps']:.2f} | {mp['p99'] / ng['p99']:.2f} |")
    return lines


def report(m, summary, stream, start, rnd, h2, tls, args):
    lines = ["# Benchmarks", "",
             "Written by `make bench` (`bench/bench.py`); numbers from the last run on the machine below.",
             "All five targets serve the same fast backend (nginx returning a fixed Prometheus",
             "answer) on 127.0.0.1, under the same `wrk -t1` load, measured in alternation",
             f"(direct, mpp, nginx, HAProxy, Pingora; {args.rounds} rounds of {args.seconds} s each); figures are",
             "medians. nginx, HAProxy and Pingora each run 2 workers (threads), set in their",
             "configurations; mpp runs its default (one serving thread per CPU less one: "
             f"{max(1, len(os.sched_getaffinity(0)) - 1)} here).", "",
             "## Machine", ""]
    for k, v in m.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Throughput and latency", ""]
    lines += throughput_table(summary)
    gib = stream["sizes"]
    lines += ["", "## Memory and start-up", "",
              f"- Peak RSS while {len(gib)} clients each stream a {args.stream_gib} GiB answer through mpp: "
              f"**{stream['peak_kib'] / 1024:.1f} MiB** (bytes received: {', '.join(str(s) for s in gib)}; "
              f"{stream['seconds']:.1f} s).",
              f"- One client streaming a {args.stream_gib} GiB answer, MB/s (median of {args.rounds}): " +
              ", ".join(f"{name} {speed:.0f}" for name, speed in stream["speeds"].items()) +
              f"; mpp/nginx **{stream['speeds']['mpp'] / stream['speeds']['nginx']:.2f}**, "
              f"mpp/HAProxy {stream['speeds']['mpp'] / stream['speeds']['haproxy']:.2f}.",
              f"- Idle RSS after start-up: **{start['idle_kib'] / 1024:.1f} MiB**.",
              f"- From process start to the first proxied answer: **{start['first_answer_ms']:.1f} ms**.",
              f"- One selection round over {rnd['candidates']} candidates, 20 of which accept connections and "
              f"never answer: **{rnd['round_ms']} ms** ({rnd['viable']} viable; the probe timeout is 3 s).", ""]
    return "\n".join(lines) + "\n" + h2_report(h2) + "\n" + tls_report(tls)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--stream-gib", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--tls-only", action="store_true", help="only mpp and nginx over TLS; print, write nothing")
    ap.add_argument("--quick", action="store_true", help="only the HTTP/1.1 throughput table; print, write nothing")
    args = ap.parse_args()
    for tool in ("wrk", "h2load", "nginx", "haproxy", "curl", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y wrk nghttp2-client nginx-light haproxy curl openssl")
    if not MPP.exists():
        sys.exit(f"build mpp first: make dist (looked for {MPP})")
    if not PINGORA.exists():
        sys.exit(f"build the Pingora reference first: make bench-pingora (looked for {PINGORA})")

    with tempfile.TemporaryDirectory(prefix="mpp-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers run unprivileged and must read the big file
        big = work / "big"
        with open(big, "wb") as f:
            f.truncate(args.stream_gib << 30)  # sparse: costs no disk
        procs = Processes(work)
        try:
            all_ports = free_ports(180)
            backend_ports = all_ports[:180]
            backend = backend_ports[0]
            nginx_backend(procs, work, backend_ports, big)
            wait_http(f"http://127.0.0.1:{backend}/-/ready")
            if args.tls_only:
                print(tls_report(tls_throughput(procs, work, backend, args)))
                return
            ports = dict(zip(("mpp", "nginx", "haproxy", "pingora"), free_ports(4)))
            pids = {
                "mpp": start_mpp(procs, work, ports["mpp"], [backend]).pid,
                "nginx": nginx_proxy(procs, work, ports["nginx"], backend).pid,
                "haproxy": haproxy(procs, work, ports["haproxy"], backend).pid,
                "pingora": pingora(procs, ports["pingora"], backend).pid,
            }
            for name, port in ports.items():
                wait_http(f"http://127.0.0.1:{port}{QUERY}")
            targets = [("direct", f"http://127.0.0.1:{backend}{QUERY}", None)] + \
                      [(name, f"http://127.0.0.1:{port}{QUERY}", pids[name]) for name, port in ports.items()]
            print("throughput and latency:", flush=True)
            summary = throughput(targets, args.rounds, args.seconds)
            if args.quick:
                print("\n".join(throughput_table(summary)))
                return
            h2 = h2_throughput(procs, work, backend, ports["mpp"], args)
            print("streaming, start-up and a selection round:", flush=True)
            stream = stream_peak_rss(procs, work, backend, args.stream_gib << 30, 4)
            big_urls = [("direct", f"http://127.0.0.1:{backend}/big")] + \
                       [(name, f"http://127.0.0.1:{ports[name]}/big") for name in ("mpp", "nginx", "haproxy")]
            stream["speeds"] = stream_throughput(big_urls, args.stream_gib << 30, args.rounds)
            start = idle_rss_and_first_answer(procs, work, backend)
            rnd = selection_round(procs, work, backend_ports)
            tls = tls_throughput(procs, work, backend, args)
        finally:
            procs.stop_all()
    text = report(machine(), summary, stream, start, rnd, h2, tls, args)
    print(text)
    # Everything from the marker on (the profile notes) is written by hand and kept.
    out = Path(args.out)
    kept = ""
    if out.exists() and MARKER in out.read_text():
        kept = out.read_text()[out.read_text().index(MARKER):]
    out.write_text(text + "\n" + kept)


if __name__ == "__main__":
    main()
