"""Forwarding throughput through the lab gateway with iperf3 (many parallel TCP
flows), for: no classifier (the kernel's own ECMP over the same three primary
tunnels with the same 4:2:1 weights, hashing the 5-tuple); steerd with N rules; and an nftables mangle chain
that marks the same traffic with the same N rules the way mwan3/VyOS do
(conntrack restore first, so only a connection's first packet walks the chain;
and, as a second row, the chain walked by every packet). Same lab, same run,
same destination (which matches no rule: the common "everything else" case).
Then the rate of new connections each setup forwards: where a chain walked
once per connection costs (long TCP flows never show it), and where steerd
places every new flow in its flow table.

    tests/bench/throughput [--rules 10000] [--seconds 10] [--parallel 32] [--rounds 3]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "bench")]

from benchout import record, verdict  # noqa: E402
from rulegen import rules_yaml  # noqa: E402

from steerd.lab.netns import ns_popen, ns_sh  # noqa: E402
from steerd.lab.runner import PY, SteerdProcess  # noqa: E402
from steerd.lab.topology import Lab  # noqa: E402
from steerd.rules import parse_rules  # noqa: E402

READY_TIMEOUT_S = 600       # steerd start with 10,000 rules on a loaded machine
MIN_PPS = 500               # slower than this, the new-flows sender is stuck, not slow
DST = "10.20.200.1"   # inside the steered range, matched by no generated rule
WAN_MARK = {"wan1": 1 << 24, "wan2": 2 << 24, "wan3": 3 << 24}


def iperf(lab: Lab, seconds: float, parallel: int) -> float:
    server = ns_popen(lab.site, ["iperf3", "-s", "-1", "-B", DST], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    out = ns_sh(lab.core, "iperf3", "-c", DST, "-t", str(seconds), "-P", str(parallel), "-J")
    server.wait(10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def _set(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def nft_rule(rule) -> list[str]:
    """One steerd rule as nftables statement(s) (one per address family used)."""
    m = rule.match
    out = []
    fams = {n.version for n in m.src + m.dst + m.src_not + m.dst_not} or {4, 6}
    for fam in sorted(fams):
        ip = "ip" if fam == 4 else "ip6"
        parts = []
        for key, nets, neg in (("saddr", m.src, ""), ("saddr", m.src_not, "!= "),
                               ("daddr", m.dst, ""), ("daddr", m.dst_not, "!= ")):
            sel = [str(n) for n in nets if n.version == fam]
            if sel:
                parts.append(f"{ip} {key} {neg}{_set(sel)}")
        if m.proto is not None:
            parts.append(f"meta l4proto {_set([str(p) for p in sorted(m.proto)])}")
        for key, ranges in (("sport", m.src_port), ("dport", m.dst_port)):
            if ranges:
                parts.append(f"th {key} {_set([f'{lo}-{hi}' if lo != hi else str(lo) for lo, hi in ranges])}")
        if m.dscp is not None:
            parts.append(f"{ip} dscp {_set([str(d) for d in sorted(m.dscp)])}")
        mark = WAN_MARK[rule.wan]
        out.append(" ".join(parts) + f" meta mark set {mark:#x} ct mark set {mark:#x} accept")
    return out


def nft_ruleset(ruleset, conntrack: bool) -> str:
    lines = ["table inet sdbench {", "  chain rules {"]
    for r in ruleset.rules:
        lines += ["    " + s for s in nft_rule(r)]
    # balance what no rule took, per new connection, in proportion to the weights
    lines.append("    meta mark set numgen random mod 175 map { 0-99 : 0x1000000, 100-149 : 0x2000000, "
                 "150-174 : 0x3000000 } ct mark set meta mark")
    lines.append("  }")
    lines.append("  chain pre { type filter hook prerouting priority mangle; policy accept;")
    lines.append('    iifname != "core0" return')
    if conntrack:
        lines.append("    ct mark != 0 meta mark set ct mark accept")
    lines.append("    jump rules")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def policy_routes(lab: Lab) -> None:
    for i, t in enumerate(("tun-p1", "tun-p2", "tun-p3")):
        ns_sh(lab.gw, "ip", "route", "add", "10.20.0.0/16", "dev", t, "table", str(2101 + i))
        ns_sh(lab.gw, "ip", "rule", "add", "fwmark", f"{(i + 1) << 24:#x}/0xf000000",
              "lookup", str(2101 + i), "pref", "2100")


@contextlib.contextmanager
def setup(mode: str, n: int):
    """The lab with one of the setups steering 10.20.0.0/16 from core to the site."""
    lab = Lab("sdbtp").up()
    steerd = None
    try:
        text = rules_yaml(n)
        if mode == "none":
            ns_sh(lab.gw, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1")
            ns_sh(lab.gw, "ip", "route", "add", "10.20.0.0/16",
                  "nexthop", "dev", "tun-p1", "weight", "4", "nexthop", "dev", "tun-p2", "weight", "2",
                  "nexthop", "dev", "tun-p3", "weight", "1")
        elif mode == "steerd":
            path = os.path.join(lab.run_dir, "rules.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            # compiling and loading 10,000 rules takes seconds, minutes under load
            steerd = SteerdProcess(lab, lab.write_config(lab.config(rules_file=path)),
                                   ready_timeout=READY_TIMEOUT_S)
            settle(steerd.proc.pid)
        else:
            policy_routes(lab)
            rs = parse_rules(text, "bench.yaml")
            ns_sh(lab.gw, "nft", "-f", "-", input=nft_ruleset(rs, conntrack=mode == "nft-ct"))
        yield lab
    finally:
        if steerd:
            steerd.stop()
            steerd.cleanup()
        lab.down()


def settle(pid: int, idle_share: float = 0.05, limit_s: float = 60.0) -> None:
    """Wait until the daemon uses < *idle_share* of a core (its start-up work
    done: the sockets answer before the last of it): what is measured is a
    running gateway, not one starting."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu_s() -> float:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick     # utime + stime

    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        before = cpu_s()
        time.sleep(0.5)
        if cpu_s() - before < idle_share * 0.5:
            return


def run(mode: str, n: int, seconds: float, parallel: int) -> float:
    with setup(mode, n) as lab:
        return iperf(lab, seconds, parallel)


def _tunnel_tx(lab: Lab) -> int:
    out = json.loads(ns_sh(lab.gw, "ip", "-s", "-j", "link", "show"))
    return sum(link["stats64"]["tx"]["packets"] for link in out if link["ifname"].startswith("tun-p"))


def send_new_flows(lab: Lab, flows: int) -> tuple[int, float]:
    """One packet to each of *flows* new flows as fast as one sender can:
    (packets sent, seconds from the first to the last). The sender times
    itself, so its interpreter's start-up is not counted; the time limit
    scales with the work (a loaded machine is slow, not stuck)."""
    p = ns_popen(lab.core, [PY, "-m", "steerd.lab.traffic", "send", "--flows", str(flows),
                            "--dst", "10.20.0.0/16", "--duration", "0", "--pps", "0",
                            "--port", "5999", "--timed"], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = p.communicate(timeout=60 + flows / MIN_PPS)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise TimeoutError(f"{flows} new flows not sent in {60 + flows / MIN_PPS:.0f} s "
                           f"(< {MIN_PPS} packets/s)") from None
    sent, seconds = out.split()
    return int(sent), float(seconds)


def new_flows(mode: str, n: int, flows: int) -> tuple[float, float]:
    """*flows* new UDP flows of one packet each, sent as fast as one sender can:
    (new flows per second forwarded into the tunnels, share of them forwarded).
    The chain of the nftables setups is walked once per new connection here,
    which long TCP flows never show; steerd looks each one up in its flow
    table and inserts it."""
    with setup(mode, n) as lab:
        before = _tunnel_tx(lab)
        sent, took = send_new_flows(lab, flows)
        time.sleep(0.5)
        forwarded = _tunnel_tx(lab) - before
        return forwarded / took, forwarded / max(sent, 1)


def modes_of(rules: int) -> list[tuple[str, str]]:
    return [("none", "no classifier (kernel ECMP, same 3 tunnels, 4:2:1)"),
            ("steerd", f"steerd, {rules} rules"),
            ("nft-ct", f"nftables chain, {rules} rules, ct mark restore (mwan3)"),
            ("nft", f"nftables chain, {rules} rules, every packet")]


def report(rules: int, seconds: float, parallel: int, rounds: int = 3) -> bool:
    """Throughput, then new connections (each part: every setup in turn,
    *rounds* times interleaved: this VM's throughput drifts by tens of percent
    within minutes, interleaving spreads the drift over all setups); prints
    the medians; True when steerd meets both goals. *seconds* 0: new
    connections only."""
    ok = throughput_report(rules, seconds, parallel, rounds) if seconds > 0 else True
    return new_connections_report(rules, rounds) and ok


def throughput_report(rules: int, seconds: float, parallel: int, rounds: int) -> bool:
    modes = modes_of(rules)
    runs: dict[str, list[float]] = {m: [] for m, _ in modes}
    for _ in range(rounds):
        for m, _label in modes:
            runs[m].append(run(m, rules, seconds, parallel))
    med = {m: statistics.median(v) for m, v in runs.items()}
    base = med["none"]
    print(f"\nthroughput through the lab gateway, iperf3 -P {parallel}, {seconds:.0f} s each, "
          f"{rounds} rounds interleaved (median, min-max)")
    print(f"{'setup':<58} {'Mbit/s':>9} {'x none':>7}   min-max Mbit/s")
    for m, label in modes:
        print(f"{label:<58} {med[m]:9.0f} {med[m] / base:7.3f}   {min(runs[m]):.0f}-{max(runs[m]):.0f}")
    ok = med["steerd"] >= 0.95 * base
    # the noise band: the same ratio per round (setups of one round ran minutes
    # apart at most), and how far the baseline itself moved between rounds
    paired = [s / n for s, n in zip(runs["steerd"], runs["none"])]
    spread = (max(runs["none"]) - min(runs["none"])) / base
    print(f"steerd / no classifier = {med['steerd'] / base:.3f} (median), per round "
          f"{min(paired):.2f}-{max(paired):.2f}; the baseline alone spans {spread:.0%} of its "
          f"median between rounds (the noise band)")
    print(f"goal: steerd >= 0.95 x no classifier: {verdict(ok)}; "
          f"steerd / nft-ct = {med['steerd'] / med['nft-ct']:.2f}, "
          f"steerd / nft (every packet) = {med['steerd'] / med['nft']:.2f}")

    record(labels=dict(modes), runs_mbps=runs, median_mbps=med, ratio_per_round=paired)
    return ok


def new_connections_report(rules: int, rounds: int, flows: int = 50000) -> bool:
    modes = modes_of(rules)
    rates: dict[str, list[float]] = {m: [] for m, _ in modes}
    for _ in range(rounds):
        for m, _label in modes:
            rate, share = new_flows(m, rules, flows)
            rates[m].append(rate)
            if share < 0.99:
                print(f"!! {m}: only {share:.1%} of the new flows were forwarded")
    nmed = {m: statistics.median(v) for m, v in rates.items()}
    print(f"\nnew connections: {flows} UDP flows of one packet each, one sender at full speed "
          f"(timed from its first packet to its last), {rounds} rounds interleaved (median)")
    print(f"{'setup':<58} {'flows/s':>9} {'x none':>7}")
    for m, label in modes:
        print(f"{label:<58} {nmed[m]:9.0f} {nmed[m] / nmed['none']:7.3f}")
    npaired = [s / n for s, n in zip(rates["steerd"], rates["none"])]
    print(f"steerd / no classifier = {nmed['steerd'] / nmed['none']:.3f} (median), per round "
          f"{min(npaired):.2f}-{max(npaired):.2f}; steerd / nft-ct = "
          f"{nmed['steerd'] / nmed['nft-ct']:.1f} x new connections per second")
    new_ok = nmed["steerd"] >= 0.95 * nmed["none"]
    print(f"goal: new connections, steerd >= 0.95 x no classifier: {verdict(new_ok)}")
    record(new_flows_per_s=rates, new_flows_median=nmed)
    return new_ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="iperf3 time per setup (0: new connections only)")
    ap.add_argument("--parallel", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    return 0 if report(a.rules, a.seconds, a.parallel, a.rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
