#!/usr/bin/env python3
"""Side-by-side HTTP/1.1 proxy benchmark: direct, Ringside, nginx, HAProxy, Envoy.

Each proxy runs one worker pinned to CPU 0; the load generator and the backend (nginx
answering 1 KiB) share CPU 1. For every target, in one run:
  * throughput: wrk, keep-alive, fixed connections, median of N short runs;
  * proxy CPU per request from the process's utime+stime (/proc: the scheduler's
    nanosecond count per thread where the kernel keeps it, else clock ticks), as
    requests per proxy CPU-second;
  * fixed-rate latency: oha -q RATE --latency-correction -c 4: p50/p90/p99, the latency
    added over direct, and proxy CPU per request at that rate;
  * proxy RSS idle and after load.
Prints one Markdown table (ratios against nginx and direct) and writes it to perf/out/.
Run it through perf/compare.sh, which installs the tools.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICK = os.sysconf("SC_CLK_TCK")
PROXY_CPU, LOAD_CPU = "0", "1"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def tool(name):
    for cand in (shutil.which(name), os.path.expanduser(f"~/.cargo/bin/{name}"), f"/tmp/tools/bin/{name}"):
        if cand and os.path.exists(cand):
            return cand
    raise SystemExit(f"{name} not found: run perf/compare.sh, which installs it")


def render(template, out, **subst):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in subst.items():
        text = text.replace(f"__{k}__", str(v))
    with open(out, "w") as f:
        f.write(text)
    return out


def pids_of(proc):
    """The process and its children (nginx's workers)."""
    pids = [proc.pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    return pids


def schedstat_kept():
    """Whether this kernel keeps per-thread run time in schedstat (it reads zeros when off)."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[0]) > 0
    except (OSError, ValueError, IndexError):
        return False


SCHEDSTAT = schedstat_kept()


def cpu_seconds(pids):
    """utime+stime of the processes. The scheduler's own count (schedstat, nanoseconds,
    summed over threads) is the same time at a finer grain than /proc/PID/stat's clock
    ticks: at 1,000 req/s a 5-second run spends only ~50 ticks, so one tick was 2%."""
    total = 0
    if SCHEDSTAT:
        # One source for every reading of a run: a fallback mid-run would mix counts that
        # differ by the threads that already exited (stat keeps them, task/ does not).
        for pid in pids:
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for task in tasks:
                try:
                    with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                        total += int(f.read().split()[0])
                except OSError:
                    pass  # the thread exited between the listing and the read
        return total / 1e9
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICK


ISTIO_FILTERS = (
    "          - name: envoy.filters.http.grpc_stats\n"
    "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, "
    "emit_filter_state: true, stats_for_all_methods: false}\n"
    "          - name: envoy.filters.http.fault\n"
    "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}\n"
    "          - name: envoy.filters.http.cors\n"
    "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}\n"
)


def istio_filters(path):
    """istiod's default HTTP filters (grpc_stats, an empty fault filter, cors) before the router."""
    with open(path) as f:
        s = f.read()
    router = "          - name: envoy.filters.http.router\n"
    with open(path, "w") as f:
        f.write(s.replace(router, ISTIO_FILTERS + router))
    return path


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def wrk(url, seconds, conns):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, tool("wrk"), "-t1", f"-c{conns}", f"-d{seconds}s", url],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise SystemExit(f"wrk failed:\n{out}")


def oha(url, rate, seconds):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, tool("oha"), "-q", str(rate), "--latency-correction", "-c", "4",
                          "-z", f"{seconds}s", "--no-tui", "--output-format", "json", url],
                         capture_output=True, text=True).stdout
    data = json.loads(out)
    p = data["latencyPercentiles"]
    ok = sum(v for k, v in data.get("statusCodeDistribution", {}).items() if k.startswith("2"))
    return {"p50": p["p50"] * 1e6, "p90": p["p90"] * 1e6, "p99": p["p99"] * 1e6, "ok": ok}


class Target:
    def __init__(self, name, cmd, port, cwd=None):
        self.name, self.cmd, self.port, self.cwd = name, cmd, port, cwd
        self.proc = None

    def start(self, workdir):
        if self.cmd is None:
            return
        log = open(os.path.join(workdir, f"{self.name}.log"), "w")
        self.proc = subprocess.Popen(["taskset", "-c", PROXY_CPU] + self.cmd, stdout=log, stderr=log,
                                     cwd=self.cwd, start_new_session=True)
        wait_port(self.port)
        time.sleep(0.5)

    def pids(self):
        return pids_of(self.proc) if self.proc else []

    def stop(self):
        if self.proc:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def measure_round(t, args, row):
    """One round for one target: a wrk throughput run and an oha fixed-rate run."""
    url = f"http://127.0.0.1:{t.port}/"
    pids = t.pids()
    c0 = cpu_seconds(pids)
    rps = wrk(url, args.seconds, args.connections)
    c1 = cpu_seconds(pids)
    row["rps"].append(rps)
    row["rps_per_cpu"].append(rps * args.seconds / (c1 - c0) if pids and c1 > c0 else None)
    c0 = cpu_seconds(pids)
    lat = oha(url, args.rate, args.latency_seconds)
    c1 = cpu_seconds(pids)
    for k in ("p50", "p90", "p99"):
        row[k].append(lat[k])
    row["cpu_us_at_rate"].append((c1 - c0) / lat["ok"] * 1e6 if pids and lat["ok"] else None)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired_ratio(values, base):
    """The median over rounds of value / base in the same round. Host noise here moves
    whole minutes together (±30% between identical runs a minute apart), and the targets
    of one round run within about a minute of each other, so each round's ratio is read
    under one condition; a ratio of medians mixes conditions."""
    pairs = [v / b for v, b in zip(values, base) if v is not None and b]
    return median(pairs)


def fmt(v, spec="{:.0f}"):
    return "–" if v is None else spec.format(v)


def ratio(v):
    return "–" if v is None else f"{v:.2f}×"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--latency-seconds", type=int, default=5)
    ap.add_argument("--only", default="direct,ringside,ringside-epoll,nginx,haproxy,envoy",
                    help="comma-separated targets: direct, ringside, ringside-epoll, nginx, haproxy, envoy, "
                         "ringside-istio and envoy-istio (istiod's default HTTP filters before the router)")
    ap.add_argument("--ringside-build", action="append", default=[], metavar="NAME=PATH",
                    help="also measure another Ringside binary (before/after comparisons)")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="ringside-perf-")
    backend_port = free_port()
    body = "a" * 1024
    conf = render("backend-nginx.conf", os.path.join(workdir, "backend.conf"), DIR=workdir,
                  BACKEND_PORT=backend_port, BODY=body)
    backend = subprocess.Popen(["taskset", "-c", LOAD_CPU, tool("nginx"), "-c", conf, "-p", workdir],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(backend_port)

    targets = []
    only = args.only.split(",")
    if "direct" in only:
        targets.append(Target("direct", None, backend_port))
    if "ringside" in only:
        port = free_port()
        cfg = render("ringside.yaml", os.path.join(workdir, "ringside.yaml"), ADMIN_PORT=free_port(),
                     PROXY_PORT=port, BACKEND_PORT=backend_port)
        targets.append(Target("ringside", [os.path.join(ROOT, "target/release/ringside"), "-c", cfg,
                                           "--concurrency", "1", "-l", "warn"], port))
    if "ringside-epoll" in only:
        port = free_port()
        cfg = render("ringside.yaml", os.path.join(workdir, "ringside-epoll.yaml"), ADMIN_PORT=free_port(),
                     PROXY_PORT=port, BACKEND_PORT=backend_port)
        # Its own copy of the binary: two processes mapping the same file share its pages,
        # which hides Ringside's own idle footprint (MADV_PAGEOUT skips shared pages).
        epoll_bin = os.path.join(workdir, "ringside-epoll")
        shutil.copy(os.path.join(ROOT, "target/release/ringside"), epoll_bin)
        targets.append(Target("ringside-epoll", [epoll_bin, "-c", cfg,
                                                 "--concurrency", "1", "-l", "warn", "--io-driver", "legacy"], port))
    if "ringside-istio" in only:
        port = free_port()
        cfg = istio_filters(render("ringside.yaml", os.path.join(workdir, "ringside-istio.yaml"),
                                   ADMIN_PORT=free_port(), PROXY_PORT=port, BACKEND_PORT=backend_port))
        istio_bin = os.path.join(workdir, "ringside-istio")
        shutil.copy(os.path.join(ROOT, "target/release/ringside"), istio_bin)
        targets.append(Target("ringside-istio", [istio_bin, "-c", cfg, "--concurrency", "1", "-l", "warn"], port))
    for extra in args.ringside_build:
        name, path = extra.split("=", 1)
        port = free_port()
        cfg = render("ringside.yaml", os.path.join(workdir, f"{name}.yaml"), ADMIN_PORT=free_port(),
                     PROXY_PORT=port, BACKEND_PORT=backend_port)
        targets.append(Target(name, [os.path.abspath(path), "-c", cfg, "--concurrency", "1", "-l", "warn"], port))
    if "nginx" in only:
        port = free_port()
        cfg = render("proxy-nginx.conf", os.path.join(workdir, "proxy-nginx.conf"), DIR=workdir,
                     PROXY_PORT=port, BACKEND_PORT=backend_port)
        targets.append(Target("nginx", [tool("nginx"), "-c", cfg, "-p", workdir], port))
    if "haproxy" in only:
        port = free_port()
        cfg = render("proxy-haproxy.cfg", os.path.join(workdir, "haproxy.cfg"), PROXY_PORT=port,
                     BACKEND_PORT=backend_port)
        targets.append(Target("haproxy", [tool("haproxy"), "-f", cfg, "-db"], port))
    if "envoy" in only:
        port = free_port()
        cfg = render("ringside.yaml", os.path.join(workdir, "envoy.yaml"), ADMIN_PORT=free_port(),
                     PROXY_PORT=port, BACKEND_PORT=backend_port)
        targets.append(Target("envoy", [tool("envoy"), "-c", cfg, "--concurrency", "1", "-l", "error",
                                        "--base-id", str(os.getpid() % 50000), "--disable-hot-restart"], port))
    if "envoy-istio" in only:
        port = free_port()
        cfg = istio_filters(render("ringside.yaml", os.path.join(workdir, "envoy-istio.yaml"),
                                   ADMIN_PORT=free_port(), PROXY_PORT=port, BACKEND_PORT=backend_port))
        targets.append(Target("envoy-istio", [tool("envoy"), "-c", cfg, "--concurrency", "1", "-l", "error",
                                              "--base-id", str(os.getpid() % 50000 + 1), "--disable-hot-restart"],
                              port))
    # All targets run side by side (idle ones cost nothing) and are measured in interleaved
    # rounds, so that a noisy neighbour hits every target alike; medians are reported, and
    # ratios are taken round by round (paired_ratio).
    rows = {t.name: {"name": t.name, "rps": [], "rps_per_cpu": [], "p50": [], "p90": [], "p99": [],
                     "cpu_us_at_rate": []} for t in targets}
    try:
        for t in targets:
            t.start(workdir)
            rows[t.name]["rss_idle"] = rss_mb(t.pids()) if t.proc else None
        for t in targets:
            wrk(f"http://127.0.0.1:{t.port}/", 1, args.connections)  # warm-up: pools, caches
        for rnd in range(args.runs):
            # Every other round runs the targets in reverse, so none is always measured
            # right after the same neighbour or at the same point of a round.
            for t in (targets if rnd % 2 == 0 else targets[::-1]):
                print(f"round {rnd + 1}/{args.runs}: {t.name} ...", file=sys.stderr, flush=True)
                measure_round(t, args, rows[t.name])
        for t in targets:
            rows[t.name]["rss_after"] = rss_mb(t.pids()) if t.proc else None
    finally:
        for t in targets:
            t.stop()
        os.killpg(backend.pid, signal.SIGKILL)
    # Per round: added p99 over direct, then each ratio against that round's nginx, and
    # added p99 against the round's best peer (the lowest of nginx's, HAProxy's, Envoy's).
    for r in rows.values():
        if "direct" in rows and r["name"] != "direct":
            r["added"] = [v - d for v, d in zip(r["p99"], rows["direct"]["p99"])]
    positive = lambda xs: [x if x is not None and x > 0 else None for x in xs]
    base = rows.get("nginx", {})
    peers = [rows[n]["added"] for n in ("nginx", "haproxy", "envoy") if n in rows and "added" in rows[n]]
    best = positive([min(round_) for round_ in zip(*peers)]) if peers else []
    for r in rows.values():
        r["rpc_vs"] = paired_ratio(r["rps_per_cpu"], base.get("rps_per_cpu", []))
        r["cpu_vs"] = paired_ratio(r["cpu_us_at_rate"], base.get("cpu_us_at_rate", []))
        r["added_vs"] = paired_ratio(r.get("added", []), positive(base.get("added", [])))
        r["added_vs_best"] = paired_ratio(r.get("added", []), best)
        r["rpc_vs_envoy"] = paired_ratio(r["rps_per_cpu"], rows["envoy"]["rps_per_cpu"]) if "envoy" in rows else None
    rows = [{k: (median(v) if isinstance(v, list) else v) for k, v in r.items()} for r in rows.values()]
    lines = [
        f"| target | req/s (wrk, c={args.connections}) | req per proxy CPU-s | vs nginx | p50 µs | p90 µs | p99 µs "
        f"| added p99 µs vs direct | vs nginx | proxy CPU µs/req @ {args.rate}/s | vs nginx | RSS idle MB | RSS after MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {fmt(r['rps'])} | {fmt(r['rps_per_cpu'])} | {ratio(r['rpc_vs'])} "
            f"| {fmt(r['p50'])} | {fmt(r['p90'])} | {fmt(r['p99'])} | {fmt(r.get('added'), '{:+.0f}')} "
            f"| {ratio(r['added_vs'])} | {fmt(r['cpu_us_at_rate'], '{:.1f}')} | {ratio(r['cpu_vs'])} "
            f"| {fmt(r['rss_idle'], '{:.1f}')} | {fmt(r['rss_after'], '{:.1f}')} |"
        )
    table = "\n".join(lines)
    checks = []
    for r in rows:
        if not r["name"].startswith("ringside") or r["name"] == "ringside-epoll":
            continue
        checks.append(
            f"- {r['name']}: req per proxy CPU-s {ratio(r['rpc_vs'])} nginx (target ≥ 1.20×), "
            f"{ratio(r.get('rpc_vs_envoy'))} Envoy (≥ 2.50×); CPU per request at {args.rate}/s "
            f"{ratio(r['cpu_vs'])} nginx (≤ 0.75×); added p99 {ratio(r.get('added_vs_best'))} the best peer's "
            f"(≤ 0.80×); idle RSS {fmt(r['rss_idle'], '{:.1f}')} MB (≤ 6 MB)")
    if checks:
        table += "\n\nAgainst the targets (paired per round, as the ratio columns):\n" + "\n".join(checks)
    header = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs "
              f"({cpu_model()}), HTTP/1.1 keep-alive, 1 KiB responses, one proxy worker on CPU {PROXY_CPU}, "
              f"load generator and backend on CPU {LOAD_CPU}; medians of {args.runs} interleaved rounds (every "
              f"other one in reverse order), each "
              f"wrk -c{args.connections} for {args.seconds}s and oha -q {args.rate} --latency-correction -c 4 "
              f"for {args.latency_seconds}s. Ratios are medians of each round's ratio to nginx in that round; "
              f"added p99 is each round's p99 less direct's in the same round.")
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "latest.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    print(header + "\n\n" + table)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
