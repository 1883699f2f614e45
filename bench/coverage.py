#!/usr/bin/env python3
"""The cost of gap-free answers (`make bench`, after bench.py).

1. On the request path: requests/s for `query` and `query_range` through mpp with
   `--coverage-routing=true` beside the same mpp with `--coverage-routing=false`, in
   alternation, under the same wrk load. The two fake replicas (nginx) answer the coverage scan
   so that one of them has a hole an hour ago: every query sent to that one (half of them,
   with the `random` strategy) is parsed for its window and held against the coverage map. Once with the same query every time (a dashboard refreshing;
   the window is remembered per expression), once with a different expression each time (each
   one parsed).
2. The start-up scan: two real Prometheus replicas holding a day of backfilled `up` samples
   (20 targets every 15 s; each replica lacks 20 minutes of it, six hours apart); how long mpp
   takes from start to a complete coverage map, and how many queries it sends.
3. Sliced answers, on the same replicas: a dashboard query over the whole day (no replica holds
   every step, so it is answered in time slices) beside the same query over the last 6 hours
   (one replica holds it whole: one request) and beside the whole day asked of one replica
   directly; latency per query and the sub-range requests per sliced query.

Prints a Markdown section and, with --write, puts it into BENCHMARKS.md between markers.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared helpers: processes, ports, wrk)

BEGIN, END = "<!-- coverage: written by bench/coverage.py -->", "<!-- /coverage -->"
QUERY = "/api/v1/query?query=sum%20by%20(job)%20(rate(prometheus_http_requests_total%7Bcode%3D~%222..%22%7D%5B5m%5D))"


def fake_replicas(procs, work, ports, t0):
    """Two nginx 'replicas' that answer like Prometheus, the coverage scan included: the second
    lacks the samples of one bucket (an hour ago)."""
    servers = []
    for i, port in enumerate(ports):
        points = ",".join(f'[{t0 + 60 * k},"{0 if (i == 1 and k == 5) else 80}"]' for k in range(1, 11))
        counts = '{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[%s]}]}}' % points
        metrics = (f"prometheus_tsdb_head_samples_appended_total 123456\\nprocess_start_time_seconds 1.7e9\\n"
                   f"prometheus_tsdb_lowest_timestamp_seconds {t0}\\nprometheus_tsdb_head_max_time_seconds {t0 + 3600}\\n")
        servers.append(f"""
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location = /api/v1/query {{ default_type application/json; return 200 '{bench.VECTOR}'; }}
    location = /api/v1/query_range {{
      default_type application/json;
      if ($arg_query ~ count_over_time) {{ return 200 '{counts}'; }}
      return 200 '{bench.VECTOR}';
    }}
    location = /api/v1/targets {{ default_type application/json; return 200 '{{"status":"success","data":{{"activeTargets":[{{"scrapeInterval":"15s"}}]}}}}'; }}
    location = /api/v1/status/flags {{ default_type application/json; return 200 '{{"status":"success","data":{{"query.lookback-delta":"5m"}}}}'; }}
    location = /metrics {{ default_type text/plain; return 200 '{metrics}'; }}
    location = /-/ready {{ default_type text/plain; return 200 'Prometheus Server is Ready.'; }}
  }}""")
    conf = work / "replicas.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/replicas.pid;
error_log {work}/replicas-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
{''.join(servers)}
}}
""")
    return procs.start("replicas", ["nginx", "-c", str(conf), "-p", str(work)])


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/mpp/status?format=json", timeout=5) as r:
        return json.load(r)


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/mpp/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def request_path(procs, work, rounds, seconds):
    t0 = (int(time.time()) - 3600) // 60 * 60
    replica_ports = bench.free_ports(2)
    fake_replicas(procs, work, replica_ports, t0)
    for p in replica_ports:
        bench.wait_http(f"http://127.0.0.1:{p}/-/ready")
    on, off = bench.free_ports(2)
    # The dashboard cache off: this measures routing by coverage alone (bench/cache.py the cache).
    bench.start_mpp(procs, work, on, replica_ports, name="mpp-coverage",
                    extra=["--routing-strategy", "random", "--cache-max-bytes=0"])
    bench.start_mpp(procs, work, off, replica_ports, name="mpp-no-coverage",
                    extra=["--routing-strategy", "random", "--coverage-routing=false", "--cache-max-bytes=0"])
    for p in (on, off):
        bench.wait_http(f"http://127.0.0.1:{p}/mpp/ready")
    # The map must show the hole, or nothing is being measured.
    end = time.monotonic() + 20
    while not any(c.get("coverage") and c["coverage"]["holes"] for c in status(on)["candidates"]):
        if time.monotonic() > end:
            sys.exit("the coverage map never showed the fake replica's hole")
        time.sleep(0.1)
    now = int(time.time())
    query_range = QUERY.replace("/query?", "/query_range?") + f"&start={now - 3 * 3600}&end={now}&step=60"
    def distinct(name, query):
        """A wrk script sending `query` + N, N new each request: the window cannot be remembered."""
        script = work / name
        script.write_text('counter = 0\nrequest = function()\n  counter = counter + 1\n'
                          f'  return wrk.format("GET", "{query}" .. "%20%2B%20" .. counter)\nend\n')
        return script

    script = distinct("distinct.lua", QUERY)
    # The same, reading an hour back (`offset 55m`): its bound meets the hole, so it is parsed.
    near = distinct("distinct-near.lua", QUERY.replace("%5B5m%5D", "%5B5m%5D%20offset%2055m"))
    results = {}
    for connections in (32, 256):
        for _ in range(rounds):
            for name, port in (("on", on), ("off", off)):
                for what, path, lua in (("query", QUERY, None), ("query_range", query_range, None),
                                        ("query, distinct", QUERY, script),
                                        ("query, distinct, near the hole", QUERY, near)):
                    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
                    if lua:
                        argv += ["-s", str(lua)]
                    out = subprocess.run(argv + [f"http://127.0.0.1:{port}{path}"], capture_output=True,
                                         text=True, check=True).stdout
                    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                    results.setdefault((connections, what, name), []).append(rps)
                    print(f"  c={connections:<3} {what:<16} coverage {name:<3} {rps:>9.0f} req/s", flush=True)
    return {k: sorted(v)[len(v) // 2] for k, v in results.items()}


def backfill(directory, start, end, gap=None):
    """A day of `up` for 20 targets every 15 s, written into a TSDB with promtool."""
    lines = ["# HELP up backfilled", "# TYPE up gauge"]
    for t in range(start, end, 15):
        if gap and gap[0] <= t < gap[1]:
            continue
        lines.extend(f'up{{job="node",instance="n{i}"}} 1 {t}' for i in range(20))
    lines.append("# EOF")
    source = directory / "backfill.om"
    source.write_text("\n".join(lines) + "\n")
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(directory / "data")],
                   check=True, capture_output=True)


def startup_scan(procs, work):
    now = int(time.time())
    start, end = now - 86400 - 3600, now - 3600
    ports = bench.free_ports(2)
    for i, port in enumerate(ports):
        d = work / f"prom{i}"
        d.mkdir()
        gap_at = start + (43200 if i == 1 else 21600)
        backfill(d, start, end, gap=(gap_at, gap_at + 1200))
        (d / "prometheus.yml").write_text("global: {scrape_interval: 15s}\nscrape_configs:\n"
                                          f"  - job_name: self\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
        procs.start(f"prom{i}", ["prometheus", f"--config.file={d / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--storage.tsdb.retention.time=30d"])
    for port in ports:
        bench.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
    # Prometheus starts scraping a few seconds after it is ready: wait until it has targets.
    for port in ports:
        end_wait = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets?state=active") as r:
                if json.load(r)["data"]["activeTargets"]:
                    break
            if time.monotonic() > end_wait:
                sys.exit("the replicas list no targets")
            time.sleep(0.2)
    port = bench.free_port()
    started = time.monotonic()
    bench.start_mpp(procs, work, port, ports, name="mpp-scan", extra=["--cache-max-bytes=0"])
    bench.wait_http(f"http://127.0.0.1:{port}/mpp/health", timeout=60)
    answered = time.monotonic() - started
    while True:
        candidates = status(port)["candidates"]
        if all(c.get("coverage") for c in candidates) and any(c["coverage"]["holes"] for c in candidates):
            break
        if time.monotonic() - started > 120:
            sys.exit("the start-up scan did not finish within 120 s")
        time.sleep(0.05)
    took = time.monotonic() - started
    holes = [h for c in candidates for h in c["coverage"]["holes"]]
    sliced = sliced_latency(port, ports, start, end)
    return {
        "sliced": sliced,
        "first_answer_s": answered,
        "map_s": took,
        "queries": metric(port, "mpp_coverage_scan_queries_total"),
        "bucket_s": candidates[0]["coverage"]["bucket_seconds"],
        "hole_minutes": sum(h["end"] - h["start"] for h in holes) / 60,
        "samples": 20 * 86400 // 15,
    }


SLICED_QUERY = "sum(count_over_time(up[5m]))"


def timed_gets(url, times):
    """Latencies (ms) of `times` GETs of `url`, one after another, and the last answer's headers."""
    took, headers = [], None
    for _ in range(times):
        t = time.monotonic()
        with urllib.request.urlopen(url, timeout=60) as r:
            r.read()
            headers = r.headers
        took.append((time.monotonic() - t) * 1000)
    took.sort()
    return took, headers


def sliced_latency(port, replica_ports, start, end, times=40):
    """Latency of a range query answered in slices beside one answered by one replica."""
    quoted = urllib.parse.quote(SLICED_QUERY)
    day = f"/api/v1/query_range?query={quoted}&start={start + 600}&end={end}&step=60"
    recent = f"/api/v1/query_range?query={quoted}&start={end - 6 * 3600}&end={end}&step=60"
    sliced_before = metric(port, 'mpp_merged_requests_total{endpoint="query_range",outcome="sliced"}')
    slices_before = metric(port, "mpp_slice_requests_total")
    results = {}
    for name, url in (("day, sliced", f"http://127.0.0.1:{port}{day}"),
                      ("6 h, one replica", f"http://127.0.0.1:{port}{recent}"),
                      ("day, direct", f"http://127.0.0.1:{replica_ports[0]}{day}")):
        took, headers = timed_gets(url, times)
        results[name] = {"p50": took[len(took) // 2], "p90": took[int(len(took) * 0.9)],
                         "slices": headers.get("MPP-Slices")}
        print(f"  {name:<18} p50 {results[name]['p50']:.1f} ms  p90 {results[name]['p90']:.1f} ms", flush=True)
    sliced = metric(port, 'mpp_merged_requests_total{endpoint="query_range",outcome="sliced"}') - sliced_before
    slices = metric(port, "mpp_slice_requests_total") - slices_before
    if not results["day, sliced"]["slices"] or sliced < times:
        sys.exit(f"the day-long query was not sliced ({sliced:.0f} sliced answers): nothing measured")
    results["per_query"] = slices / sliced
    return results


def report(path_results, scan, rounds, seconds):
    lines = [BEGIN, "", "## Gap-free answers: their cost", "",
             f"Request path ({rounds} rounds of {seconds} s, medians; `wrk -t1`; two fake replicas, one with a",
             "hole an hour ago, and the `random` strategy: the half of the requests that go to the replica",
             "with the hole are held against the coverage map; a replica without a hole covers any window,",
             "so the other half are not):", "",
             "| connections | request | coverage routing on | off | on/off |", "| --- | --- | ---: | ---: | ---: |"]
    for (connections, what, name), rps in sorted(path_results.items()):
        if name != "on":
            continue
        off = path_results[(connections, what, "off")]
        lines.append(f"| {connections} | {what} | {rps:.0f} | {off:.0f} | {rps / off:.2f} |")
    lines += ["", "`query` and `query_range` repeat one expression (a dashboard refreshing: its window is",
              "remembered per serving thread); `query, distinct` sends a new expression every time, reading",
              "the last minutes: its bound from the text alone clears the hole, so it is not parsed;",
              "`query, distinct, near the hole` sends new expressions reading an hour back (`offset 55m`),",
              "whose bound meets the hole, so each is parsed with promql-parser.", ""]
    if scan:
        lines += [f"Start-up scan: two real replicas with a day of `up` ({scan['samples']:,} samples per",
                  f"replica, 20 targets every 15 s; each lacks 20 minutes, six hours apart): mpp answered its first request",
                  f"{scan['first_answer_s']:.2f} s after it was started and had the complete map after",
                  f"{scan['map_s']:.2f} s, having sent {scan['queries']:.0f} range queries (bucket "
                  f"{scan['bucket_s']:.0f} s); the holes found add up to {scan['hole_minutes']:.0f} minutes.", ""]
        sliced = scan["sliced"]
        lines += [f"Sliced answers on those replicas (`{SLICED_QUERY}`, step 60 s, 40 requests each,",
                  "one after another): a day no replica holds whole is answered in "
                  f"{sliced['per_query']:.1f} sub-range requests per query.", "",
                  "| query | p50 ms | p90 ms |", "| --- | ---: | ---: |"]
        for name in ("day, sliced", "6 h, one replica", "day, direct"):
            lines.append(f"| {name} | {sliced[name]['p50']:.1f} | {sliced[name]['p90']:.1f} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="put the section into BENCHMARKS.md")
    parser.add_argument("--no-scan", action="store_true", help="skip the start-up scan")
    args = parser.parse_args()
    bench.require_with_prometheus()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = bench.Processes(work)
        try:
            path_results = request_path(procs, work, args.rounds, args.seconds)
            scan = None if args.no_scan else startup_scan(procs, work)
        finally:
            procs.stop_all()
    section = report(path_results, scan, args.rounds, args.seconds)
    print(section)
    if args.write:
        bench.write_section(section, BEGIN, END)


if __name__ == "__main__":
    main()
