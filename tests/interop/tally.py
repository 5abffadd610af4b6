"""The pass/fail tally the parity scripts share: `check` a condition, compare Envoy's and
Ringside's values with `same`, and `report` at the end ('N passed, M failed'; the exit
status)."""

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
