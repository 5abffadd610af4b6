#!/usr/bin/env python3
"""What Istio's telemetry costs per request: Ringside and Envoy 1.40 side by side, each with
the router alone and with what an Istio sidecar's outbound listener carries.

  ringside-router     the route, the router
  ringside-telemetry  istiod's default filters (grpc_stats, fault, cors), the HTTP metadata
                      exchange and istio.stats (a pod's node metadata, the cluster's service
                      metadata), and a file access log in Istio's format
  envoy-router        the route, the router
  envoy-telemetry     the same, less istio.metadata_exchange and istio.stats: the official
                      Envoy build has no Istio extensions, so this is the part of the chain
                      Envoy can run (its cost is a lower bound of an istio-proxy's)

Each proxy runs one worker pinned to CPU 0; its own nginx backend (1 KiB) and wrk share
CPU 1. Rounds interleave the targets; each round runs wrk (-c32) for SECONDS and reads the
proxy's CPU time (scheduler nanoseconds of every thread) before and after. Reports the
median CPU µs per request, the telemetry's cost over the router alone, and the ratios
against Envoy (paired round by round).

    perf/telemetry.py RINGSIDE_BINARY [ROUNDS] [SECONDS]
"""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import (LOAD_CPU, Target, cpu_seconds, median, paired_ratio, rss_mb, tool,  # noqa: E402
                     wait_port, wrk)

ROOT = os.path.dirname(HERE)
TELEMETRY = {"ISTIO_FILTERS": "1", "ISTIO_TELEMETRY": "1", "ACCESS_LOG": "istio"}
ENVOY_TELEMETRY = {"ISTIO_FILTERS": "1", "ACCESS_LOG": "istio"}


def setup(dirname, env):
    """perf/lib.sh's one_route_setup with `env`: the backend's and the proxy's ports."""
    os.makedirs(dirname)
    out = subprocess.run(["bash", "-c", '. perf/lib.sh; one_route_setup "$1"; echo "$backend $proxy"', "-",
                          dirname], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[-2]), int(out[-1])


def main():
    binary = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    work = tempfile.mkdtemp(prefix="telemetry-")
    envoy = [tool("envoy"), "--concurrency", "1", "-l", "error", "--disable-hot-restart"]
    variants = [
        ("ringside-router", [binary, "--concurrency", "1", "-l", "warn"], {}),
        ("ringside-telemetry", [binary, "--concurrency", "1", "-l", "warn"], TELEMETRY),
        ("envoy-router", envoy + ["--base-id", str(os.getpid() % 50000)], {}),
        ("envoy-telemetry", envoy + ["--base-id", str(os.getpid() % 50000 + 1)], ENVOY_TELEMETRY),
    ]
    backends, targets = [], []
    try:
        for name, cmd, env in variants:
            d = os.path.join(work, name)
            backend, proxy = setup(d, env)
            backends.append(subprocess.Popen(["taskset", "-c", LOAD_CPU, tool("nginx"), "-c",
                                              os.path.join(d, "backend.conf"), "-p", d],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True))
            wait_port(backend)
            t = Target(name, cmd + ["-c", os.path.join(d, "ringside.yaml")], proxy)
            t.start(d)
            targets.append(t)
        for t in targets:
            wrk(f"http://127.0.0.1:{t.port}/", 2, 32)  # warm up
        us = {t.name: [] for t in targets}
        for r in range(rounds):
            for t in targets:
                before = cpu_seconds(t.pids())
                rps = wrk(f"http://127.0.0.1:{t.port}/", seconds, 32)
                cpu = cpu_seconds(t.pids()) - before
                us[t.name].append(cpu * 1e6 / (rps * seconds))
            print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in us.items()), flush=True)
        rss = {t.name: rss_mb(t.pids()) for t in targets}
        # The access log really was written by both.
        for name in ("ringside-telemetry", "envoy-telemetry"):
            path = os.path.join(work, name, "access.log")
            size = os.path.getsize(path) if os.path.exists(path) else 0
            if size == 0:
                raise SystemExit(f"{name} wrote no access log ({path})")
    finally:
        for t in targets:
            t.stop()
        for b in backends:
            b.kill()
    print()
    print("| target | CPU µs per request (median) | RSS after load |")
    print("|---|---:|---:|")
    for name, v in us.items():
        print(f"| {name} | {median(v):.1f} | {rss[name]:.1f} MB |")
    print()
    cost = lambda a, b: paired_ratio(us[a], us[b])  # noqa: E731
    print(f"- Ringside's telemetry over its router alone: {cost('ringside-telemetry', 'ringside-router'):.2f}×")
    print(f"- Envoy's (without istio.stats and metadata exchange) over its router alone: "
          f"{cost('envoy-telemetry', 'envoy-router'):.2f}×")
    print(f"- Ringside with telemetry against Envoy with the part it can run: "
          f"{cost('ringside-telemetry', 'envoy-telemetry'):.2f}× the CPU per request")
    print(f"- Router alone, Ringside against Envoy: {cost('ringside-router', 'envoy-router'):.2f}×")
    print(f"({rounds} rounds of {seconds} s, wrk -c32, one worker on CPU 0; {time.strftime('%Y-%m-%d')})")


if __name__ == "__main__":
    main()
