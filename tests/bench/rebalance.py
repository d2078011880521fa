"""Rebalance benchmark: how many flows move when tunnel weights drift.

For the same seeded random drift of 3..6 weights (100 steps) it compares
  steerd     build_slots() with the previous table (4096 slots)
  minimum    1/2 sum |delta share|, the theoretical least any method can move
  maglev     a full Maglev rebuild every step (M = 65537, weighted turns)
  resilient  Linux resilient nexthop groups, really programmed in a throwaway
             network namespace and read back bucket by bucket (needs root)
Every figure is computed in the run. Flows are 10,000 synthetic 5-tuples hashed
with steerd.testing.flowhash.flow_hash and mapped onto each table as hash % size.
Run: tests/bench/rebalance [--seed N] [--steps N] [--no-kernel]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchout import record, verdict  # noqa: E402

from steerd.testing.flowhash import flow_hash  # noqa: E402
from steerd.selection import build_slots, slots_moved  # noqa: E402

NSLOTS = 4096
MAGLEV_M = 65537
NH_BUCKETS = 4096
NH_MAX_WEIGHT = 256        # iproute2 accepts nexthop weights 1..256


# ------------------------------------------------------------------ inputs

def drift(ntun: int, steps: int, seed: int) -> list[list[float]]:
    """steps+1 weight vectors: multiplicative random walk, occasional outage.

    Each step every live weight is multiplied by a factor in [0.8, 1.25]
    (symmetric in log, clamped to [5, 5000] so no tunnel vanishes by drift);
    with probability 0.05 a random tunnel drops to 0 for 1-3 steps and then
    comes back with the weight it had.
    """
    rng = random.Random(seed * 1000 + ntun)
    w = [rng.uniform(20, 200) for _ in range(ntun)]
    out = [list(w)]
    outage: dict[int, int] = {}          # tunnel -> steps left at zero
    for _ in range(steps):
        for i in range(ntun):
            w[i] = min(5000.0, max(5.0, w[i] * rng.uniform(0.8, 1.25)))
        for i in list(outage):
            outage[i] -= 1
            if outage[i] == 0:
                del outage[i]
        if not outage and rng.random() < 0.05:
            outage[rng.randrange(ntun)] = rng.randint(1, 3)
        out.append([0.0 if i in outage else w[i] for i in range(ntun)])
    return out


def synthetic_flows(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    hashes = []
    for _ in range(n):
        src = f"10.20.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        dst = f"10.30.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        proto = rng.choice((6, 17))
        hashes.append(flow_hash(src, dst, proto, rng.randrange(1024, 65536),
                                rng.choice((443, 80, 53, 5060, rng.randrange(1, 65536)))))
    return hashes


def shares(ws: Sequence[float]) -> list[float]:
    total = sum(ws)
    return [w / total for w in ws]


# ---------------------------------------------------------------- methods

def maglev_table(weights: Sequence[float], m: int = MAGLEV_M) -> list[int]:
    """Maglev population (Eisenbud et al., NSDI 2016) with weighted turns.

    Each backend walks its own permutation (offset, skip from its name); per
    round a backend takes credit w/max(w) and claims its next free preferred
    entry for every whole credit, so entries end up proportional to weight.
    Zero-weight backends take no turns (as if removed from the pool).
    """
    live = [i for i, w in enumerate(weights) if w > 0]
    wmax = max(weights[i] for i in live)
    offset, skip = {}, {}
    for i in live:
        d = hashlib.blake2b(f"tunnel-{i}".encode(), digest_size=16).digest()
        offset[i] = int.from_bytes(d[:8], "little") % m
        skip[i] = int.from_bytes(d[8:], "little") % (m - 1) + 1
    rate = {i: weights[i] / wmax for i in live}
    credit = dict.fromkeys(live, 0.0)
    nxt = dict.fromkeys(live, 0)
    entry = [-1] * m
    filled = 0
    while True:
        for i in live:
            credit[i] += rate[i]
            off, sk, j = offset[i], skip[i], nxt[i]
            while credit[i] >= 1.0:
                credit[i] -= 1.0
                c = (off + j * sk) % m
                while entry[c] >= 0:
                    j += 1
                    c = (off + j * sk) % m
                entry[c] = i
                j += 1
                filled += 1
                if filled == m:
                    return entry
            nxt[i] = j


def steerd_method() -> Callable[[Sequence[float]], list[int]]:
    prev: list[int] | None = None

    def step(ws: Sequence[float]) -> list[int]:
        nonlocal prev
        prev = build_slots(ws, NSLOTS, prev)
        return prev
    return step


class ResilientNexthops:
    """A resilient nexthop group in a throwaway namespace, one veth per tunnel."""

    GROUP = 100

    def __init__(self, ntun_max: int):
        self.ns = f"rb-bench-{os.getpid()}"
        self.created = False
        self.ntun_max = ntun_max
        self.group_exists = False

    def ip(self, *args: str, json_out: bool = False):
        cmd = ["ip", "-n", self.ns] + (["-j"] if json_out else []) + list(args)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")
        return json.loads(r.stdout) if json_out else r.stdout

    def __enter__(self) -> "ResilientNexthops":
        r = subprocess.run(["ip", "netns", "add", self.ns], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ip netns add {self.ns}: {r.stderr.strip()}")
        self.created = True
        # Nexthops need a device with a connected gateway: one veth pair each.
        for i in range(self.ntun_max):
            self.ip("link", "add", f"t{i}", "type", "veth", "peer", "name", f"p{i}")
            self.ip("link", "set", f"t{i}", "up")
            self.ip("link", "set", f"p{i}", "up")
            self.ip("addr", "add", f"10.99.{i}.1/30", "dev", f"t{i}")
            self.ip("nexthop", "add", "id", str(i + 1), "via", f"10.99.{i}.2", "dev", f"t{i}")
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        if self.created:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
            self.created = False

    def method(self) -> Callable[[Sequence[float]], list[int]]:
        if self.group_exists:
            self.ip("nexthop", "del", "id", str(self.GROUP))
            self.group_exists = False

        def step(ws: Sequence[float]) -> list[int]:
            wmax = max(ws)
            # Zero weight is not a nexthop weight: a dead tunnel leaves the group.
            group = "/".join(f"{i + 1},{max(1, round(NH_MAX_WEIGHT * w / wmax))}"
                             for i, w in enumerate(ws) if w > 0)
            verb = "replace" if self.group_exists else "add"
            # idle_timer 0: every bucket counts as idle, so the kernel migrates
            # all excess buckets at once (its most eager, least-sticky mode).
            self.ip("nexthop", verb, "id", str(self.GROUP), "group", group, "type", "resilient",
                    "buckets", str(NH_BUCKETS), "idle_timer", "0")
            self.group_exists = True
            table = [-1] * NH_BUCKETS
            for b in self.ip("nexthop", "bucket", "show", "id", str(self.GROUP), json_out=True):
                table[b["bucket"]["index"]] = b["bucket"]["nhid"] - 1
            if -1 in table:
                raise RuntimeError("bucket dump incomplete")
            return table
        return step


# -------------------------------------------------------------- measuring

@dataclass
class Result:
    slot_moved: list[float] = field(default_factory=list)
    flow_moved: list[float] = field(default_factory=list)
    flow_err: list[float] = field(default_factory=list)     # percentage points
    slot_err: list[float] = field(default_factory=list)
    note: str = ""


def dist_errors(table: Sequence[int], flows: Sequence[int], want: Sequence[float]):
    n = len(want)
    fc, sc = [0] * n, [0] * n
    for h in flows:
        fc[table[h % len(table)]] += 1
    for t in table:
        sc[t] += 1
    ferr = max(abs(fc[i] / len(flows) - want[i]) for i in range(n)) * 100
    serr = max(abs(sc[i] / len(table) - want[i]) for i in range(n)) * 100
    return ferr, serr


def run_method(step: Callable[[Sequence[float]], list[int]], seq: list[list[float]],
               flows: Sequence[int]) -> Result:
    res = Result()
    prev = None
    for ws in seq:
        table = step(ws)
        want = shares(ws)
        ferr, serr = dist_errors(table, flows, want)
        res.flow_err.append(ferr)
        res.slot_err.append(serr)
        if prev is not None:
            res.slot_moved.append(slots_moved(prev, table) / len(table))
            size = len(table)
            res.flow_moved.append(sum(1 for h in flows if prev[h % size] != table[h % size])
                                  / len(flows))
        prev = table
    return res


def minimum(seq: list[list[float]]) -> Result:
    res = Result()
    for a, b in zip(seq, seq[1:]):
        m = sum(abs(x - y) for x, y in zip(shares(a), shares(b))) / 2
        res.slot_moved.append(m)
        res.flow_moved.append(m)
    return res


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--tunnels", default="3,4,5,6")
    ap.add_argument("--no-kernel", action="store_true", help="skip resilient nexthop groups")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.tunnels.split(",")]
    flows = synthetic_flows(args.flows, args.seed)

    # SIGTERM must unwind through the finally below so the namespace goes away.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    nh = None if args.no_kernel else ResilientNexthops(max(counts))
    nh_error = "skipped (--no-kernel)" if args.no_kernel else ""
    try:
        if nh is not None:
            try:
                nh.__enter__()
            except Exception as e:       # noqa: BLE001 - any failure: report and go on
                nh.cleanup()
                nh_error = f"unavailable on this kernel: {e}"
        rows = []
        for k in counts:
            seq = drift(k, args.steps, args.seed)
            methods: dict[str, Result] = {}
            methods["steerd"] = run_method(steerd_method(), seq, flows)
            methods["minimum"] = minimum(seq)
            methods["maglev"] = run_method(maglev_table, seq, flows)
            if nh is not None and nh.created:
                try:
                    methods["resilient-nh"] = run_method(nh.method(), seq, flows)
                except Exception as e:   # noqa: BLE001
                    nh_error = f"failed: {e}"
                    methods["resilient-nh"] = Result(note=nh_error)
            else:
                methods["resilient-nh"] = Result(note=nh_error)
            outages = sum(1 for a, b in zip(seq, seq[1:]) if (0 in a) != (0 in b))
            rows.append((k, seq, methods, outages))
    finally:
        if nh is not None:
            nh.cleanup()

    print(f"rebalance: {args.steps}-step drift (seed {args.seed}), {args.flows} flows "
          f"(steerd.testing.flowhash), steerd {NSLOTS} slots, Maglev M={MAGLEV_M}, "
          f"resilient nexthop group {NH_BUCKETS} buckets")
    print("moved = mean fraction per step; x min = mean moved / mean minimum; "
          "err = max |share - weight share| in points (mean over steps / worst step)")
    hdr = (f"{'tun':>3} {'method':<13} {'moved flows':>11} {'moved slots':>11} "
           f"{'x min flows':>11} {'x min slots':>11} {'err flows':>13} {'err slots':>13}")
    print(hdr)
    print("-" * len(hdr))
    checks = []
    for k, seq, methods, outages in rows:
        mn = mean(methods["minimum"].slot_moved)
        for name, r in methods.items():
            if r.note:
                print(f"{k:>3} {name:<13} {r.note}")
                continue
            fm, sm = mean(r.flow_moved), mean(r.slot_moved)
            fe = f"{mean(r.flow_err):5.2f}/{max(r.flow_err):5.2f}" if r.flow_err else "-"
            se = f"{mean(r.slot_err):5.3f}/{max(r.slot_err):5.3f}" if r.slot_err else "-"
            print(f"{k:>3} {name:<13} {fm:>11.4f} {sm:>11.4f} {fm / mn:>11.3f} "
                  f"{sm / mn:>11.3f} {fe:>13} {se:>13}")
        s = methods["steerd"]
        checks.append((k, mean(s.slot_moved) / mn, mean(s.flow_moved) / mn, max(s.flow_err)))
        print(f"{'':>3} ({outages} steps with a tunnel going to or from 0)")
    print()
    ok = True
    for k, rs, rf, fe in checks:
        good = rs <= 1.02 and fe <= 2.0
        ok &= good
        print(f"{k} tunnels: steerd slots {rs:.3f} x min, flows {rf:.3f} x min (goal <= 1.02), "
              f"worst flow distribution error {fe:.2f} points (goal <= 2): {verdict(good)}")
    if nh_error:
        print(f"resilient nexthop groups: {nh_error}")
    record(rows=[{"tunnels": k, "outages": outages,
                  "flows_moved": {n: mean(r.flow_moved) for n, r in methods.items() if not r.note},
                  "slots_moved": {n: mean(r.slot_moved) for n, r in methods.items() if not r.note},
                  "x_min_flows": {n: mean(r.flow_moved) / mean(methods["minimum"].flow_moved)
                                  for n, r in methods.items() if not r.note}}
                 for k, seq, methods, outages in rows], resilient_nh_error=nh_error)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
