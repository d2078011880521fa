"""False downs under random probe loss: seeded replays of the link monitor.

steerd.health.LinkMonitor (the daemon's own state machine) is driven by
steerd.health.simulate over synthetic paths (20 ms RTT, 2 ms jitter, each
probe lost independently with probability p), and every transition to `down`
is counted. No tunnel is dead in these paths: every down is false.

  steady   p = 10, 40, 50 % from the start, 10 minutes per run, 300 runs each
  step     60 s clean, then p = 10, 20, 30, 40, 50 % for 2 minutes, 1000 runs each
           (the onset of loss is the hard case: the loss estimate still says clean)

each at 1 s and at 100 ms probes. Goal: 0 false downs everywhere. The same
paths as tests/unit/test_health.py's seeded cases, many more of them.

    tests/bench/falsedowns [--steady-runs 300] [--step-runs 1000] [--jobs N]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "bench")]

from benchout import record, verdict  # noqa: E402

from steerd.config import HealthConfig, ProbeConfig  # noqa: E402
from steerd.health import LinkMonitor, simulate  # noqa: E402

PROBES = {"1s": ProbeConfig(interval=1.0, timeout=1.0, window=10),
          "100ms": ProbeConfig(interval=0.1, timeout=1.0, window=10)}
STEADY = (0.10, 0.40, 0.50)
STEP = (0.10, 0.20, 0.30, 0.40, 0.50)
CLEAN_S, STEP_S, STEADY_S = 60.0, 120.0, 600.0


def path(loss: float, seed: int, onset: float = 0.0):
    """rtt_of(seq, sent): None (lost) with probability *loss* after *onset*."""
    rng = random.Random(seed)

    def rtt_of(seq: int, sent: float) -> float | None:
        if sent >= onset and rng.random() < loss:
            return None
        return max(0.0005, rng.gauss(0.020, 0.002))
    return rtt_of


def false_downs(job: tuple[str, str, float, int]) -> int:
    """Downs in one seeded run (kind steady|step, probe interval, loss, seed)."""
    kind, probe, loss, seed = job
    m = LinkMonitor("t1", PROBES[probe], HealthConfig(), 0.0)
    if kind == "steady":
        tr = simulate(m, path(loss, seed), 0.0, STEADY_S)
    else:
        tr = simulate(m, path(loss, seed, onset=CLEAN_S), 0.0, CLEAN_S + STEP_S)
    return sum(1 for t in tr if t.new == "down")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steady-runs", type=int, default=300)
    ap.add_argument("--step-runs", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    cases = [("steady", probe, p, a.steady_runs) for probe in PROBES for p in STEADY]
    cases += [("step", probe, p, a.step_runs) for probe in PROBES for p in STEP]
    t0 = time.monotonic()
    results = {}
    with ProcessPoolExecutor(a.jobs) as pool:
        for kind, probe, p, runs in cases:
            # seeds differ per case, so no two cases replay the same random path
            base = {"steady": 1_000_000, "step": 2_000_000}[kind] + int(p * 100) * 10_000 \
                + (0 if probe == "1s" else 5_000)
            downs = list(pool.map(false_downs, [(kind, probe, p, base + s) for s in range(runs)],
                                  chunksize=20))
            results[(kind, probe, p)] = (runs, sum(downs), sum(1 for d in downs if d))
    took = time.monotonic() - t0

    print(f"false downs under random probe loss (steerd.health.simulate, seeded; {took:.0f} s)")
    print(f"{'case':<52} {'runs':>5} {'probe-hours':>11} {'false downs':>11}   goal")
    ok = True
    for (kind, probe, p), (runs, downs, _) in results.items():
        hours = runs * (STEADY_S if kind == "steady" else STEP_S) / 3600
        what = (f"steady {p:.0%} loss, 10 min" if kind == "steady"
                else f"0 -> {p:.0%} loss after {CLEAN_S:.0f} s clean, 2 min")
        good = downs == 0
        ok &= good
        print(f"{what + ', ' + probe + ' probes':<52} {runs:>5} {hours:>11.1f} {downs:>11}   "
              f"0: {verdict(good)}")
    record(cases=[{"kind": k, "probe": pr, "loss": p, "runs": r, "false_downs": d}
                  for (k, pr, p), (r, d, _) in results.items()])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
