"""ns per packet through the program steerd attaches, as the daemon runs it.

The daemon starts in the namespace lab's gateway (its own compile, load, map
filling and tc attach, rule sets applied with `steerctl rules apply`'s
request); the bench finds the program attached to the ingress interface by
its id and runs it with BPF_PROG_TEST_RUN (JIT on) on one packet per row:

  unsteered          destination outside network_ranges: parse + range lookup
                     (the baseline every row is divided by)
  steered, hit       in the ranges, no rule matches, the flow is in the flow
                     table (every repetition after the first)
  steered, new flow  a new flow each run (one run per packet: a repeated
                     packet is a hit from its second run on); shown beside
                     the hit paths measured the same way: in the flow table
                     but not in the CPU's cache of it (each flow's cache entry
                     taken by later flows), and in both
  rule matched       the packet's first matching rule pins a wan
  adversarial        10,000 rules whose src and dst candidates never meet:
                     the matcher visits every 64-rule block

usage: tests/bench/packet [--repeat N] [--json]
"""
from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "bench")]

from benchout import record, verdict  # noqa: E402
from rulegen import adversarial_yaml, matching_packet, rules_yaml  # noqa: E402

from steerd.cli import request_lines  # noqa: E402
from steerd.lab.netns import ns_sh  # noqa: E402
from steerd.lab.runner import SteerdProcess  # noqa: E402
from steerd.lab.topology import Lab  # noqa: E402
from steerd.rules import parse_rules  # noqa: E402
from steerd.testing.testrun import build_packet, test_run_ctx  # noqa: E402

GOAL_HIT_NS = 100        # steered, flow-table hit, 0 and 10,000 rules
GOAL_WORST_NS = 1000     # adversarial rule set
#: the generated rules' destinations (10/8, 2001:db8::/32), the adversarial
#: set's (30/8, 40/8) and the lab's IPv6 range; 192.0.2.0/24 stays outside
RANGES = {"r10": "10.0.0.0/8", "r30": "30.0.0.0/8", "r40": "40.0.0.0/8",
          "doc6": "2001:db8::/32", "lan6": "fd00:20::/48"}
NO_RULE4 = ("10.250.0.1", "10.250.9.9")        # in range, no generated rule covers 10.250/16
NO_RULE6 = ("fd00:20::1", "fd00:20::9")


def attached_prog_fd(lab: Lab) -> int:
    """An fd of the program the daemon attached to the lab's ingress interface."""
    from bcc.libbcc import lib
    out = json.loads(ns_sh(lab.gw, "tc", "-j", "filter", "show", "dev", "core0", "ingress"))
    ids = {f["options"]["prog"]["id"] for f in out if "prog" in f.get("options", {})}
    if len(ids) != 1:
        raise RuntimeError(f"expected one program on core0 ingress, found {sorted(ids)}")
    fd = lib.bpf_prog_get_fd_by_id(ct.c_uint32(ids.pop()))
    if fd < 0:
        raise OSError(ct.get_errno(), "bpf_prog_get_fd_by_id")
    return fd


def ns_repeated(fd: int, pkt: bytes, repeat: int, runs: int = 5) -> int:
    """Median over *runs* of the kernel's mean ns per run (*repeat* runs each)."""
    return int(statistics.median(test_run_ctx(fd, pkt, repeat).duration_ns for _ in range(runs)))


def ns_single(fd: int, pkts: list[bytes], warm: bool = False) -> int:
    """Median ns of one run per packet (each run timed alone; *warm*: right
    after an untimed run of the same packet)."""
    def one(p: bytes) -> int:
        if warm:
            test_run_ctx(fd, p, 1)
        return test_run_ctx(fd, p, 1).duration_ns
    return int(statistics.median(one(p) for p in pkts))


def flows(src: str, dst: str, n: int, base_port: int) -> list[bytes]:
    return [build_packet(src, dst, "udp", base_port + i, 53) for i in range(n)]


def apply_rules(lab: Lab, text: str, name: str) -> None:
    reply = next(request_lines(lab.socket, {"cmd": "rules_apply", "text": text, "path": name,
                                           "dry_run": False}))
    if not reply.get("ok"):
        raise RuntimeError(f"rules apply {name}: {reply.get('text') or reply.get('error')}")


def marked(fd: int, pkt: bytes) -> int:
    return test_run_ctx(fd, pkt).ctx.mark


def measure(lab: Lab, repeat: int, new_flows: int) -> tuple[dict[str, int], dict[str, int]]:
    """Every row's ns per packet, and the mark each row's packet got (checked by the caller)."""
    fd = attached_prog_fd(lab)
    rows: dict[str, int] = {}
    marks: dict[str, int] = {}

    def row(name: str, pkt: bytes, rep: int = repeat) -> None:
        marks[name] = marked(fd, pkt)
        rows[name] = ns_repeated(fd, pkt, rep)

    def miss_and_hit(name: str, src: str, dst: str, port: int) -> None:
        pkts = flows(src, dst, new_flows, port)
        rows[f"{name}, new flow (1 run each)"] = ns_single(fd, pkts)
        rows[f"{name}, table hit (1 run each)"] = ns_single(fd, pkts)
        rows[f"{name}, cached hit (1 run each)"] = ns_single(fd, pkts[:2000], warm=True)

    unsteered = build_packet("192.0.2.1", "192.0.2.77", "udp", 40000, 53)
    row("unsteered IPv4", unsteered)
    row("unsteered IPv6", build_packet("2001:db9::1", "2001:db9::7", "udp", 40000, 53))

    for n, text in ((0, "rules: []\n"), (10000, rules_yaml(10000))):
        apply_rules(lab, text, f"bench-{n}.yaml")
        row(f"{n} rules, steered IPv4, hit", build_packet(*NO_RULE4, "udp", 40000, 53))
        row(f"{n} rules, steered IPv6, hit", build_packet(*NO_RULE6, "udp", 40000, 53))
        miss_and_hit(f"{n} rules, steered IPv4", NO_RULE4[0], "10.250.9.10", 1024 + new_flows * (n > 0))
        if n:
            rs = parse_rules(text, "gen.yaml")
            v6 = next(i for i, r in enumerate(rs.rules) if r.match.dst and r.match.dst[0].version == 6)
            for label, i in (("first", 0), ("middle", n // 2), ("last", n - 1), ("IPv6", v6)):
                row(f"{n} rules, matching the {label} rule", matching_packet(rs, i))
    apply_rules(lab, adversarial_yaml(10000), "adversarial.yaml")
    row("adversarial 10,000 rules, no match", build_packet("10.1.0.5", "40.0.0.9", "udp", 1000, 2000),
        max(1000, repeat // 20))
    return rows, marks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000)
    # 5 x the per-CPU flow cache (FLOW_CACHE_SIZE): a flow's entry there is
    # almost surely taken by a later one before its second run
    ap.add_argument("--new-flows", type=int, default=20000, help="flows of the new-flow rows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("tests/bench/packet: needs root (namespaces, eBPF)", file=sys.stderr)
        return 2
    jit = Path("/proc/sys/net/core/bpf_jit_enable").read_text().strip()
    lab = Lab("sdbpk").up()
    steerd = None
    try:
        cfg = lab.config()
        cfg["network_ranges"] = RANGES
        steerd = SteerdProcess(lab, lab.write_config(cfg), ("--no-probe",))
        rows, marks = measure(lab, args.repeat, args.new_flows)
    finally:
        if steerd:
            steerd.stop()
            steerd.cleanup()
        lab.down()

    problems = [f"{name}: mark {m:#x}" for name, m in marks.items()
                if (m == 0) != name.startswith("unsteered")]
    base = {4: rows["unsteered IPv4"], 6: rows["unsteered IPv6"]}
    print(f"the attached steer program, BPF_PROG_TEST_RUN (JIT={jit}): x{args.repeat} per row "
          f"(median of 5); '1 run each': median of {args.new_flows} single runs (2,000 cached), "
          f"each paying the test run's own set-up")
    print(f"{'':<52} {'ns/packet':>9} {'x unsteered':>11}")
    for name, ns in rows.items():
        b = base[6 if "IPv6" in name else 4]
        print(f"{name:<52} {ns:>9} {ns / b:>11.2f}")
    hit_rows = [n for n in rows if n.endswith(", hit")] + [n for n in rows if "matching" in n]
    worst_hit = max(rows[n] for n in hit_rows)
    hit_ok = worst_hit <= GOAL_HIT_NS
    adv = rows["adversarial 10,000 rules, no match"]
    adv_ok = adv <= GOAL_WORST_NS
    print(f"\nsteered hit path, slowest row at 0 and 10,000 rules: {worst_hit} ns, goal <= "
          f"{GOAL_HIT_NS} ns: {verdict(hit_ok)}")
    print(f"adversarial worst case: {adv} ns, goal <= {GOAL_WORST_NS} ns: {verdict(adv_ok)}")
    for p in problems:
        print(f"!! {p} (a steered row must be marked, an unsteered one not)")
    record(rows_ns=rows, worst_hit_ns=worst_hit, adversarial_ns=adv)
    if args.json:
        print(json.dumps({"jit": jit, "repeat": args.repeat, "rows_ns": rows}))
    return 0 if hit_ok and adv_ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
