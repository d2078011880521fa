"""Daemon footprint: RSS and CPU (share of one core) over a measurement period,
with 6 tunnels probed at 1 s and at 100 ms, and with 10,000 rules at 1 s,
while 300 flows run. The baseline row is an idle Python interpreter with the
same imports measured the same way in the same run (what a do-nothing daemon
costs on this machine).

Goals (issue 14): < 2 % of one core at 1 s probes; steady RSS with 6 tunnels
and 10,000 rules <= 100 MiB, its CPU within 0.5 % of one core of the
rule-less daemon's."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchout import record, verdict  # noqa: E402
from rulegen import rules_yaml  # noqa: E402

from steerd.lab.runner import SteerdProcess, send  # noqa: E402
from steerd.lab.topology import Lab  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> tuple[float, int]:
    """(CPU seconds so far, RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
    return cpu, rss


def rss_breakdown(pid: int) -> Counter:
    """RSS bytes per kind of mapping (/proc/PID/smaps): bcc's LLVM and clang
    libraries, libbcc, other shared libraries, the rest (heap, stacks, anonymous)."""
    out: Counter = Counter()
    kind = "anonymous and heap"
    with open(f"/proc/{pid}/smaps", encoding="utf-8") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping line
                path = head[5] if len(head) > 5 else ""
                name = os.path.basename(path)
                if name.startswith("libLLVM"):
                    kind = "libLLVM"
                elif name.startswith("libclang"):
                    kind = "libclang"
                elif name.startswith("libbcc"):
                    kind = "libbcc"
                elif ".so" in name:
                    kind = "other shared libraries"
                else:
                    kind = "anonymous and heap"
            elif line.startswith("Rss:"):
                out[kind] += int(line.split()[1]) * 1024
    return out


def measure(pid: int, seconds: float) -> tuple[float, int]:
    c0, _ = sample(pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    c1, rss = sample(pid)
    return 100 * (c1 - c0) / (time.monotonic() - t0), rss


RSS_GOAL = 100 * 2**20
RULES = 10_000


def run(interval: str, seconds: float, rules: int = 0) -> tuple[float, int, Counter]:
    lab = Lab("sdbfp").up()
    steerd = None
    try:
        extra = {}
        if rules:
            extra["rules_file"] = os.path.join(lab.run_dir, "rules.yaml")
            with open(extra["rules_file"], "w", encoding="utf-8") as f:
                f.write(rules_yaml(rules))
        steerd = SteerdProcess(lab, lab.write_config(lab.config(probe={"interval": interval},
                                                                **extra)))
        time.sleep(3)
        sender = send(lab, 300, duration=seconds + 5, pps=2000, background=True)
        cpu, rss = measure(steerd.proc.pid, seconds)  # `ip netns exec` execs: same pid
        parts = rss_breakdown(steerd.proc.pid)
        sender.kill()
        return cpu, rss, parts
    finally:
        if steerd:
            steerd.stop()
            steerd.cleanup()
        lab.down()


def baseline(seconds: float) -> tuple[float, int, Counter]:
    p = subprocess.Popen([sys.executable, "-c",
                          "import time, steerd.daemon, bcc, pyroute2, prometheus_client; time.sleep(1e6)"])
    try:
        time.sleep(2)
        return (*measure(p.pid, seconds), rss_breakdown(p.pid))
    finally:
        p.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    a = ap.parse_args()
    base = baseline(min(a.seconds, 10))
    rows = [("idle python (baseline)", *base)]
    for iv in ("1s", "100ms"):
        rows.append((f"steerd, 6 tunnels, {iv} probes", *run(iv, a.seconds)))
    rows.append((f"steerd, 6 tunnels, {RULES:,} rules, 1s", *run("1s", a.seconds, RULES)))
    print(f"\nfootprint over {a.seconds:.0f} s (CPU = % of one core)")
    print(f"{'process':<38} {'CPU':>7} {'RSS':>9} {'RSS/baseline':>12}")
    for name, cpu, rss, _ in rows:
        print(f"{name:<38} {cpu:6.2f}% {rss / 2**20:7.1f} MiB {rss / base[1]:11.2f}x")
    for row in (rows[1], rows[3]):
        print(f"RSS of {row[0]} by mapping (/proc/PID/smaps): " + ", ".join(
            f"{k} {v / 2**20:.0f} MiB" for k, v in row[3].most_common()))
    cpu_ok = rows[1][1] < 2
    print(f"goal: < 2 % of one core at 1 s probes: {verdict(cpu_ok)}")
    rss_ok = rows[3][2] <= RSS_GOAL
    print(f"goal: RSS with {RULES:,} rules <= {RSS_GOAL / 2**20:.0f} MiB "
          f"({rows[3][2] / 2**20:.0f} MiB, {rows[3][2] / RSS_GOAL:.2f}x the goal): {verdict(rss_ok)}")
    same_cpu = rows[3][1] <= rows[1][1] + 0.5
    print(f"goal: CPU with {RULES:,} rules within 0.5 % of one core of the rule-less daemon's "
          f"({rows[3][1]:.2f} % vs {rows[1][1]:.2f} %): {verdict(same_cpu)}")
    record(rows=[{"process": n, "cpu_pct": c, "rss_bytes": r, "rss_by_mapping": dict(p)}
                 for n, c, r, p in rows])
    return 0 if cpu_ok and rss_ok and same_cpu else 1


if __name__ == "__main__":
    sys.exit(main())
