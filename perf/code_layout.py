#!/usr/bin/env python3
"""Lists the functions a sidecar runs once started, hottest first, for the linker to lay
them out together at the start of the code (perf/hot-code.txt, read by build.rs).

Why: Linux maps a file's pages around each one a process first touches (64 KB of
fault-around, or the whole large folio the page cache holds), so code the request path
runs, scattered over 13 MB of text among start-up and admin code, made 8-9 MB of each
sidecar's resident set. Laid out together it fits in a few of those windows.

How: the two sidecars of perf/sidecar_pair.py run, on each io driver, while h2load sends
each case (HTTP/1.1, HTTP/2, gRPC), a keep-alive connection is left quiet long enough to
turn cold and used again, and new connections come and go; then a proxy with what an
Istio sidecar's outbound listener carries (perf/telemetry.py's: istiod's default filters,
the metadata exchange, istio.stats, Istio's access log) serves HTTP/1.1. First natively under
`perf record`: the functions sampled come first, by samples. Then under valgrind's
callgrind, instrumenting only once start-up has settled: every function run at all, by
its own instruction count (callgrind finds the rare ones sampling misses, but runs
ring's portable code where the CPU has AVX-512 or VAES). Last, ring's other variants of
the ciphers and curves mutual TLS uses, for CPUs that pick another. Symbols are the binary's mangled names, which stay the same
from build to build unless the function's crate, path or generic arguments change; a name
the linker does not find is skipped (nothing breaks, that function is just laid out
elsewhere), so the list can lag the code a while. Regenerate after larger changes:

    cargo build --release && perf/code_layout.py target/release/ringside

`--check` only reports how much of the list a release binary still has, and whether the
linker laid it first; it exits 1 where the list was not laid out first or a tenth of it is
missing (regenerate then).
"""
import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sidecar_pair as sp  # noqa: E402


def self_costs(path, into):
    """Adds each function's own cost (the first event, Ir) in a callgrind dump to `into`."""
    names = {}
    fn = None
    skip_next = False
    with open(path) as f:
        for line in f:
            if skip_next:  # the inclusive cost of a call: not the caller's own
                skip_next = False
                continue
            if line.startswith("fn="):
                fn = compressed(line[3:].strip(), names)
            elif line.startswith("calls="):
                skip_next = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if fn is not None and len(parts) >= 2:
                    into[fn] += int(parts[1])
            elif line.startswith(("cfn=", "cfi=", "cfl=")):
                compressed(line[4:].strip(), names)


def compressed(spec, names):
    """callgrind's name compression: `(id) name` defines, `(id)` refers."""
    if spec.startswith("("):
        ident, _, name = spec.partition(")")
        name = name.strip()
        if name:
            names[ident] = name
        return names.get(ident, spec)
    return spec


def quiet_connection(port, rounds):
    """A keep-alive HTTP/1.1 client that waits past the cold threshold between requests."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    for _ in range(rounds):
        s.sendall(b"GET /1k HTTP/1.1\r\nHost: app\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or len(got) < 1024:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("the client sidecar closed a keep-alive connection")
            got += chunk
        time.sleep(0.3)
    s.close()


# ring's variants of what mutual TLS runs (AES-GCM, ChaCha20-Poly1305, P-256, X25519), one
# per CPU feature set: this machine samples only its own.
CRYPTO = re.compile(r"aes_gcm_(enc|dec)_update|gcm_(ghash|init|gmult)|aes_hw_|aesni_|vpaes_|"
                    r"ecp_nistz256|nistz256|x25519|fiat_curve25519|chacha20|poly1305|fe4_|p256_")


def workload(d, p, scale):
    """Each case, a quiet keep-alive connection, new connections: `scale` sets the counts."""
    for case, (url, _, args, _) in sp.cases(d, p).items():
        # Then more connections than the pool holds: new upstream connections resume the
        # TLS session the first ones were given a ticket for.
        for shape in (["-n", str(400 * scale), "-c", "2", "-m", "4"], ["-n", str(40 * scale), "-c", "1", "-m", "1"],
                      ["-n", str(800 * scale), "-c", "8", "-m", "10"]):
            subprocess.run(["h2load", *shape, *args, url], check=True, capture_output=True)
    quiet_connection(p["client_h1"], 4)
    for _ in range(20):  # new connections, one request each
        subprocess.run(["h2load", "-n", "1", "-c", "1", "--h1", f"http://127.0.0.1:{p['client_h1']}/1k"],
                       check=True, capture_output=True)


class Pair:
    """The sidecar pair, started with `wrapper` as the binary."""

    def __init__(self, d, p):
        self.d, self.p = d, p

    def start(self, wrapper):
        self.procs = sp.start_pair("ringside", wrapper, self.d, self.p)
        return [pr.pid for pr in self.procs.values()]

    def load(self, scale):
        workload(self.d, self.p, scale)

    def stop(self):
        sp.stop(self.procs)


class IstioChain:
    """One proxy with an Istio sidecar's outbound filters and access log, and its nginx."""

    def __init__(self, d):
        from telemetry import TELEMETRY, setup
        self.d = f"{d}/istio"
        self.backend, self.port = setup(self.d, TELEMETRY)
        self.nginx = subprocess.Popen(["nginx", "-c", f"{self.d}/backend.conf", "-p", self.d],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sp.wait_port(self.backend)

    def start(self, wrapper):
        self.proc = subprocess.Popen([wrapper, "-c", f"{self.d}/ringside.yaml", "--concurrency", "1",
                                      "-l", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sp.wait_port(self.port, 60)
        return [self.proc.pid]

    def load(self, scale):
        url = f"http://127.0.0.1:{self.port}/"
        for shape in (["-n", str(400 * scale), "-c", "4"], ["-n", str(40 * scale), "-c", "1"]):
            subprocess.run(["h2load", "--h1", *shape, url], check=True, capture_output=True)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def close(self):
        self.nginx.terminate()


def sampled(binary, driver, d, target, into):
    """Adds each function's samples under native load (perf record) to `into`."""
    wrapper = f"{d}/native-{driver}.sh"
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec {binary} --io-driver {driver} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    pids = target.start(wrapper)
    data = f"{d}/perf-{driver}-{type(target).__name__}.data"
    try:
        time.sleep(1)
        rec = subprocess.Popen(["perf", "record", "-q", "-F", "10000", "-o", data, "-p",
                                ",".join(map(str, pids))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        target.load(50)
        rec.send_signal(signal.SIGINT)
        rec.wait()
    finally:
        target.stop()
    out = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,dso", "--no-demangle"],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == f"({binary})":
            into[parts[1]] += 1


def instrumented(binary, driver, d, target, into):
    """Adds each function's own instruction count under callgrind to `into`."""
    name = f"cg-{driver}-{type(target).__name__}-"
    wrapper = f"{d}/valgrind-{driver}.sh"
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec valgrind -q --tool=callgrind --demangle=no --dump-instr=no "
                f"--instr-atstart=no --callgrind-out-file={d}/{name}%p.out "
                f"{binary} --io-driver {driver} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    pids = target.start(wrapper)
    try:
        time.sleep(3)  # start-up settles (its code is paged out after 200 ms)
        for pid in pids:
            subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
        target.load(1)
        for pid in pids:
            subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    finally:
        target.stop()
    dumps = [f for f in os.listdir(d) if f.startswith(name) and ".out." in f]
    if len(dumps) != len(pids):
        raise SystemExit(f"expected a dump from each proxy, found {dumps} in {d}")
    for f in dumps:
        self_costs(os.path.join(d, f), into)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ringside")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "hot-code.txt"))
    ap.add_argument("--check", action="store_true", help="report how much of the list BINARY has")
    a = ap.parse_args()
    binary = os.path.abspath(a.ringside)
    if a.check:
        return check(binary, a.out)
    d = tempfile.mkdtemp(prefix="code-layout-")
    os.chmod(d, 0o755)
    p = {k: sp.free_port() for k in ("client_h1", "client_h2", "server", "app_http", "app_grpc")}
    sp.certificates(d)
    sp.configs(d, p)
    apps = sp.apps(d, p)
    samples, costs = collections.Counter(), collections.Counter()
    istio = None
    try:
        istio = IstioChain(d)
        for target in (Pair(d, p), istio):
            for driver in ("io-uring", "legacy"):
                sampled(binary, driver, d, target, samples)
                instrumented(binary, driver, d, target, costs)
    finally:
        for pr in apps:
            pr.terminate()
        if istio:
            istio.close()
    symbols = subprocess.run(["nm", "--defined-only", binary], check=True, capture_output=True,
                             text=True).stdout.split()
    defined = set(symbols)
    order = [n for n, _ in samples.most_common()]
    order += [n for n, c in costs.most_common() if c > 0]
    order += sorted(n for n in defined if CRYPTO.search(n))
    seen, hot = set(), []
    for n in order:
        if n in defined and n not in seen:
            seen.add(n)
            hot.append(n)
    with open(a.out, "w") as f:
        f.write("".join(n + "\n" for n in hot))
    print(f"{len(hot)} functions: {len(samples)} sampled, {sum(1 for c in costs.values() if c)} run "
          f"under callgrind -> {a.out}")


def check(binary, listed):
    names = [n.strip() for n in open(listed) if n.strip()]
    where = {}
    for line in subprocess.run(["nm", "--defined-only", binary], check=True, capture_output=True,
                               text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            where[parts[2]] = int(parts[0], 16)
    found = [where[n] for n in names if n in where]
    text = sorted(where.values())
    print(f"{len(found)} of {len(names)} listed functions are in {binary}")
    first = bool(found and text) and min(found) - text[0] < 4096
    if found and text:
        span = max(found) - min(found)
        print(f"listed code spans {span / 1e6:.1f} MB from {min(found) - text[0]} bytes after the "
              f"first function (laid out {'first' if first else 'elsewhere'})")
    # Fails where the build did not lay the list out, or the list has drifted far.
    if not first or len(found) < 0.9 * len(names):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
