#!/usr/bin/env python3
"""A request across two sidecars with Istio's mutual TLS, Ringside against Envoy 1.40.

load generator (h2load) -> client sidecar (plaintext in; mTLS out with a SPIFFE client
certificate, Istio's SNI and ALPN istio-http/1.1 or istio-h2, the server's SAN checked)
-> server sidecar (mTLS in, the client's SPIFFE identity checked) -> app. The same two
configuration files serve Ringside and Envoy; each sidecar has one worker. Both sidecars
run on CPU 0, the load generator and the apps on CPU 1. The proxies alternate round by
round; each figure is the median of the rounds.

Cases: HTTP/1.1 keep-alive (app: nginx, 1 KiB), HTTP/2 (h2c in, h2 between the sidecars,
HTTP/1.1 to the app, as a client speaking h2 to an HTTP/1.1 service), gRPC unary
(1 KiB messages over h2 all the way to nghttpd echoing them). Each at saturation and at a
fixed 1,000 req/s.

Reported per case: requests/s, the two sidecars' CPU per request (from the scheduler's
per-thread nanoseconds), vCPU per 1,000 req/s per sidecar (Istio's unit), latency added
over the direct path (load generator -> app, the same protocol the server sidecar speaks
to the app) at p50/p90/p99, and each sidecar's RSS; then the ratios against Envoy and
whether the issue's targets hold.

    perf/sidecar_pair.py RINGSIDE_BINARY [--seconds N] [--rounds N]
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

H2LOAD = "h2load"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def certificates(d):
    """A mesh CA and two workload identities, as istiod issues them (EC P-256, URI SAN)."""
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-days", "2", "-subj", "/O=cluster.local", "-keyout", f"{d}/ca.key",
        "-out", f"{d}/ca.pem")
    for name in ("client", "server"):
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr")
        with open(f"{d}/{name}.ext", "w") as f:
            f.write(f"subjectAltName=URI:spiffe://cluster.local/ns/default/sa/{name}\n")
        run("openssl", "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem",
            "-CAkey", f"{d}/ca.key", "-CAcreateserial", "-days", "2", "-extfile",
            f"{d}/{name}.ext", "-out", f"{d}/{name}.pem")


ROUTER = '[{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]'
H2_OPTIONS = ('typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: '
              '{"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, '
              'explicit_http_config: {http2_protocol_options: {}}}}')


def listener(name, port, routes, tls=""):
    return f"""  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config: {{virtual_hosts: [{{name: all, domains: ['*'], routes: {routes}}}]}}
          http_filters: {ROUTER}
{tls}"""


def cluster(name, port, extra=""):
    return f"""  - name: {name}
    connect_timeout: 1s
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}
{extra}"""


def configs(d, p):
    """The client and the server sidecar, as istiod shapes an outbound and an inbound path."""
    def upstream_tls(alpn):
        return f"""    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.8080_._.app.default.svc.cluster.local
        common_tls_context:
          alpn_protocols: [{alpn}, istio]
          tls_certificates: [{{certificate_chain: {{filename: {d}/client.pem}}, private_key: {{filename: {d}/client.key}}}}]
          validation_context:
            trusted_ca: {{filename: {d}/ca.pem}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "spiffe://cluster.local/ns/default/sa/server"}}}}]
"""
    client = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}\nstatic_resources:\n  listeners:\n"
    client += listener("out_h1", p["client_h1"], "[{match: {prefix: /}, route: {cluster: server_h1}}]")
    client += listener("out_h2", p["client_h2"], "[{match: {prefix: /}, route: {cluster: server_h2}}]")
    client += "  clusters:\n"
    client += cluster("server_h1", p["server"], upstream_tls("istio-http/1.1"))
    client += cluster("server_h2", p["server"], upstream_tls("istio-h2") + f"    {H2_OPTIONS}\n")
    server_tls = f"""      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{{certificate_chain: {{filename: {d}/server.pem}}, private_key: {{filename: {d}/server.key}}}}]
            validation_context:
              trusted_ca: {{filename: {d}/ca.pem}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: "spiffe://cluster.local/ns/default/sa/client"}}}}]
"""
    server = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}\nstatic_resources:\n  listeners:\n"
    server += listener("inbound", p["server"],
                       "[{match: {prefix: /grpc/}, route: {cluster: app_grpc}}, {match: {prefix: /}, route: {cluster: app_http}}]",
                       server_tls)
    server += "  clusters:\n"
    server += cluster("app_http", p["app_http"])
    server += cluster("app_grpc", p["app_grpc"], f"    {H2_OPTIONS}\n")
    for name, text in (("client", client), ("server", server)):
        with open(f"{d}/{name}.yaml", "w") as f:
            f.write(text)


def apps(d, p):
    os.makedirs(f"{d}/www", exist_ok=True)
    with open(f"{d}/www/1k", "w") as f:
        f.write("x" * 1024)
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{p['app_http']}; root {d}/www; }} }}
""")
    # One gRPC message: 5-byte prefix (uncompressed, length 1019) and 1019 payload bytes.
    with open(f"{d}/msg", "wb") as f:
        f.write(b"\x00" + (1019).to_bytes(4, "big") + b"y" * 1019)
    procs = [
        subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", f"{d}/nginx.conf", "-p", d],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["taskset", "-c", "1", "nghttpd", "--no-tls", "--echo-upload", "-d",
                          f"{d}/www", str(p["app_grpc"])],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    for port in (p["app_http"], p["app_grpc"]):
        wait_port(port)
    return procs


def wait_port(port, secs=20):
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def start_pair(proxy, binary, d, p):
    procs = {}
    for side in ("client", "server"):
        cmd = [binary, "-c", f"{d}/{side}.yaml", "--concurrency", "1", "-l", "error",
               "--disable-hot-restart"]
        log = open(f"{d}/{proxy}-{side}.log", "w")
        procs[side] = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=log, stderr=log)
    for port in (p["client_h1"], p["client_h2"], p["server"]):
        wait_port(port)
    return procs


def stop(procs):
    for pr in procs.values():
        pr.terminate()
    for pr in procs.values():
        try:
            pr.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pr.kill()


def cpu_ns(pid):
    """The process's CPU time so far: the scheduler's nanoseconds, summed over its threads."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# case -> (client URL suffix, direct URL, h2load arguments)
def cases(d, p):
    grpc = ["-d", f"{d}/msg", "-H", "content-type: application/grpc", "-H", "te: trailers"]
    return {
        "http1": (f"http://127.0.0.1:{p['client_h1']}/1k", f"http://127.0.0.1:{p['app_http']}/1k", ["--h1"], ["--h1"]),
        "h2": (f"http://127.0.0.1:{p['client_h2']}/1k", f"http://127.0.0.1:{p['app_http']}/1k", [], ["--h1"]),
        "grpc": (f"http://127.0.0.1:{p['client_h2']}/grpc/echo", f"http://127.0.0.1:{p['app_grpc']}/grpc/echo", grpc, grpc),
    }


def load(url, args, mode, secs, log):
    """One h2load run: (requests completed, failed, per-request durations in µs)."""
    if mode == "saturation":
        shape = ["-c", "8", "-m", "1"] if "--h1" in args else ["-c", "4", "-m", "10"]
    else:
        shape = ["-c", "10", "-m", "1", "--rps", "100"]  # 10 clients x 100 req/s
    cmd = ["taskset", "-c", "1", H2LOAD, *shape, "-D", str(secs), "--warm-up-time", "1",
           "--log-file", log, *args, url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    done = failed = 0
    for line in out.splitlines():
        if line.startswith("requests:"):
            w = line.replace(",", "").split()
            done, failed = int(w[7]), int(w[9]) + int(w[11])
    durations = []
    try:
        with open(log) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3 and cols[1] == "200":
                    durations.append(int(cols[2]))
    except OSError:
        pass
    return done, failed, durations


def record(out, pids, name, secs):
    """perf record of the sidecars for the measured seconds (after h2load's warm-up second)."""
    if not out:
        return None
    os.makedirs(out, exist_ok=True)
    cmd = (f"sleep 1; exec perf record -q -F 1999 --call-graph fp -p {','.join(map(str, pids))} "
           f"-o {out}/{name}.data -- sleep {max(1, secs - 1)}")
    return subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ringside")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--envoy", default="envoy")
    ap.add_argument("--proxies", default="ringside,envoy", help="comma-separated: ringside, envoy")
    ap.add_argument("--cases", default="http1,h2,grpc", help="comma-separated: http1, h2, grpc")
    ap.add_argument("--modes", default="saturation,rate", help="comma-separated: saturation, rate")
    ap.add_argument("--ringside-build", action="append", default=[], metavar="NAME=PATH",
                    help="another Ringside binary in the same run (before/after), compared with ringside")
    ap.add_argument("--record", metavar="DIR",
                    help="perf record both sidecars during each run into DIR/PROXY-CASE-MODE.data")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sidecar-pair-")
    os.chmod(d, 0o755)
    p = {k: free_port() for k in ("client_h1", "client_h2", "server", "app_http", "app_grpc")}
    certificates(d)
    configs(d, p)
    app_procs = apps(d, p)
    extra = dict(b.split("=", 1) for b in a.ringside_build)
    binaries = {"ringside": os.path.abspath(a.ringside), "envoy": a.envoy}
    binaries.update({k: os.path.abspath(v) for k, v in extra.items()})
    all_cases = {k: v for k, v in cases(d, p).items() if k in a.cases.split(",")}
    modes = [m for m in ("saturation", "rate") if m in a.modes.split(",")]
    proxies = [x for x in ("ringside", "envoy") if x in a.proxies.split(",")]
    proxies += list(extra)
    # (proxy, case, mode) -> list of per-round dicts
    got = {}
    direct = {}
    try:
        for r in range(a.rounds):
            for case, (_, url, _, dargs) in all_cases.items():
                _, failed, dur = load(url, dargs, "rate", a.seconds, f"{d}/direct.log")
                direct.setdefault(case, []).append(dur)
            order = proxies if r % 2 == 0 else proxies[::-1]
            for proxy in order:
                procs = start_pair(proxy, binaries[proxy], d, p)
                try:
                    time.sleep(0.5)
                    for case, (url, _, args, _) in all_cases.items():
                        for mode in modes:
                            pids = [pr.pid for pr in procs.values()]
                            # taskset execs the proxy: the pid is the proxy's.
                            before = [cpu_ns(x) for x in pids]
                            t0 = time.time()
                            rec = record(a.record, pids, f"{proxy}-{case}-{mode}", a.seconds)
                            done, failed, dur = load(url, args, mode, a.seconds, f"{d}/{proxy}.log")
                            wall = time.time() - t0
                            if rec:
                                rec.wait()
                            cpu = sum(cpu_ns(x) for x in pids) - sum(before)
                            if failed or not done:
                                print(f"{proxy} {case} {mode}: {failed} of {done} requests failed; "
                                      f"logs in {d}", file=sys.stderr)
                                raise SystemExit(1)
                            got.setdefault((proxy, case, mode), []).append({
                                "rps": done / a.seconds,
                                # The warm-up second is loaded too: CPU over all requests sent.
                                "cpu_us": cpu / 1000 / (done * (a.seconds + 1) / a.seconds),
                                "cpu_share": cpu / 1e9 / wall,
                                "dur": dur,
                                "rss": [rss_kib(x) for x in pids],
                            })
                finally:
                    stop(procs)
    finally:
        for pr in app_procs:
            pr.terminate()
    report(got, direct, a, proxies, list(all_cases), modes)


def report(got, direct, a, proxies, case_names, modes):
    med = statistics.median
    print(f"\nTwo sidecars with Istio mTLS, one worker each (both on CPU 0; load and apps on CPU 1), "
          f"{a.seconds} s per run, median of {a.rounds} rounds, {time.strftime('%Y-%m-%d', time.gmtime())}, "
          f"{os.cpu_count()} CPUs\n")
    print("| case | load | proxy | req/s | CPU µs/request (both sidecars) | vCPU per 1,000 req/s per sidecar "
          "| added p50 / p90 / p99 ms | RSS MB (client, server) | CPUs busy (both) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for case in case_names:
        base = [x for run in direct.get(case, []) for x in run]
        base_q = [pct(base, q) for q in (0.5, 0.9, 0.99)]
        for mode in modes:
            row = {}
            for proxy in proxies:
                runs = got[(proxy, case, mode)]
                rps = med(r["rps"] for r in runs)
                cpu_us = med(r["cpu_us"] for r in runs)
                vcpu = cpu_us * 1000 / 1e6 / 2
                added = [pct([x for r in runs for x in r["dur"]], q) - b for q, b in zip((0.5, 0.9, 0.99), base_q)]
                rss = [med(r["rss"][i] for r in runs) / 1024 for i in (0, 1)]
                row[proxy] = (cpu_us, added, max(rss))
                shown_added = " / ".join("%.3f" % (x / 1000) for x in added) if mode == "rate" else "-"
                share = med(r["cpu_share"] for r in runs)
                print(f"| {case} | {'saturation' if mode == 'saturation' else '1,000 req/s'} | {proxy} | {rps:,.0f} "
                      f"| {cpu_us:.1f} | {vcpu:.3f} | {shown_added} | {rss[0]:.1f}, {rss[1]:.1f} | {share:.2f} |")
            for other in proxies:
                if other not in ("ringside", "envoy") and "ringside" in row:
                    ratios.append((f"{case} {mode}: CPU per request, {other} / ringside",
                                   row[other][0] / row["ringside"][0], None))
            if "ringside" not in row or "envoy" not in row:
                continue
            cpu_ratio = row["ringside"][0] / row["envoy"][0]
            target = 1 / 3 if mode == "saturation" else 1 / 4
            ratios.append((f"{case} {mode}: CPU per request", cpu_ratio, target))
            if mode == "rate":
                e99, r99 = row["envoy"][1][2], row["ringside"][1][2]
                ratios.append((f"{case} 1,000 req/s: added p99", r99 / e99 if e99 > 0 else float("nan"), 0.5))
            ratios.append((f"{case} {mode}: RSS (the larger sidecar)", row["ringside"][2] / row["envoy"][2], 1 / 8))
    print("\nRingside / Envoy (target: at most)")
    for name, r, target in ratios:
        if target is None:
            print(f"- {name}: {r:.2f}x")
        else:
            print(f"- {name}: {r:.2f}x (target {target:.2f}x) {'holds' if r <= target else 'MISSES'}")


if __name__ == "__main__":
    main()
