#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind.

Requests per second move with whatever else the machine is doing; instructions do not. This
runs each mpp binary given (target/dist/mpp by default) under callgrind in front of the same
fast backend as bench.py, warms it up, then counts the instructions mpp's threads execute for
a fixed number of keep-alive requests (h2load over HTTP/1.1) and divides. Two builds compared
this way differ by what their code does, to a tenth of a percent from run to run. It does not
see the kernel's share (the system calls) or cache misses: `make bench` measures those.

    python3 bench/instructions.py [--requests N] [--connections C] [--no-references] [BINARY ...]

nginx and HAProxy are counted the same way beside mpp (nginx in one process, HAProxy on one
thread, with bench.py's configurations otherwise), and the ratios printed.

A BINARY may carry flags of its own, in one argument: `"target/dist/mpp --query-log-file=/tmp/q"`
counts the same build with its query log on. `--path` sends another request than bench.py's
instant query: `--path "/api/v1/query?query=up&time=1700000000"` is a dashboard cache hit
after the first (an instant query at a past time). `--keep DIR` keeps each proxy's callgrind dump there, for
`callgrind_annotate --inclusive=yes`.
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def mpp_argv(work, spec, backend, port):
    """mpp (`spec`: a binary and its flags) in front of `backend`, listening on `port`."""
    binary, *flags = spec.split()
    endpoints = work / f"endpoints-{port}"
    endpoints.write_text(f"http://127.0.0.1:{backend}\n")
    # Liveness checks and probes every 30 s, so that none falls in the counted stretch.
    return [str(binary), "--endpoints-file", str(endpoints), "--listen-address", f"127.0.0.1:{port}",
            "--liveness-interval", "30s", *flags]


def count(procs, work, name, argv, port, requests, connections, path, keep=None):
    """Instructions per request of the proxy `argv` (listening on `port`) under callgrind.

    With `keep` (a directory), callgrind's dump of the counted stretch is copied there, named
    after the proxy, for `callgrind_annotate`."""
    out = work / f"callgrind-{port}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no", *argv]
    process = procs.start(f"callgrind-{port}", argv)
    url = f"http://127.0.0.1:{port}{path}"
    bench.wait_http(url, timeout=120)

    def load(n):
        result = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", str(connections), url],
                                capture_output=True, text=True, check=True).stdout
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", result)
        if not done or int(done.group(2)) != n:
            sys.exit(f"not every request succeeded through {name}:\n{result}")

    load(2000)
    subprocess.run(["callgrind_control", "-z", str(process.pid)], check=True, capture_output=True)
    load(requests)
    subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True, capture_output=True)
    dump = Path(f"{out}.{process.pid}.1")
    for _ in range(100):
        if dump.exists() and "summary:" in dump.read_text(errors="replace"):
            break
        time.sleep(0.1)
    summary = re.search(r"^summary:\s+(\d+)", dump.read_text(errors="replace"), re.M)
    procs.stop(process)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(dump, Path(keep) / f"callgrind.{Path(name.split()[0]).name}-{port}")
    if not summary:
        sys.exit(f"callgrind wrote no summary for {name} ({dump})")
    return int(summary.group(1)) / requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binaries", nargs="*", default=[str(bench.ROOT / "target" / "dist" / "mpp")])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--path", default=bench.QUERY, help="the request's path and query")
    parser.add_argument("--keep", metavar="DIR", help="copy each proxy's callgrind dump into DIR")
    parser.add_argument("--no-references", action="store_true", help="count mpp only, not nginx and HAProxy")
    args = parser.parse_args()
    for tool, package in [("valgrind", "valgrind"), ("callgrind_control", "valgrind"), ("h2load", "nghttp2-client"),
                          ("nginx", "nginx-light"), ("haproxy", "haproxy")]:
        if subprocess.run(["sh", "-c", f"command -v {tool} || test -x /usr/sbin/{tool}"],
                          capture_output=True).returncode != 0:
            sys.exit(f"{tool} is missing: make bench-deps installs it (apt-get install -y {package})")
    work = Path(tempfile.mkdtemp(prefix="mpp-instructions-"))
    procs = bench.Processes(work)
    try:
        big = work / "big"
        big.write_bytes(b"x")
        backend = bench.free_port()
        bench.nginx_backend(procs, work, [backend], big)
        bench.wait_http(f"http://127.0.0.1:{backend}/-/ready")
        counted = {}
        proxies = [(binary, lambda port, b=binary: mpp_argv(work, b, backend, port)) for binary in args.binaries]
        if not args.no_references:
            proxies += [("nginx", lambda port: bench.nginx_proxy_argv(work, port, backend, workers=1)),
                        ("haproxy", lambda port: bench.haproxy_argv(work, port, backend, threads=1))]
        for name, argv in proxies:
            port = bench.free_port()
            counted[name] = count(procs, work, name, argv(port), port, args.requests, args.connections, args.path,
                                   args.keep)
            print(f"{name}: {counted[name]:,.0f} instructions per proxied request "
                  f"({args.requests} requests, {args.connections} connections, {args.path})", flush=True)
        for reference in ("nginx", "haproxy"):
            for binary in args.binaries if reference in counted else []:
                print(f"{binary} / {reference}: {counted[binary] / counted[reference]:.2f}")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
