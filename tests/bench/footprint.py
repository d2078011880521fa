"""Daemon footprint: RSS and CPU (share of one core) over a measurement period,
with 6 tunnels probed at 1 s and at 100 ms, while 300 flows run. The baseline
column is an idle Python interpreter with the same imports measured the
same way in the same run (what a do-nothing daemon costs on this machine)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from steerd.lab.runner import SteerdProcess, send
from steerd.lab.topology import Lab

TICKS = os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> tuple[float, int]:
    """(CPU seconds so far, RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
    return cpu, rss


def measure(pid: int, seconds: float) -> tuple[float, int]:
    c0, _ = sample(pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    c1, rss = sample(pid)
    return 100 * (c1 - c0) / (time.monotonic() - t0), rss


def run(interval: str, seconds: float) -> tuple[float, int]:
    lab = Lab("sdbfp").up()
    steerd = None
    try:
        steerd = SteerdProcess(lab, lab.write_config(lab.config(probe={"interval": interval})))
        time.sleep(3)
        sender = send(lab, 300, duration=seconds + 5, pps=2000, background=True)
        result = measure(steerd.proc.pid, seconds)  # `ip netns exec` execs: same pid
        sender.kill()
        return result
    finally:
        if steerd:
            steerd.stop()
            steerd.cleanup()
        lab.down()


def baseline(seconds: float) -> tuple[float, int]:
    p = subprocess.Popen([sys.executable, "-c",
                          "import time, steerd.daemon, bcc, pyroute2, prometheus_client; time.sleep(1e6)"])
    try:
        time.sleep(2)
        return measure(p.pid, seconds)
    finally:
        p.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    a = ap.parse_args()
    base = baseline(min(a.seconds, 10))
    rows = [("idle python (baseline)", *base)]
    for iv in ("1s", "100ms"):
        rows.append((f"steerd, 6 tunnels, {iv} probes", *run(iv, a.seconds)))
    print(f"\nfootprint over {a.seconds:.0f} s (CPU = % of one core)")
    print(f"{'process':<34} {'CPU':>7} {'RSS':>9}")
    for name, cpu, rss in rows:
        print(f"{name:<34} {cpu:6.2f}% {rss / 2**20:7.1f} MiB")
    print(f"goal: < 2 % of one core at 1 s probes: {'OK' if rows[1][1] < 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
