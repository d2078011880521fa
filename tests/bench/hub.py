"""Hub mode at scale: 1, 10, 100 and 1,000 sites x 3 tunnels, in one run.

Per site count, in the namespace hub lab (steerd.lab.topology.HubLab):
  start      process start -> every tunnel has a measured RTT (all probed once)
  CPU, RSS   the daemon over a steady period with 1 s probes (% of one core)
  ns/pkt     BPF_PROG_TEST_RUN of the program attached to the ingress (a UDP
             packet to a random site's range, flow-table hit), and its ratio to
             the 1-site figure measured in the same run (the baseline)
  ip rules   steerd's `ip rule` entries (priority 2100)
  lateness   probes sent after their schedule over the daemon's last 10 s
             (status probe_timing: max and p99): whether 3 x sites probes a
             second keep up
  failover   p95 over N trials: a random site's random tunnel is blackholed at a
             random phase of the probe cycle while every site is probed; the time
             until the last of its flows arrives through another tunnel
Goals at the largest site count (1,000 by default): <= 10 % of a core, <= 1.1 x
single-site ns/packet, constant ip rules, failover p95 <= 1.5 s, start <= 30 s.
Each is printed with its goal and the ratio figure / goal; exit 1 on a miss.
Interrupted (Ctrl-C, SIGTERM), it still removes its namespaces, links and the daemon.
"""
from __future__ import annotations

import argparse
import ctypes as ct
import os
import random
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchout import record, verdict  # noqa: E402
from footprint import measure  # noqa: E402  (same CPU/RSS method as tests/bench/footprint)

from steerd.lab.impair import set_drop  # noqa: E402
from steerd.lab.netns import ns_sh  # noqa: E402
from steerd.cli import request  # noqa: E402
from steerd.lab.runner import Receiver, SteerdProcess, send  # noqa: E402
from steerd.lab.topology import HubLab, hub_site_range  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False


def attached_prog_fd(lab: HubLab) -> int:
    """fd of the classifier steerd attached to core0 (by its program id)."""
    from bcc.libbcc import lib
    out = ns_sh(lab.gw, "tc", "filter", "show", "dev", "core0", "ingress")
    prog_id = int(re.search(r"\bid (\d+)", out).group(1))
    get = lib.bpf_prog_get_fd_by_id
    get.restype, get.argtypes = ct.c_int, [ct.c_uint32]
    fd = get(prog_id)
    if fd < 0:
        raise OSError(-fd, "bpf_prog_get_fd_by_id")
    return fd


def ns_per_packet(lab: HubLab, nsites: int, rounds: int = 7, repeat: int = 200_000) -> float:
    """Median over rounds of the mean ns per run; each round a random site's range."""
    from steerd.testing.testrun import build_packet, test_run
    fd = attached_prog_fd(lab)
    rng = random.Random(13)
    try:
        out = []
        for _ in range(rounds):
            net = hub_site_range(rng.randrange(nsites)).split("/")[0].rsplit(".", 1)[0]
            pkt = build_packet("10.99.0.2", f"{net}.{rng.randrange(1, 250)}", "udp",
                               rng.randrange(1024, 65535), 5001, payload=b"x" * 64)
            _, ns, mark = test_run(fd, pkt, repeat)
            assert mark & 0x0F000000, "the test packet was not steered"
            out.append(ns)
        return sorted(out)[len(out) // 2]
    finally:
        os.close(fd)


def site_status(lab: HubLab, s: int) -> dict:
    """One site's status (`steerctl status --site`): cheap however many sites run."""
    return request(lab.socket, {"cmd": "status", "site": lab.site_name(s)})["status"]


def failover_trials(lab: HubLab, steerd: SteerdProcess, trials: int, flows: int) -> list[float]:
    rng = random.Random(7)
    rx = Receiver(lab)
    sites = rng.sample(range(lab.nsites), min(trials, lab.nsites))
    times = []
    try:
        for trial in range(trials):
            s = sites[trial % len(sites)]
            if trial >= len(sites):   # a site used before: its tunnel must be back first
                for k in range(3):
                    set_drop(lab, f"s{s}-pri-wan{k + 1}")
                wait_until(lambda: all(t["state"] != "down" for t in site_status(lab, s)["tunnels"]),
                           30)
            rx.reset()
            sender = send(lab, flows, dst=hub_site_range(s), duration=6.0,
                          pps=max(4000, flows * 20), first_flow=trial * 10_000, background=True)
            time.sleep(1.5 + rng.random())          # random phase against the 1 s probes
            snap = rx.snapshot()
            # a random tunnel among those carrying flows (one just back up may carry none yet)
            busy = sorted({k for k in range(3) for ifs in snap.values() if list(ifs) == [f"h{s}s{k}"]})
            k = rng.choice(busy) if busy else rng.randrange(3)
            dead_if = f"h{s}s{k}"
            on_dead = [f for f, ifs in snap.items() if list(ifs) == [dead_if]]
            t0 = time.monotonic()
            set_drop(lab, f"s{s}-pri-wan{k + 1}", blackhole=True)
            ok = wait_until(lambda: all(len(rx.snapshot().get(f, {})) > 1 for f in on_dead), 10.0, 0.1)
            first = rx.first_seen()
            moved = [min(v for i, v in first[f].items() if i != dead_if and v > t0) - t0
                     for f in on_dead if any(i != dead_if and v > t0 for i, v in first[f].items())]
            t = max(moved) if ok and moved else float("inf")
            times.append(t)
            print(f"    trial {trial + 1:2d}: site{s} tunnel {k}, {len(on_dead)} flows, "
                  f"all moved after {t * 1000:7.1f} ms", flush=True)
            sender.kill()
            sender.wait()
    finally:
        rx.proc.kill()
    return times


def run(nsites: int, trials: int, flows: int, steady: float) -> dict:
    print(f"== {nsites} sites x 3 tunnels", flush=True)
    lab = HubLab("sdbhub", nsites, 3)
    t = time.monotonic()
    lab.up()
    print(f"  lab up in {time.monotonic() - t:.1f} s", flush=True)
    steerd = None
    try:
        path = lab.write_config(lab.config(dataplane={"bpffs": lab.bpffs}))
        t0 = time.monotonic()
        steerd = SteerdProcess(lab, path, log_path=os.path.join(lab.run_dir, "steerd.log"))
        ok = wait_until(lambda: all(t["rtt_ms"] is not None for t in steerd.status()["tunnels"]),
                        120, 0.2)
        start = time.monotonic() - t0 if ok else float("inf")
        print(f"  all {nsites * 3} tunnels probed {start:.1f} s after start", flush=True)
        cpu, rss = measure(steerd.proc.pid, steady)
        timing = steerd.status()["probe_timing"]
        print(f"  steady: {cpu:.2f} % of a core, RSS {rss / 2**20:.0f} MiB; probes late by at most "
              f"{timing['late_max_ms']} ms (p99 {timing['late_p99_ms']} ms) over the last "
              f"{timing['window_s']:.0f} s, {timing['probes']} probes", flush=True)
        ns = ns_per_packet(lab, nsites)
        rules = sum(1 for ln in ns_sh(lab.gw, "ip", "rule", "show").splitlines()
                    if ln.startswith("2100:"))
        fo = failover_trials(lab, steerd, trials, flows) if trials else []
        return {"sites": nsites, "start": start, "cpu": cpu, "rss": rss, "ns": ns, "rules": rules,
                "late_max_ms": timing["late_max_ms"], "late_p99_ms": timing["late_p99_ms"],
                "fo_p95": pct(fo, .95) if fo else float("nan"),
                "fo_p50": pct(fo, .5) if fo else float("nan")}
    finally:
        if steerd:
            steerd.stop()
            steerd.cleanup()
        lab.down()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}ms"


def _exit_on_term(signum, frame) -> None:
    raise SystemExit(128 + signum)    # unwinds through run()'s finally: daemon and lab removed


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_term)
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", default="1,10,100,1000")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--flows", type=int, default=300)
    ap.add_argument("--steady", type=float, default=30.0, help="seconds of CPU/RSS measurement")
    a = ap.parse_args()
    counts = [int(x) for x in a.sites.split(",")]
    if counts[0] != 1:
        counts.insert(0, 1)   # the baseline
    rows = [run(n, a.trials, a.flows, a.steady) for n in counts]
    base = rows[0]["ns"]
    print("\nhub mode, 3 tunnels per site, 1 s probes (CPU = % of one core; ns/pkt by "
          "BPF_PROG_TEST_RUN, ratio to 1 site in this run)")
    print(f"{'sites':>6} {'start':>8} {'CPU':>7} {'RSS':>8} {'ns/pkt':>7} {'ratio':>6} "
          f"{'ip rules':>8} {'late max':>9} {'p99':>7} {'failover p50':>13} {'p95':>8}")
    for r in rows:
        print(f"{r['sites']:>6} {r['start']:7.1f}s {r['cpu']:6.2f}% {r['rss'] / 2**20:6.0f}Mi "
              f"{r['ns']:7.0f} {r['ns'] / base:5.2f}x {r['rules']:>8} "
              f"{_ms(r['late_max_ms']):>9} {_ms(r['late_p99_ms']):>7} "
              f"{r['fo_p50'] * 1000:11.0f}ms {r['fo_p95'] * 1000:6.0f}ms")
    last = rows[-1]
    rule_counts = sorted({r["rules"] for r in rows})
    # (figure, its value, goal, value / goal, met)
    checks = [("start to all probed", f"{last['start']:.1f} s", "<= 30 s", last["start"] / 30,
               last["start"] <= 30),
              ("daemon CPU", f"{last['cpu']:.2f} % of a core", "<= 10 %", last["cpu"] / 10,
               last["cpu"] <= 10),
              ("ns/packet vs 1 site", f"{last['ns'] / base:.2f} x", "<= 1.1 x",
               last["ns"] / base / 1.1, last["ns"] / base <= 1.1),
              ("ip rules", "/".join(map(str, rule_counts)), "constant",
               rule_counts[-1] / rule_counts[0] if rule_counts[0] else float("inf"),
               len(rule_counts) == 1),
              ("failover p95", f"{last['fo_p95']:.2f} s", "<= 1.5 s", last["fo_p95"] / 1.5,
               last["fo_p95"] <= 1.5)]
    print(f"\ngoals at {last['sites']} sites (ratio = figure / goal):")
    for name, value, goal, ratio, ok in checks:
        print(f"  {name:<22} {value:>18}   goal {goal:<9} ratio {ratio:5.2f}   {verdict(ok)}")
    print(f"  {'probe lateness':<22} {_ms(last['late_max_ms']) + ' max':>18}   "
          f"p99 {_ms(last['late_p99_ms'])} ({3 * last['sites']} probes a second; no goal set)")
    record(rows=rows, baseline_ns=base)
    return 0 if all(c[-1] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
