"""python -m steerd.lab {up,down,demo,impair} — the namespace lab from a shell."""
from __future__ import annotations

import argparse
import sys

from .topology import Lab


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m steerd.lab")
    ap.add_argument("--prefix", default="sdlab", help="namespace name prefix")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the lab and write a steerd config for it")
    up.add_argument("--sites", type=int, default=0,
                    help="hub mode: N sites (one site namespace hosts every site's range)")
    up.add_argument("--tunnels", type=int, default=3, help="hub mode: tunnels per site (1..6)")
    sub.add_parser("down", help="remove the lab")
    d = sub.add_parser("demo", help="lab + steerd + traffic + split table, then tear down")
    d.add_argument("--flows", type=int, default=3000)
    imp = sub.add_parser("impair", help="impair a tunnel: loss, delay, jitter, blackhole")
    imp.add_argument("tunnel", help="tunnel name (pri-wan1) or interface (tun-p1)")
    imp.add_argument("--loss", default=None, help="e.g. 10%%")
    imp.add_argument("--delay", default=None, help="probe delay, e.g. 30ms")
    imp.add_argument("--jitter", default=None, help="probe jitter, e.g. 5ms")
    imp.add_argument("--blackhole", action="store_true", help="drop everything, no carrier change")
    imp.add_argument("--clear", action="store_true", help="remove all impairment")
    a = ap.parse_args()
    if a.cmd == "demo":
        from .demo import run
        return run(a.flows)
    lab = Lab(a.prefix)
    if a.cmd == "up" and a.sites:
        from .topology import HubLab
        lab = HubLab(a.prefix, a.sites, a.tunnels)
    if a.cmd == "up":
        lab.up()
        print(f"lab up; steerd config: {lab.write_config(lab.config())}")
        print(f"run: ip netns exec {lab.gw} steerd --config {lab.run_dir}/steerd.yaml")
    elif a.cmd == "down":
        lab.down()
    elif a.cmd == "impair":
        from .impair import impair_from_args
        print(impair_from_args(lab, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
