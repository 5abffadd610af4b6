"""What the parity scripts share: the pass/fail tally (`check` a condition, compare
Envoy's and Ringside's values with `same`, `report` at the end: 'N passed, M failed' and
the exit status), and `fetch`, one request on a connection of its own."""
import socket

FAILS = []
PASSED = [0]


def check(ok, what):
    if ok:
        PASSED[0] += 1
    else:
        FAILS.append(what)
        print("MISMATCH", what)


def same(label, e, r):
    check(e == r, f"{label}:\n  envoy:    {e}\n  ringside: {r}")


def report():
    print(f"{PASSED[0]} passed, {len(FAILS)} failed")
    return 1 if FAILS else 0


def fetch(port, raw, timeout=5, half_close=False):
    """Sends `raw` on a new connection to 127.0.0.1:`port` (then closes its sending side
    when `half_close`); all that comes back until the peer closes (or `timeout` seconds
    pass quietly)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(raw)
    if half_close:
        s.shutdown(socket.SHUT_WR)
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    except socket.timeout:
        pass
    s.close()
    return data
