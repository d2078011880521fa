"""`make demo`: build the lab, run steerd in the gateway, send flows, show the
status table and the split measured at the site, then tear everything down
(also on Ctrl-C)."""
from __future__ import annotations

import signal
import sys
import time

from ..cli import render_status, table
from .runner import Receiver, SteerdProcess, send, split
from .topology import STEERED4, STEERED6, TUNNELS, Lab


def _interrupt(*_):
    raise KeyboardInterrupt


def run(flows: int = 3000) -> int:
    lab = Lab("sdlab-demo")
    signal.signal(signal.SIGTERM, _interrupt)
    steerd = None
    try:
        print("building the lab: core -> gw -> 3 primary + 3 secondary tunnels -> site")
        lab.up()
        steerd = SteerdProcess(lab, lab.write_config(lab.config()))
        print(f"steerd running in namespace {lab.gw}; sending {flows} UDP flows to {STEERED4} "
              f"and {flows // 3} to {STEERED6}")
        time.sleep(1.5)  # a few probes so RTTs show
        rx = Receiver(lab)
        send(lab, flows, dst=STEERED4, duration=2.0)
        send(lab, flows // 3, dst=STEERED6, duration=1.0, first_flow=flows)
        time.sleep(1.5)
        counts = split(rx.stop())
        print()
        print(render_status(steerd.status()))
        st = {t["interface"]: t for t in steerd.status()["tunnels"]}
        total = sum(counts.values()) or 1
        rows = []
        for t in TUNNELS:
            got = counts.get(t.site_if, 0)
            rows.append([t.name, t.site_if, str(got), f"{100 * got / total:.1f}%",
                         f"{100 * st[t.gw_if]['share']:.1f}%"])
        print()
        print(f"measured at the site ({total} flows, each counted on the tunnel it arrived on):")
        print(table(["TUNNEL", "SITE IFACE", "FLOWS", "MEASURED", "TARGET"], rows, right={2, 3, 4}))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if steerd:
            steerd.stop()
            steerd.cleanup()
        lab.down()
        print("lab torn down")
