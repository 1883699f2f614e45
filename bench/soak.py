#!/usr/bin/env python3
"""A soak run (`make soak`): mpp in front of three real Prometheus replicas for a long time
(10 minutes by default) under GET and POST query load from wrk, while the replicas are
killed (-9) and started again one at a time. Reports the requests made, the errors clients
saw (wrk's socket errors and non-2xx answers) and mpp's RSS at the start and the end.

Everything listens on 127.0.0.1; every process started here is stopped at the end.
Needs: prometheus, wrk, and mpp's shipped build (`make dist`).
"""

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench import MPP, Processes, free_ports, rss_kib, wait_http

POST_SCRIPT = """
wrk.method = "POST"
wrk.body = "query=count(up)"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
"""


def start_replica(procs, work, port):
    d = work / f"replica-{port}"
    d.mkdir(exist_ok=True)
    (d / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: prometheus\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
    p = procs.start(f"replica-{port}", ["prometheus", f"--config.file={d}/prometheus.yml",
                                         f"--storage.tsdb.path={d}/data", f"--web.listen-address=127.0.0.1:{port}",
                                         "--log.level=warn"])
    wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=30)
    return p


def wrk_totals(out):
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return requests, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--strategy", default="random")
    ap.add_argument("--churn-every", type=float, default=5.0, help="seconds between two kills")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpp-soak-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            *ports, port = free_ports(4)
            replicas = [start_replica(procs, work, p) for p in ports]
            endpoints = work / "endpoints"
            endpoints.write_text("".join(f"http://127.0.0.1:{p}\n" for p in ports))
            mpp = procs.start("mpp", [str(MPP), "--endpoints-file", str(endpoints), "--listen-address",
                                      f"127.0.0.1:{port}", "--routing-strategy", args.strategy])
            wait_http(f"http://127.0.0.1:{port}/mpp/health")
            time.sleep(1)
            rss_start = rss_kib(mpp.pid)
            (work / "post.lua").write_text(POST_SCRIPT)
            base = f"http://127.0.0.1:{port}/api/v1/query"
            loads = [
                subprocess.Popen(["wrk", "-t1", "-c4", f"-d{args.seconds}s", f"{base}?query=up"],
                                 stdout=subprocess.PIPE, text=True),
                subprocess.Popen(["wrk", "-t1", "-c4", f"-d{args.seconds}s", "-s", str(work / "post.lua"), base],
                                 stdout=subprocess.PIPE, text=True),
            ]
            started, kills, i = time.monotonic(), 0, 0
            while time.monotonic() - started < args.seconds - args.churn_every:
                time.sleep(args.churn_every / 2)
                victim = i % 3
                replicas[victim].kill()
                replicas[victim].wait()
                kills += 1
                time.sleep(args.churn_every / 2)
                replicas[victim] = start_replica(procs, work, ports[victim])
                i += 1
            outs = [l.communicate()[0] for l in loads]
            rss_end = rss_kib(mpp.pid)
            hwm = rss_kib(mpp.pid, "VmHWM")
        finally:
            procs.stop_all()
    totals = [wrk_totals(o) for o in outs]
    requests, errors = sum(t[0] for t in totals), sum(t[1] for t in totals)
    print(f"soak: {args.seconds} s, strategy {args.strategy}, {kills} replica kills")
    print(f"requests: {requests} (GET {totals[0][0]}, POST {totals[1][0]}), client errors: {errors}")
    print(f"mpp RSS: {rss_start / 1024:.1f} MiB at the start, {rss_end / 1024:.1f} MiB at the end, "
          f"peak {hwm / 1024:.1f} MiB")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
