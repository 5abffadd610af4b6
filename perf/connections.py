#!/usr/bin/env python3
"""Issue 25, item 3: what connections cost. Ringside against Envoy 1.40 and nginx, each one
worker pinned to CPU 0, the client and the backend on CPU 1, the proxies alternating round
by round; every figure is the median of the rounds.

- idle: a fresh proxy; N connections opened at once, each sends one request (answered by
  the proxy itself, so no upstream connection is counted) and then stays open and idle.
  Reported: the time from the first connect to the last answer (how fast a burst of new
  connections is accepted and served), and the RSS the idle connections hold, per
  connection (RSS 1 s after the last answer, less RSS before the burst).
- close: HTTP/1.1 with `Connection: close` (a new connection per request) through the
  proxy to the 1 KiB nginx backend (keep-alive upstream), wrk -c32: requests per proxy
  CPU-second.

    perf/connections.py RINGSIDE_BINARY [--conns N] [--rounds N] [--seconds N]
"""
import argparse
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (LOAD_CPU, PROXY_CPU, cpu_seconds, free_port, pids_of,  # noqa: E402
                     render, rss_mb, tool, wait_port)

# As many descriptors as the hard limit allows (raising it needs CAP_SYS_RESOURCE).
NOFILE = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])

# perf/ringside.yaml (the config compare.py runs Ringside and Envoy on) with one more
# route, answered by the proxy itself.
DIRECT_ROUTE = """\
              - match: {prefix: /direct}
                direct_response: {status: 200, body: {inline_string: ok}}
"""

NGINX_PROXY = """\
worker_processes 1;
daemon off;
pid {dir}/proxy-nginx.pid;
error_log {dir}/proxy-nginx.err warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile}; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=65535;
        location /direct {{
            default_type text/plain;
            return 200 "ok";
        }}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

def raise_nofile():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class Proxy:
    def __init__(self, name, cmd, port, admin=None):
        self.name, self.cmd, self.port, self.admin = name, cmd, port, admin
        self.proc = None

    def start(self, d):
        log = open(os.path.join(d, f"{self.name}.log"), "w")
        self.proc = subprocess.Popen(["taskset", "-c", PROXY_CPU] + self.cmd, stdout=log, stderr=log,
                                     preexec_fn=raise_nofile, start_new_session=True)
        wait_port(self.port)
        one_request(self.port, "/direct")
        time.sleep(1.0)  # past start-up, so its settling is not counted as the burst's

    def stop(self):
        if self.proc:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            self.proc = None

    def pids(self):
        return pids_of(self.proc)


def one_request(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf or not complete(buf):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf


def complete(buf):
    head, _, body = buf.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v)
    return False


def burst(port, n):
    """Opens n connections at once, sends one request on each, reads each answer; returns
    (seconds from the first connect to the last answer, the open sockets)."""
    ep = select.epoll()
    socks, state, bufs = {}, {}, {}
    request = b"GET /direct HTTP/1.1\r\nHost: x\r\n\r\n"
    t0 = time.perf_counter()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks[s.fileno()] = s
        state[s.fileno()] = "connecting"
        bufs[s.fileno()] = b""
        ep.register(s.fileno(), select.EPOLLOUT)
    left = n
    deadline = time.time() + 60
    while left and time.time() < deadline:
        for fd, ev in ep.poll(1.0):
            s = socks[fd]
            if state[fd] == "connecting":
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    raise SystemExit("a connection was refused")
                s.send(request)
                state[fd] = "reading"
                ep.modify(fd, select.EPOLLIN)
            else:
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit("the proxy closed a connection")
                bufs[fd] += chunk
                if complete(bufs[fd]):
                    if not bufs[fd].startswith(b"HTTP/1.1 200"):
                        raise SystemExit(f"unexpected answer: {bufs[fd][:80]!r}")
                    state[fd] = "idle"
                    ep.unregister(fd)
                    left -= 1
    took = time.perf_counter() - t0
    ep.close()
    if left:
        raise SystemExit(f"{left} connections got no answer in 60 s")
    return took, list(socks.values())


def idle_round(p, d, n):
    p.start(d)
    try:
        before = rss_mb(p.pids())
        took, socks = burst(p.port, n)
        time.sleep(1.0)
        after = rss_mb(p.pids())
        # Still open and served: a second request on one of them is answered.
        socks[0].setblocking(True)
        socks[0].settimeout(5)
        socks[0].sendall(b"GET /direct HTTP/1.1\r\nHost: x\r\n\r\n")
        if not socks[0].recv(4096).startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"{p.name}: an idle connection was not served again")
        for s in socks:
            s.close()
        return {"accept_s": took, "per_conn_kb": (after - before) * 1024 / n, "rss_mb": after}
    finally:
        p.stop()


def close_round(p, d, seconds):
    p.start(d)
    try:
        pids = p.pids()
        c0 = cpu_seconds(pids)
        out = subprocess.run(["taskset", "-c", LOAD_CPU, tool("wrk"), "-t1", "-c32", f"-d{seconds}s",
                              "-H", "Connection: close", f"http://127.0.0.1:{p.port}/"],
                             capture_output=True, text=True).stdout
        cpu = cpu_seconds(pids) - c0
        rps = None
        errors = 0
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                rps = float(line.split()[1])
            if "Non-2xx" in line or "Socket errors" in line:
                errors += sum(int(x) for x in line.replace(",", " ").split() if x.isdigit())
        if rps is None:
            raise SystemExit(f"wrk failed against {p.name}:\n{out}")
        return {"rps": rps, "per_cpu_s": rps * seconds / cpu if cpu else 0.0, "errors": errors}
    finally:
        p.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ringside")
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    raise_nofile()
    d = tempfile.mkdtemp(prefix="conns-")
    backend, rs_port, rs_admin, ev_port, ev_admin, ng_port = (free_port() for _ in range(6))
    render("backend-nginx.conf", f"{d}/backend.conf", DIR=d, BACKEND_PORT=backend, BODY="a" * 1024)
    for name, port, admin in (("ringside", rs_port, rs_admin), ("envoy", ev_port, ev_admin)):
        path = render("ringside.yaml", f"{d}/{name}.yaml", ADMIN_PORT=admin, PROXY_PORT=port,
                      BACKEND_PORT=backend)
        with open(path) as f:
            text = f.read()
        first_route = "              - match: {prefix: /}\n"
        assert first_route in text, "perf/ringside.yaml changed shape"
        with open(path, "w") as f:
            f.write(text.replace(first_route, DIRECT_ROUTE + first_route, 1))
    with open(f"{d}/proxy-nginx.conf", "w") as f:
        f.write(NGINX_PROXY.format(dir=d, port=ng_port, backend=backend, nofile=NOFILE))
    nginx = tool("nginx")
    be = subprocess.Popen(["taskset", "-c", LOAD_CPU, nginx, "-c", f"{d}/backend.conf", "-p", d],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(backend)
    proxies = [
        Proxy("ringside", [os.path.abspath(args.ringside), "-c", f"{d}/ringside.yaml", "--concurrency", "1",
                           "-l", "warn"], rs_port),
        Proxy("envoy", [tool("envoy"), "-c", f"{d}/envoy.yaml", "--concurrency", "1", "-l", "warn",
                        "--disable-hot-restart", "--base-id", str(os.getpid() % 60000)], ev_port),
        Proxy("nginx", [nginx, "-c", f"{d}/proxy-nginx.conf", "-p", d], ng_port),
    ]
    idle = {p.name: [] for p in proxies}
    close = {p.name: [] for p in proxies}
    try:
        for r in range(args.rounds):
            order = proxies if r % 2 == 0 else proxies[::-1]
            for p in order:
                idle[p.name].append(idle_round(p, d, args.conns))
                time.sleep(1)
            for p in order:
                close[p.name].append(close_round(p, d, args.seconds))
                time.sleep(1)
    finally:
        for p in proxies:
            p.stop()
        os.killpg(be.pid, 9)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"## Connections (`perf/connections.sh`, {args.rounds} rounds, {args.conns} connections, "
          f"wrk -c32 {args.seconds}s with Connection: close)\n")
    print("| proxy | burst of new connections answered, s | RSS per idle connection, KB | RSS with them, MB "
          "| Connection: close req/s | req per proxy CPU-second |")
    print("|---|---:|---:|---:|---:|---:|")
    for p in proxies:
        print(f"| {p.name} | {med(idle[p.name], 'accept_s'):.3f} | {med(idle[p.name], 'per_conn_kb'):.1f} "
              f"| {med(idle[p.name], 'rss_mb'):.1f} | {med(close[p.name], 'rps'):.0f} "
              f"| {med(close[p.name], 'per_cpu_s'):.0f} |")
    errors = {n: sum(r["errors"] for r in rows) for n, rows in close.items()}
    if any(errors.values()):
        print(f"\nwrk errors (non-2xx or socket errors): {errors}")

    def paired(table, key, other):
        return statistics.median(a[key] / b[key] for a, b in zip(table["ringside"], table[other]) if b[key])

    kb = med(idle["ringside"], "per_conn_kb")
    acc = paired(idle, "accept_s", "envoy")
    cl = paired(close, "per_cpu_s", "nginx")
    print("\nAgainst the targets (ratios paired round by round)")
    print(f"- RSS per idle connection: {kb:.1f} KB (target at most 4 KB) {'holds' if kb <= 4 else 'MISSES'}")
    print(f"- burst answered: {acc:.2f}x Envoy's time (target at most 1.00x) {'holds' if acc <= 1 else 'MISSES'}")
    print(f"- Connection: close per CPU-second: {cl:.2f}x nginx (target at least 1.00x) "
          f"{'holds' if cl >= 1 else 'MISSES'}")


if __name__ == "__main__":
    main()
