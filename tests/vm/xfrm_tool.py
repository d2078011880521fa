"""steerd.xfrm from inside a lab namespace (netlink XFRM sockets are per namespace):

    ip netns exec pop python tests/vm/xfrm_tool.py table
        -> JSON: {"interfaces": {ifname: if_id}, "sas": [...], "counters": {if_id: {...}}}
    ip netns exec pop python tests/vm/xfrm_tool.py watch SECONDS ifname...
        -> "ready", then one JSON line per change: {"t": monotonic, "wall", "tunnel", "has_sa", "reason"}
"""
from __future__ import annotations

import dataclasses
import json
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from steerd import xfrm  # noqa: E402


def main() -> int:
    cmd = sys.argv[1]
    if cmd == "table":
        print(json.dumps({
            "interfaces": xfrm.xfrm_interfaces(),
            "sas": [dataclasses.asdict(s) for s in xfrm.sa_table()],
            "counters": {str(k): dataclasses.asdict(v) for k, v in xfrm.esp_counters().items()},
        }))
        return 0
    if cmd == "watch":
        seconds, names = float(sys.argv[2]), sys.argv[3:]
        w = xfrm.XfrmWatcher.for_interfaces(
            {n: n for n in names},
            lambda t, has, why: print(json.dumps({"t": time.monotonic(), "wall": time.time(), "tunnel": t,
                                                  "has_sa": has, "reason": why}), flush=True)).start()
        print("ready", json.dumps(w.has_sa), flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r, _, _ = select.select([w.fileno()], [], [], 0.2)
            if r:
                w.handle_readable()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
