#!/usr/bin/env python3
"""What grows with a deployment (`make bench`, after coverage.py and cache.py).

1. The coverage scan at a real size: two real Prometheus replicas holding 500 targets'
   `up` every 15 s for 14 days (backfilled with `promtool tsdb create-blocks-from
   openmetrics`); B lacks two hours a week ago and A twenty minutes six days ago (deleted
   through the admin API, as an outage leaves them). mpp is started in front of them: the time
   to its first answer, the start-up scan's wall time, its queries (and their points: never
   over Prometheus's 11,000 per series), the CPU seconds the replicas spent answering it
   (`process_cpu_seconds_total`), where it put B's hole, and what mpp's rescans cost the
   replicas: their CPU with mpp running less their CPU with mpp paused, in alternating
   windows, as a share of one core.
2. A 100 MB `query_range` answer assembled from slices of the two replicas (500 series of
   11,000 steps over both holes) beside the same query asked of one replica directly: time
   per answer and mpp's peak resident memory.
3. Many clients: 10,000 idle keep-alive connections (each has had one answer) to mpp in front
   of a fast backend: mpp's resident memory before and with them, and the requests/s of 32
   busy connections beside them against the same load without them.

Prints a Markdown section and, with --write, puts it into BENCHMARKS.md between markers.
"""

import argparse
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared helpers: processes, ports, wrk)

BEGIN, END = "<!-- scale: written by bench/scale.py -->", "<!-- /scale -->"
TARGETS = 500
SCRAPE = 15
DAYS = 14
IDLE = 10_000


def get(url, timeout=120):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def metric(url, name):
    """A sample's value from a `/metrics` page (the first series of `name`)."""
    text = get(url).decode()
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def backfill(work, start, end):
    """`up` of TARGETS targets every SCRAPE seconds from `start` to `end` (both on a 2-hour
    boundary), as a TSDB in work/data-a, copied to work/data-b. A day per promtool run: promtool
    cuts 2-hour blocks and reads its whole input once for each, so one input of 14 days would
    be read 168 times."""
    prefixes = [f'up{{job="node",instance="target-{i:03}:9100"}} 1 ' for i in range(TARGETS)]
    source = work / "backfill.om"
    for day in range(start, end, 86400):
        with open(source, "w", buffering=1 << 20) as out:
            out.write("# HELP up backfilled\n# TYPE up gauge\n")
            for t in range(day, min(day + 86400, end), SCRAPE):
                suffix = f"{t}\n"
                out.write(suffix.join(prefixes) + suffix)
            out.write("# EOF\n")
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(source),
                        str(work / "data-a")], check=True, capture_output=True)
    source.unlink()
    shutil.copytree(work / "data-a", work / "data-b")


def start_replica(procs, work, name, port):
    config = work / f"{name}.yml"
    config.write_text(f"global: {{scrape_interval: {SCRAPE}s}}\nscrape_configs:\n"
                      f"  - job_name: self\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
    return procs.start(name, ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={work / f'data-{name}'}",
                              f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=60d",
                              "--web.enable-admin-api"])


def delete(port, start, end):
    """Deletes `up{job="node"}` in [start, end] from the replica on `port`: the hole an outage
    leaves."""
    query = urllib.parse.urlencode({"match[]": 'up{job="node"}', "start": start, "end": end})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/admin/tsdb/delete_series?{query}", method="POST")
    with urllib.request.urlopen(request, timeout=60) as r:
        if r.status != 204:
            sys.exit(f"deleting from the replica on {port}: {r.status}")


def cpu(port):
    return metric(f"http://127.0.0.1:{port}/metrics", "process_cpu_seconds_total")


def candidates(port):
    return json.loads(get(f"http://127.0.0.1:{port}/mpp/status?format=json"))["candidates"]


def scan(procs, work, args):
    now = int(time.time())
    # Up to the last 2-hour boundary: the backfilled blocks end before the replicas' own data.
    end = now // 7200 * 7200
    start = end - DAYS * 86400
    started = time.monotonic()
    print(f"  backfilling {TARGETS} targets x {DAYS} days every {SCRAPE} s ...", flush=True)
    backfill(work, start, end)
    print(f"  backfilled in {time.monotonic() - started:.0f} s", flush=True)
    ports = dict(zip("ab", bench.free_ports(2)))
    for name, port in ports.items():
        start_replica(procs, work, name, port)
    for port in ports.values():
        bench.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=120)
    b_hole = (now - 7 * 86400, now - 7 * 86400 + 7200)
    a_hole = (now - 6 * 86400, now - 6 * 86400 + 1200)
    delete(ports["b"], *b_hole)
    delete(ports["a"], *a_hole)
    # The bucket comes from the replicas' scrape interval: wait until they list their target.
    for port in ports.values():
        deadline = time.monotonic() + 60
        while not json.loads(get(f"http://127.0.0.1:{port}/api/v1/targets?state=active"))["data"]["activeTargets"]:
            if time.monotonic() > deadline:
                sys.exit("the replicas list no targets")
            time.sleep(0.2)
    # A replica started on 14 days of 2-hour blocks compacts them into larger ones at its
    # first compaction check, a minute after it opened them (about 2.8 s of CPU in one go,
    # as much as mpp's whole scan): wait for that check on both, then for their CPU to settle,
    # so that what follows counts mpp's queries, not that.
    for port in ports.values():
        deadline = time.monotonic() + 180
        while metric(f"http://127.0.0.1:{port}/metrics", "prometheus_tsdb_compactions_triggered_total") < 1:
            if time.monotonic() > deadline:
                sys.exit("the replicas ran no compaction check within 180 s")
            time.sleep(1)
    settled = time.monotonic()
    while max(replica_cpu_over(ports, 10).values()) > 0.01 and time.monotonic() - settled < 600:
        pass
    baseline = replica_cpu_over(ports, 30)
    print(f"  replicas settled after {time.monotonic() - settled:.0f} s; alone {baseline}", flush=True)
    cpu_before = {name: cpu(port) for name, port in ports.items()}
    port = bench.free_port()
    launched = time.monotonic()
    mpp = bench.start_mpp(procs, work, port, list(ports.values()), name="mpp-scale",
                          extra=["--cache-max-bytes=0", "--merge-max-bytes=512MiB"])
    first = None
    while first is None:
        try:
            get(f"http://127.0.0.1:{port}/api/v1/query?query=up", timeout=5)
            first = time.monotonic() - launched
        except OSError:
            if time.monotonic() - launched > 60:
                sys.exit("mpp gave no answer within 60 s")
            time.sleep(0.01)
    # The scan is done when both replicas' coverage reaches the last minutes and B's hole is
    # on the map.
    while True:
        found = candidates(port)
        done = all(c.get("coverage") and c["coverage"]["to"] >= now - 300 for c in found)
        holes = {c["url"]: c["coverage"]["holes"] for c in found if c.get("coverage")}
        if done and all(holes.values()):
            break
        if time.monotonic() - launched > 600:
            sys.exit(f"the start-up scan did not finish within 600 s: {found}")
        time.sleep(0.05)
    took = time.monotonic() - launched
    cpu_scan = {name: cpu(p) - cpu_before[name] for name, p in ports.items()}
    queries = bench_metric(port, "mpp_coverage_scan_queries_total")
    bucket = found[0]["coverage"]["bucket_seconds"]
    b_found = holes[f"http://127.0.0.1:{ports['b']}"]
    print(f"  first answer {first:.2f} s, scan {took:.1f} s, {queries:.0f} queries, replica CPU {cpu_scan}", flush=True)
    # Rescans: what mpp costs the replicas once the scan is done, as the replicas' CPU with mpp
    # running beside the same with mpp paused (SIGSTOP), in alternating windows: the
    # replicas' own upkeep (compaction of the backfilled blocks, garbage collection after the
    # scan) drifts over minutes and falls on both alike instead of counting as mpp's.
    # After the scan's big reads the replicas' garbage collection runs for a while (over 2 %
    # of a core for the first minute and a half in one run): settled first.
    settled_after = time.monotonic()
    while max(replica_cpu_over(ports, 10).values()) > 0.01 and time.monotonic() - settled_after < 300:
        pass
    running, paused = rescan_windows(ports, mpp, args.rescan_seconds)
    rescan = {name: running[name] - paused[name] for name in ports}
    q_rescan = bench_metric(port, "mpp_coverage_scan_queries_total") - queries
    print(f"  rescans: replica CPU {running} with mpp running, {paused} paused, "
          f"{q_rescan:.0f} queries", flush=True)
    sliced = big_sliced(port, ports, start, mpp)
    return {
        "first": first, "took": took, "queries": queries, "bucket": bucket, "cpu_scan": cpu_scan,
        "buckets": (now - start) / bucket, "b_hole": b_hole, "b_found": b_found, "rescan": rescan,
        "rescan_queries": q_rescan, "sliced": sliced, "baseline": baseline, "running": running,
        "paused": paused, "rescan_seconds": args.rescan_seconds,
    }


def rescan_windows(ports, mpp, seconds, pairs=3):
    """Each replica's mean CPU share (of one core) over `pairs` windows of `seconds` with mpp
    running, and over as many with it paused, the two alternating; mpp runs on afterwards."""
    running = {name: 0.0 for name in ports}
    paused = {name: 0.0 for name in ports}
    try:
        for _ in range(pairs):
            for sig, into in ((signal.SIGCONT, running), (signal.SIGSTOP, paused)):
                os.kill(mpp.pid, sig)
                shares = replica_cpu_over(ports, seconds)
                print(f"    mpp {'running' if into is running else 'paused'}: "
                      + ", ".join(f"{name} {100 * share:.2f} %" for name, share in shares.items()), flush=True)
                for name, share in shares.items():
                    into[name] += share / pairs
    finally:
        os.kill(mpp.pid, signal.SIGCONT)
    return running, paused


def replica_cpu_over(ports, seconds):
    """Each replica's CPU over `seconds`, as a share of one core."""
    t0, c0 = time.monotonic(), {name: cpu(p) for name, p in ports.items()}
    time.sleep(seconds)
    return {name: (cpu(p) - c0[name]) / (time.monotonic() - t0) for name, p in ports.items()}


def bench_metric(port, name):
    return metric(f"http://127.0.0.1:{port}/mpp/metrics", name)


def timed(url, times):
    took, size, headers = [], 0, None
    for _ in range(times):
        t = time.monotonic()
        with urllib.request.urlopen(url, timeout=300) as r:
            size = len(r.read())
            headers = r.headers
        took.append(time.monotonic() - t)
    took.sort()
    return took[len(took) // 2], size, headers


def big_sliced(port, ports, start, mpp):
    """A 100 MB range answer over both holes, sliced through mpp and whole from A directly."""
    first = start + 86400
    query = urllib.parse.urlencode({"query": '1.5 * up{job="node"}', "start": first,
                                    "end": first + 10_999 * 60, "step": 60})
    path = f"/api/v1/query_range?{query}"
    idle = bench.rss_kib(mpp.pid)
    direct, size_direct, _ = timed(f"http://127.0.0.1:{ports['a']}{path}", 3)
    through, size, headers = timed(f"http://127.0.0.1:{port}{path}", 3)
    slices = headers.get("MPP-Slices") or ""
    if not slices:
        sys.exit(f"the 100 MB query was not sliced: {dict(headers)}")
    peak = bench.rss_kib(mpp.pid, "VmHWM")
    print(f"  100 MB: direct {direct:.2f} s ({size_direct / 1e6:.0f} MB), through mpp {through:.2f} s "
          f"({size / 1e6:.0f} MB, {slices.count(',') + 1} slices), mpp peak {peak / 1024:.0f} MiB", flush=True)
    return {"direct": direct, "through": through, "size": size, "slices": slices.count(",") + 1,
            "idle_mib": idle / 1024, "peak_mib": peak / 1024}


def many_clients(procs, work, args):
    """mpp's memory and the busy connections' requests/s beside IDLE idle ones."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, IDLE * 3)), hard))
    backend_port, port = bench.free_ports(2)
    big = work / "empty"
    big.write_bytes(b"")
    bench.nginx_backend(procs, work, [backend_port], big)
    bench.wait_http(f"http://127.0.0.1:{backend_port}/-/ready")
    # Room for the idle ones and the busy ones, well clear of the tenth kept free (under it, mpp
    # closes connections idle for a few seconds; the default, 10,000, is exactly the idle ones).
    mpp = bench.start_mpp(procs, work, port, [backend_port], name="mpp-clients",
                          extra=["--max-connections", str(2 * IDLE)])
    bench.wait_http(f"http://127.0.0.1:{port}/mpp/ready")
    url = f"http://127.0.0.1:{port}{bench.QUERY}"
    bench.wrk(url, 32, 2)
    before = bench.rss_kib(mpp.pid)
    alone = [bench.wrk(url, 32, args.seconds)["rps"] for _ in range(args.rounds)]
    idle = open_idle(port, IDLE)
    try:
        with_idle = bench.rss_kib(mpp.pid)
        beside = [bench.wrk(url, 32, args.seconds)["rps"] for _ in range(args.rounds)]
        still = sum(1 for s in idle if still_open(s))
    finally:
        for s in idle:
            s.close()
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    result = {"before_mib": before / 1024, "with_mib": with_idle / 1024, "alone": median(alone),
              "beside": median(beside), "open": still}
    print(f"  {IDLE} idle: RSS {result['before_mib']:.1f} -> {result['with_mib']:.1f} MiB; 32 busy "
          f"{result['alone']:.0f} req/s alone, {result['beside']:.0f} beside them ({still} still open)", flush=True)
    return result


def open_idle(port, count):
    """`count` connections, each with one answered request, left open."""
    request = b"GET /api/v1/query?query=up HTTP/1.1\r\nHost: mpp\r\n\r\n"
    sockets, sel = [], selectors.DefaultSelector()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, b"")
        sockets.append(s)
        # Keep the listen queue short: read what has come so far.
        if len(sockets) % 500 == 0:
            drain(sel, 0.0)
    deadline = time.monotonic() + 60
    while sel.get_map() and time.monotonic() < deadline:
        drain(sel, 0.5)
    if sel.get_map():
        sys.exit(f"{len(sel.get_map())} of {count} idle connections got no answer")
    return sockets


def drain(sel, timeout):
    """Reads answers; a socket whose answer is whole (its body ends the JSON) is unregistered."""
    for key, _ in sel.select(timeout):
        data = key.data + key.fileobj.recv(65536)
        if not data:
            sys.exit("mpp closed an idle connection before answering")
        if data.endswith(b"}}") or data.endswith(b"}]}}"):
            sel.unregister(key.fileobj)
        else:
            sel.modify(key.fileobj, selectors.EVENT_READ, data)


def still_open(s):
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def report(result, clients):
    lines = [BEGIN, "", "## At a real size", ""]
    if result:
        cpu_scan = result["cpu_scan"]
        b_start, b_end = result["b_hole"]
        found = ", ".join(f"{h['start'] - b_start:+.0f} s .. {h['end'] - b_end:+.0f} s" for h in result["b_found"])
        sliced = result["sliced"]
        lines += [
            f"**Coverage scan:** two real replicas with {TARGETS} targets' `up` every {SCRAPE} s for {DAYS} days "
            f"({TARGETS * DAYS * 86400 // SCRAPE:,} samples each); B lacks two hours a week ago, A twenty minutes "
            "six days ago.", "",
            "| | measured | target |", "| --- | ---: | ---: |",
            f"| first answer after start | {result['first']:.2f} s | ≤ 5 s |",
            f"| start-up scan, wall time | {result['took']:.1f} s | ≤ 60 s |",
            f"| its queries (bucket {result['bucket']:.0f} s, {result['buckets']:,.0f} buckets a replica) | "
            f"{result['queries']:.0f} | |",
            f"| replica CPU answering it | A {cpu_scan['a']:.1f} s, B {cpu_scan['b']:.1f} s | |",
            f"| replica CPU alone, once settled (30 s) | A {100 * result['baseline']['a']:.2f} %, "
            f"B {100 * result['baseline']['b']:.2f} % of a core | |",
            f"| replica CPU with mpp running ({result['rescan_queries']:.0f} rescan queries in "
            f"{3 * result['rescan_seconds']} s) | A {100 * result['running']['a']:.2f} %, "
            f"B {100 * result['running']['b']:.2f} % of a core | |",
            f"| the same with mpp paused, windows alternating ({result['rescan_seconds']} s each) | "
            f"A {100 * result['paused']['a']:.2f} %, B {100 * result['paused']['b']:.2f} % of a core | |",
            f"| what mpp's rescans and probes cost the replicas | A {100 * result['rescan']['a']:.2f} %, "
            f"B {100 * result['rescan']['b']:.2f} % of a core | ≤ 2 % |",
            "", f"B's hole as found, from the deleted stretch's edges: {found} (the replicas scrape every {SCRAPE} s).",
            "",
            f"**A {sliced['size'] / 1e6:.0f} MB answer from slices:** `1.5 * up{{job=\"node\"}}` over 11,000 steps "
            f"of a minute that both holes fall in, answered in {sliced['slices']} slices from the two replicas "
            f"(`--merge-max-bytes 512MiB`), beside the same query asked of A directly (median of 3):", "",
            "| | seconds | ratio |", "| --- | ---: | ---: |",
            f"| direct, one replica | {sliced['direct']:.2f} | 1.00 |",
            f"| through mpp, sliced | {sliced['through']:.2f} | {sliced['through'] / sliced['direct']:.2f} |",
            "", f"mpp's resident memory: {sliced['idle_mib']:.0f} MiB before, {sliced['peak_mib']:.0f} MiB at its peak.",
            ""]
    lines += [
        f"**Many clients:** {IDLE:,} idle keep-alive connections, each after one answer "
        f"({clients['open']:,} still open at the end):", "",
        "| | measured | target |", "| --- | ---: | ---: |",
        f"| mpp resident, before | {clients['before_mib']:.1f} MiB | |",
        f"| mpp resident, with them | {clients['with_mib']:.1f} MiB | ≤ 100 MiB |",
        f"| 32 busy connections, req/s alone | {clients['alone']:.0f} | |",
        f"| beside the idle ones | {clients['beside']:.0f} ({clients['beside'] / clients['alone']:.2f}x) | not slower |",
        "", END]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rescan-seconds", type=int, default=30,
                        help="each of the six alternating windows (mpp running, paused) of the rescans' cost")
    parser.add_argument("--no-scan", action="store_true", help="only the many clients")
    parser.add_argument("--write", action="store_true", help="put the section into BENCHMARKS.md")
    args = parser.parse_args()
    bench.require_with_prometheus()
    with tempfile.TemporaryDirectory(dir=bench.ROOT / "target") as tmp:
        work = Path(tmp)
        procs = bench.Processes(work)
        try:
            clients = many_clients(procs, work, args)
            procs.stop_all()
            result = None if args.no_scan else scan(procs, work, args)
        finally:
            procs.stop_all()
    section = report(result, clients)
    print(section)
    if args.write:
        bench.write_section(section, BEGIN, END)


if __name__ == "__main__":
    main()
