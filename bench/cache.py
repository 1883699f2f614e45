#!/usr/bin/env python3
"""The dashboard cache (`make bench`, after coverage.py).

1. Less work for the replicas: two real Prometheus replicas holding seven hours of
   backfilled samples (100 series every 15 s), each writing its query log. A 6-hour panel is
   refreshed 20 times, each refresh 30 s later than the last (the range slides as Grafana's
   does; the times are in the past, so no refresh waits), through an mpp with the cache and
   through one without (`--cache-max-bytes 0`). Figures: the range the replicas were asked for
   in all (from their query logs), their `prometheus_engine_query_duration_seconds` sum, and
   the refresh latency through mpp.
2. Bounded: 100,000 distinct range queries (a new expression each) through an mpp with
   `--cache-max-bytes 16MiB` and through one without the cache; the resident memory of each
   after them, and what the cache says it holds.

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

BEGIN, END = "<!-- cache: written by bench/cache.py -->", "<!-- /cache -->"
PANEL = "sum by (job) (avg_over_time(load[5m]))"
SERIES = 100
STEP = 15


def backfill(directory, start, end):
    """`load` for SERIES instances every STEP seconds, written into a TSDB with promtool."""
    lines = ["# HELP load backfilled", "# TYPE load gauge"]
    for t in range(start, end, STEP):
        lines.extend(f'load{{job="j{i % 5}",instance="n{i}"}} {(t // STEP + i) % 97} {t}' for i in range(SERIES))
    lines.append("# EOF")
    source = directory / "backfill.om"
    source.write_text("\n".join(lines) + "\n")
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(directory / "data")],
                   check=True, capture_output=True)


def replicas(procs, work, start, end):
    ports = bench.free_ports(2)
    for i, port in enumerate(ports):
        d = work / f"replica{i}"
        d.mkdir()
        backfill(d, start, end)
        (d / "prometheus.yml").write_text(
            f"global: {{scrape_interval: 15s, query_log_file: '{d / 'queries.log'}'}}\n"
            "scrape_configs:\n"
            f"  - job_name: self\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
        procs.start(f"replica{i}", ["prometheus", f"--config.file={d / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                    "--storage.tsdb.retention.time=30d"])
    for port in ports:
        bench.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
    return ports


def asked_range(work):
    """The seconds of range the replicas were asked for with the panel's expression so far,
    and how many such queries; a query counts its steps times its step, so that one asking
    for a single step (a refresh's new step) counts that step, not nothing."""
    seconds, queries = 0.0, 0
    for log in work.glob("replica*/queries.log"):
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            params = entry.get("params", {})
            if params.get("query") != PANEL:
                continue
            parse = lambda t: time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S"))  # noqa: E731
            seconds += parse(params["end"]) - parse(params["start"]) + float(params.get("step", 0))
            queries += 1
    return seconds, queries


def engine_seconds(ports):
    """The replicas' `prometheus_engine_query_duration_seconds` sums, over every slice, added."""
    total = 0.0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
            for line in r.read().decode().splitlines():
                if line.startswith("prometheus_engine_query_duration_seconds_sum"):
                    total += float(line.split()[-1])
    return total


def refreshes(port, t0, times=20):
    """Refreshes of the 6-hour panel, each 30 s later; latencies (ms) and the MPP-Cache results."""
    took, results = [], []
    for i in range(times):
        end = t0 + 30 * i
        path = (f"/api/v1/query_range?query={urllib.parse.quote(PANEL)}"
                f"&start={end - 6 * 3600}&end={end}&step=30")
        t = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
            r.read()
            results.append(r.headers.get("MPP-Cache"))
        took.append((time.monotonic() - t) * 1000)
    return took, results


def refresh_work(procs, work):
    now = int(time.time())
    start, end = (now - 7 * 3600) // STEP * STEP, (now - 1800) // STEP * STEP
    ports = replicas(procs, work, start, end)
    cached, uncached = bench.free_ports(2)
    bench.start_mpp(procs, work, cached, ports, name="mpp-cache")
    bench.start_mpp(procs, work, uncached, ports, name="mpp-no-cache", extra=["--cache-max-bytes=0"])
    for p in (cached, uncached):
        bench.wait_http(f"http://127.0.0.1:{p}/mpp/ready", timeout=60)
    # The last refresh ends before the backfilled data does (and outside the fresh window).
    t0 = end - 20 * 30
    results = {}
    for name, port in (("without the cache", uncached), ("with the cache", cached)):
        seconds_before, queries_before = asked_range(work)
        engine_before = engine_seconds(ports)
        took, answers = refreshes(port, t0)
        # Prometheus writes a query's log line before it answers: every one is in.
        seconds, queries = asked_range(work)
        results[name] = {
            "range_s": seconds - seconds_before,
            "queries": queries - queries_before,
            "engine_s": engine_seconds(ports) - engine_before,
            "p50": sorted(took)[len(took) // 2],
            "first": took[0],
            "rest_p50": sorted(took[1:])[len(took[1:]) // 2],
            "answers": answers,
        }
        r = results[name]
        print(f"  {name:<18} asked {r['range_s'] / 3600:7.2f} h in {r['queries']} queries, engine "
              f"{r['engine_s'] * 1000:7.1f} ms, refresh p50 {r['p50']:.1f} ms; {answers}", flush=True)
    return results


def bounded(procs, work, count=100_000):
    """RSS after `count` distinct cacheable range queries, with a 16 MiB cache and without one."""
    now = int(time.time())
    ports = bench.free_ports(1)
    backend = ports[0]
    big = work / "big"
    big.write_bytes(b"x")
    # A fake replica (nginx) that answers every range query with one small matrix at once.
    matrix = '{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"a"},"values":[[%d,"1"]]}]}}' % (now - 3600)
    conf = work / "nginx-cache.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {work / 'nginx-cache.pid'}; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{backend} reuseport backlog=4096;
    location = /api/v1/query_range {{ default_type application/json; return 200 '{matrix}'; }}
    location = /api/v1/query {{ default_type application/json; return 200 '{bench.VECTOR}'; }}
    location = /-/ready {{ return 200 'ready'; }}
    location = /metrics {{ return 200 'prometheus_tsdb_head_samples_appended_total 1\\n'; }}
    location / {{ default_type application/json; return 200 '{{"status":"success","data":[]}}'; }}
  }}
}}
""")
    procs.start("nginx-cache", ["nginx", "-c", str(conf), "-p", str(work)])
    bench.wait_http(f"http://127.0.0.1:{backend}/-/ready")
    out = {}
    for name, extra in (("16 MiB cache", ["--cache-max-bytes=16MiB"]), ("no cache", ["--cache-max-bytes=0"])):
        port = bench.free_port()
        p = bench.start_mpp(procs, work, port, [backend], name=f"mpp-bounded-{name[:2]}", extra=extra)
        bench.wait_http(f"http://127.0.0.1:{port}/mpp/ready", timeout=60)
        # A new expression each: every query is kept, until the budget evicts.
        uris = work / f"uris-{port}"
        uris.write_text("".join(f"http://127.0.0.1:{port}/api/v1/query_range?query=up%20%2B%20{i}"
                                f"&start={now - 7200}&end={now - 3600}&step=60\n" for i in range(count)))
        before = bench.rss_kib(p.pid)
        started = time.monotonic()
        # One connection: h2load starts every connection at the first URI.
        run = subprocess.run(["h2load", "--h1", "-c1", "-n", str(count), "-i", str(uris)],
                             capture_output=True, text=True, check=True).stdout
        took = time.monotonic() - started
        sent = int(re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", run).group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/mpp/status?format=json") as r:
            cache = json.load(r).get("cache") or {}
        out[name] = {"before_kib": before, "after_kib": bench.rss_kib(p.pid), "sent": sent, "took_s": took,
                     "cache_bytes": cache.get("bytes", 0), "entries": cache.get("entries", 0)}
        o = out[name]
        print(f"  {name:<14} {sent} queries in {took:.0f} s; RSS {o['before_kib'] / 1024:.1f} -> "
              f"{o['after_kib'] / 1024:.1f} MiB; cache holds {o['entries']} queries, {o['cache_bytes'] / 1048576:.1f} MiB",
              flush=True)
        procs.stop(p)
    return out


def report(refresh, bound):
    off, on = refresh["without the cache"], refresh["with the cache"]
    share = on["range_s"] / off["range_s"] if off["range_s"] else float("nan")
    lines = [BEGIN, "", "## Dashboard cache", "",
             f"A 6-hour panel (`{PANEL}`, step 30 s) refreshed 20 times, each 30 s later, through mpp",
             f"with the cache and without it, over two real replicas holding 7 hours of {SERIES} series",
             "every 15 s (the replicas' query logs and metrics give what they were asked for):", "",
             "| | range asked of the replicas | queries | replicas' engine time | refresh p50 | later refreshes p50 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in (("without the cache", off), ("with the cache", on)):
        lines.append(f"| {name} | {r['range_s'] / 3600:.2f} h | {r['queries']} | {r['engine_s'] * 1000:.1f} ms "
                     f"| {r['p50']:.1f} ms | {r['rest_p50']:.1f} ms |")
    lines += ["", f"With the cache the replicas were asked for {share * 100:.1f} % of the range (target: at most",
              "10 %): the first refresh whole, then the new 30 s of each.", ""]
    cached, plain = bound["16 MiB cache"], bound["no cache"]
    grown = (cached["after_kib"] - plain["after_kib"]) / 1024
    lines += [f"Bounded: {cached['sent']:,} distinct range queries (a new expression each) through mpp with",
              f"`--cache-max-bytes 16MiB`: resident memory {cached['after_kib'] / 1024:.1f} MiB after them, against",
              f"{plain['after_kib'] / 1024:.1f} MiB for the same queries without the cache ({grown:+.1f} MiB; the cache",
              f"says it holds {cached['entries']:,} queries in {cached['cache_bytes'] / 1048576:.1f} MiB).", "", END]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the section into BENCHMARKS.md")
    parser.add_argument("--queries", type=int, default=100_000, help="distinct queries for the memory bound")
    args = parser.parse_args()
    bench.require_with_prometheus()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = bench.Processes(work)
        try:
            refresh = refresh_work(procs, work)
            bound = bounded(procs, work, args.queries)
        finally:
            procs.stop_all()
    section = report(refresh, bound)
    print(section)
    if args.write:
        bench.write_section(section, BEGIN, END)


if __name__ == "__main__":
    main()
