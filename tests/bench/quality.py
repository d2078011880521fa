"""Packet duplication: what a voice-like flow gets through a lossy tunnel.

Two sequenced UDP flows of 50 packets/s (172-byte payloads: G.711 in RTP),
started together from the core namespace, both pinned to wan1 by a rule:

  * voice: `wan: [wan1, wan2]`, `duplicate: true` (a copy of each packet on wan2)
  * plain: `wan: wan1`, no duplication (the baseline, measured side by side)

wan1 loses LOSS % of both flows' packets at random on its way to the site
(nftables in the site namespace, for these two destinations only: the probes
and so the link state are untouched; netem is not in this kernel). The site
counts unique sequence numbers per flow and packets/bytes per arrival tunnel.

Goals: voice >= 99.5 % of its packets delivered, plain ~ 100 - LOSS %, and the
overhead only on the duplicated class (no packet of plain on wan2).

Run: tests/bench/quality [--seconds 60] [--loss 10] [--pps 50]
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "bench"))
from benchout import record, verdict  # noqa: E402

from steerd.cli import request  # noqa: E402
from steerd.lab.runner import SteerdProcess, wait_for  # noqa: E402
from steerd.lab.seqflow import collect, send_flows, set_loss, start_receiver  # noqa: E402
from steerd.lab.topology import Lab  # noqa: E402

VOICE, PLAIN = "10.20.5.1", "10.20.6.1"
PORT = 5004
RULES = """rules:
  - name: voice
    match: {dst: 10.20.5.0/24, proto: udp}
    wan: [wan1, wan2]
    duplicate: true
  - name: plain
    match: {dst: 10.20.6.0/24, proto: udp}
    wan: wan1
"""
GOAL_DUP = 99.5


def run(seconds: float, loss: float, pps: float) -> int:
    lab = Lab(f"sdbq{uuid.uuid4().hex[:4]}").up()
    proc = None
    try:
        path = os.path.join(lab.run_dir, "rules.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(RULES)
        proc = SteerdProcess(lab, lab.write_config(lab.config(rules_file=path)))
        rules = lambda: {r["name"]: r for r in request(lab.socket, {"cmd": "rules_list"})["rules"]}
        if not wait_for(lambda: rules()["voice"].get("copy") == "pri-wan2", 20):
            print(f"voice never copied onto pri-wan2: {rules()['voice']}")
            return 1
        set_loss(lab, "pri-wan1", [VOICE, PLAIN], loss)
        rx = start_receiver(lab, PORT)
        sent = send_flows(lab, [VOICE, PLAIN], PORT, pps, seconds)
        got = collect(rx)
        with open("/proc/loadavg", encoding="ascii") as f:
            load = " ".join(f.read().split()[:3])
    finally:
        if proc is not None:
            proc.stop()
            proc.cleanup()
        lab.down()

    print(f"{pps:g} pkt/s per flow for {seconds:g} s, {loss:g} % random loss on wan1 "
          f"(load average {load})")
    print(f"{'class':<8} {'sent':>6} {'unique':>7} {'delivered':>10}  "
          f"{'on wan1 (pkts / bytes)':>24}  {'on wan2 (pkts / bytes)':>24}")
    figures = {}
    for f, name in ((0, "voice"), (1, "plain")):
        g = got.get(f, {"unique": 0, "packets": {}, "bytes": {}})
        pct = 100.0 * g["unique"] / sent[f]
        on = {w: (g["packets"].get(i, 0), g["bytes"].get(i, 0))
              for w, i in (("wan1", "gw-p1"), ("wan2", "gw-p2"))}
        print(f"{name:<8} {sent[f]:>6} {g['unique']:>7} {pct:>9.2f} %  "
              f"{on['wan1'][0]:>10} / {on['wan1'][1]:>11}  {on['wan2'][0]:>10} / {on['wan2'][1]:>11}")
        figures[name] = {"sent": sent[f], "unique": g["unique"], "delivered_pct": round(pct, 3),
                         "wan1_packets": on["wan1"][0], "wan1_bytes": on["wan1"][1],
                         "wan2_packets": on["wan2"][0], "wan2_bytes": on["wan2"][1]}
    dup, base = figures["voice"], figures["plain"]
    lost_dup, lost_base = 100 - dup["delivered_pct"], 100 - base["delivered_pct"]
    ok_dup = dup["delivered_pct"] >= GOAL_DUP
    # the baseline shows the loss was there: within 3 points of the configured rate
    ok_base = abs(lost_base - loss) <= 3
    ok_overhead = base["wan2_packets"] == 0 and dup["wan2_packets"] > 0
    print(f"duplicated: {dup['delivered_pct']:.2f} % delivered, goal >= {GOAL_DUP} % "
          f"{verdict(ok_dup)}")
    print(f"baseline (no duplication, same run): {base['delivered_pct']:.2f} %, "
          f"expected ~ {100 - loss:g} % {verdict(ok_base)}")
    ratio = f"{lost_base / lost_dup:.0f} x" if lost_dup > 0 else "all lost packets recovered"
    print(f"packets lost: {lost_base:.2f} % without, {lost_dup:.2f} % with duplication ({ratio})")
    print(f"overhead: voice's copies on wan2: {dup['wan2_packets']} packets, {dup['wan2_bytes']} "
          f"bytes ({dup['wan2_packets'] / dup['sent']:.2f} per packet sent); the non-duplicated "
          f"class on wan2: {base['wan2_packets']} packets, {base['wan2_bytes']} bytes "
          f"{verdict(ok_overhead)}")
    record(seconds=seconds, loss_pct=loss, pps=pps, load=load, voice=dup, plain=base,
           goal_delivered_pct=GOAL_DUP)
    return 0 if ok_dup and ok_base and ok_overhead else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--loss", type=float, default=10.0, help="random loss on wan1, percent")
    ap.add_argument("--pps", type=float, default=50.0, help="packets per second per flow")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("tests/bench/quality needs root (network namespaces)")
        return 1
    return run(a.seconds, a.loss, a.pps)


if __name__ == "__main__":
    sys.exit(main())
