"""Failover benchmark: how long until a silently blackholed primary tunnel's
flows arrive at the site through the other tunnels.

Per trial: ~1/3 of the flows run on pri-wan1; at T0 the site starts dropping
everything from that tunnel (no carrier change). A flow's failover time is the
first packet it delivers through another tunnel minus T0 (receiver and
benchmark share CLOCK_MONOTONIC); the trial's time is the slowest flow's.
Then the blackhole is lifted and we wait until steerd has taken the tunnel
back before the next trial. Prints p50/p95/max per probe interval, next to
the peers' default detection times (PEERS.md) for scale.
"""
from __future__ import annotations

import argparse
import time

from steerd.lab.impair import set_drop
from steerd.lab.runner import Receiver, SteerdProcess, send
from steerd.lab.topology import Lab

PEERS = "mwan3 ≈ 60–70 s, dpinger ≈ 15 s, Cisco BFD 7 s, FortiOS ≈ 2.5–3 s"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def wait_until(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def run_interval(interval: str, trials: int, flows: int) -> list[float]:
    lab = Lab("sdbfo").up()
    steerd = None
    rx = None
    try:
        cfg = lab.config(bandwidths={1: 100, 2: 100, 3: 100}, probe={"interval": interval})
        steerd = SteerdProcess(lab, lab.write_config(cfg))
        rx = Receiver(lab)
        pps = max(6000, flows * 20)  # every flow sends every <= 50 ms: timing resolution
        sender = send(lab, flows, duration=trials * 30 + 60, pps=pps, background=True)
        times: list[float] = []
        for trial in range(trials):
            rx.reset()
            time.sleep(1.0)
            snap = rx.snapshot()
            on_p1 = [f for f, ifs in snap.items() if list(ifs) == ["gw-p1"]]
            t0 = time.monotonic()
            set_drop(lab, "pri-wan1", blackhole=True)
            ok = wait_until(lambda: _moved(rx, on_p1), 15.0)
            first = rx.first_seen()
            moved = [min(v for k, v in first[f].items() if k != "gw-p1" and v > t0) - t0
                     for f in on_p1 if any(k != "gw-p1" and v > t0 for k, v in first[f].items())]
            t = max(moved) if ok and moved else float("inf")
            times.append(t)
            print(f"  interval {interval:>5}  trial {trial + 1:2d}: {len(on_p1)} flows on pri-wan1, "
                  f"all moved after {t * 1000:7.1f} ms", flush=True)
            set_drop(lab, "pri-wan1")
            wait_until(lambda: _tunnel(steerd, "pri-wan1")["share"] > 0.2, 60.0)
        sender.kill()
        return times
    finally:
        if rx:
            rx.proc.kill()
        if steerd:
            steerd.stop()
            steerd.cleanup()
        lab.down()


def _tunnel(steerd: SteerdProcess, name: str) -> dict:
    return next(t for t in steerd.status()["tunnels"] if t["name"] == name)


def _moved(rx: Receiver, flows: list[int]) -> bool:
    snap = rx.snapshot()
    return all(len(snap.get(f, {})) > 1 for f in flows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--flows", type=int, default=600)
    ap.add_argument("--intervals", default="1s,100ms")
    a = ap.parse_args()
    results = {iv: run_interval(iv, a.trials, a.flows) for iv in a.intervals.split(",")}
    goals = {"1s": 1.5, "100ms": 0.5}
    print(f"\nfailover of a silently blackholed primary ({a.trials} trials, ~{a.flows // 3} flows on it)")
    print(f"{'interval':>8}  {'p50':>8}  {'p95':>8}  {'max':>8}  goal p95")
    for iv, ts in results.items():
        print(f"{iv:>8}  {pct(ts, .5) * 1000:6.0f}ms  {pct(ts, .95) * 1000:6.0f}ms  "
              f"{max(ts) * 1000:6.0f}ms  <= {goals.get(iv, float('nan')) * 1000:.0f}ms"
              f"  {'OK' if pct(ts, .95) <= goals.get(iv, 0) else 'MISSED'}")
    print(f"peers' default detection times: {PEERS}")


if __name__ == "__main__":
    main()
